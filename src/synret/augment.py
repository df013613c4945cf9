"""Images' preprocessing: open_clip's train transform made faster and kept equal to it within a stated
tolerance; its eval transform made faster and kept equal to it bit for bit.

open_clip trains on PIL images with RandomResizedCrop (bicubic, antialiased), RGB conversion, ToTensor and
Normalize, all in the loader, one image at a time. On one core, for a 256-px JPEG cropped to 224 px, the
bicubic resize takes about half of the time, the float conversion and normalisation about a quarter and
the decode the rest (benchmarks/image_loading.py). ``FastTrainTransform`` does the same steps with:

- the same crop: torchvision's ``RandomResizedCrop.get_params`` on the same image, so the same draws of
  torch's random generator give the same crop boxes (in-process and in every loader worker);
- the resize on uint8 pixels by torch's bicubic antialiased kernel, channels-last: a port of Pillow's
  resampling (the same filter, a = -0.5, support scaled when shrinking) with its own fixed-point
  weights, its two passes in the order that gives Pillow's values (``_resize_like_pillow``): on noisy
  photo-like 256-px images 99.6% of the values are Pillow's, the rest 1 level of 255 off, a few in a
  million 2 (tests/test_image_loading.py bounds it at ``RESIZE_TOLERANCE``; benchmarks/image_loading.py
  measures it);
- the float conversion, the move of the channels first and the normalisation once per batch
  (``normalize``), where the batch is computed on: loader workers hand over uint8 pixels as the decoder
  lays them out, (h, w, 3), a quarter of the bytes, batched by a plain copy. The normalised values are
  bit for bit those of ToTensor + Normalize of the same pixels.

Anything else open_clip may build for training (timm's transforms, colour jitter, grayscale, another
interpolation) is not recognised, and training keeps open_clip's own transform.

Evaluation (the model's ``preprocess_val``: Resize of the shorter side, CenterCrop, RGB conversion,
ToTensor, Normalize) gets only the last part: ``FastEvalTransform`` runs the transform's own Resize,
CenterCrop and RGB conversion on each PIL image (the same objects, so the same Pillow calls and pixels),
hands over their uint8 (h, w, 3) pixels, and the batch is normalised once by the same bit-exact step. For
small images that conversion was most of the transform's time: on one core a 32-px image took 0.25 ms
through ``preprocess_val``, takes 0.07 ms through the PIL steps and 0.03 ms of its batch's normalisation.
The model sees the very floats of ``preprocess_val``, so the evaluation's logits, features and rankings
are its bits (zero-shot numbers are cross-checked bit for bit against other evaluators;
tests/test_image_loading.py compares them). An eval transform of another form (a non-square size, the
``longest`` or ``squash`` resize modes, anything not open_clip's) is used unchanged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESIZE_TOLERANCE = 2  # uint8 levels: the largest difference from Pillow's bicubic resize the tests accept


@dataclass(frozen=True)
class FastTrainTransform:
    """RandomResizedCrop to ``size`` (h, w) on a PIL image, giving uint8 (h, w, 3); ``normalize`` turns a
    batch of them into the model's input, float32 (n, 3, h, w)."""

    size: tuple[int, int]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms import RandomResizedCrop

        top, left, h, w = RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        with warnings.catch_warnings():  # a read-only view of PIL's pixels: only read, never written
            warnings.simplefilter("ignore", UserWarning)
            crop = torch.from_numpy(pixels[top : top + h, left : left + w])
        # (1, 3, h, w) in channels-last memory: the layout torch's vectorised uint8 resize works on
        crop = crop.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)
        return _resize_like_pillow(crop, self.size)[0].permute(1, 2, 0)  # (h, w, 3): its memory as it is

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (n, h, w, 3) -> float32 (n, 3, h, w): see ``normalize``."""
        return normalize(batch, self.mean, self.std)


@dataclass(frozen=True)
class FastEvalTransform:
    """open_clip's eval transform up to its pixels: its own PIL steps (``geometry``: Resize, CenterCrop, RGB
    conversion) on a PIL image, giving uint8 (h, w, 3); ``normalize`` turns a batch of them into what
    ToTensor + Normalize would have given, float32 (n, 3, h, w)."""

    geometry: tuple[Callable, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        for step in self.geometry:
            image = step(image)
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            raise TypeError(f"FastEvalTransform takes PIL images, not {type(image).__name__}")
        return torch.from_numpy(np.array(image))  # ToTensor's pixels: PIL's (h, w, 3) bytes, a writable copy

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (n, h, w, 3) -> float32 (n, 3, h, w): see ``normalize``."""
        return normalize(batch, self.mean, self.std)


def normalize(batch: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float32 (n, 3, h, w) ``(x / 255 - mean) / std``, the bits ToTensor + Normalize
    give, on the batch's device: on CPU the same float operations one image at a time (in cache), elsewhere
    a lookup of the 3 x 256 values those operations give."""
    if batch.device.type == "cpu":
        return _normalize_by_operations(batch, mean, std)
    return _normalize_by_table(batch, mean, std)


def _resize_like_pillow(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic antialiased resize of uint8 (n, 3, h, w), its two one-axis passes in the order that gives
    Pillow's values. torch resizes horizontally first; Pillow's results (13.0) are those of resizing
    vertically first when ``h > out_h`` and ``h - out_h > 2 (w - out_w)``: found by comparing both
    orders with Pillow on 600 random (h, w) -> (out_h, out_w) geometries, 0.5x to 2.5x, which it told apart
    without an exception. In the other order about 20% of the values are 1 or more levels off Pillow's,
    in this one about 0.4%."""
    (h, w), (out_h, out_w) = pixels.shape[-2:], size
    if h > out_h and h - out_h > 2 * (w - out_w) and w != out_w:
        pixels = F.interpolate(pixels, size=(out_h, w), mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(pixels, size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False)


def _normalize_by_operations(batch: torch.Tensor, mean, std) -> torch.Tensor:
    n, h, w, c = batch.shape
    out = torch.empty((n, c, h, w), dtype=torch.float32)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    for image, pixels in zip(out, batch):  # ToTensor's division, then Normalize's sub_ and div_
        image.copy_(pixels.permute(2, 0, 1)).div_(255).sub_(m).div_(s)
    return out


def normalization_table(mean, std) -> torch.Tensor:
    """(3, 256) float32: ToTensor + Normalize of every uint8 value of every channel, computed by those transforms."""
    from torchvision.transforms import functional as TF

    values = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (1, 256, 3)).copy()
    return TF.normalize(TF.to_tensor(values), list(mean), list(std))[:, 0, :]


def _normalize_by_table(batch: torch.Tensor, mean, std, chunk: int = 64) -> torch.Tensor:
    # a table lookup is exact on any device (CUDA may divide by a scalar as a product with its reciprocal);
    # in chunks of images, so the int64 indices take at most twice the float output of one chunk
    table = normalization_table(mean, std).to(batch.device).view(-1)
    offsets = 256 * torch.arange(3, device=batch.device).view(1, 3, 1, 1)
    n, h, w, c = batch.shape
    out = torch.empty((n, c, h, w), dtype=torch.float32, device=batch.device)
    for start in range(0, n, chunk):
        out[start : start + chunk] = table[batch[start : start + chunk].permute(0, 3, 1, 2).long() + offsets]
    return out


def fast_train_transform(transform: Callable) -> FastTrainTransform | None:
    """The fast equivalent of open_clip's train transform (``image_transform(..., is_train=True)``: the
    parameters it was built with from the model's config), or None when ``transform`` is anything else."""
    from torchvision.transforms import Compose, InterpolationMode, Normalize, RandomResizedCrop

    steps = transform.transforms if isinstance(transform, Compose) else []
    names = [type(t).__name__ for t in steps]
    if names != ["RandomResizedCrop", "MaybeConvertMode", "MaybeToTensor", "Normalize"]:
        return None
    crop, convert, _, norm = steps
    if not (isinstance(crop, RandomResizedCrop) and isinstance(norm, Normalize)):
        return None
    if crop.interpolation != InterpolationMode.BICUBIC or not crop.antialias or convert.mode != "RGB":
        return None
    if len(norm.mean) != 3 or len(norm.std) != 3 or norm.inplace:
        return None
    return FastTrainTransform(tuple(int(v) for v in crop.size), tuple(crop.scale), tuple(crop.ratio),
                              tuple(float(v) for v in norm.mean), tuple(float(v) for v in norm.std))


def training_transform(transform: Callable) -> tuple[Callable, Callable[[torch.Tensor], torch.Tensor] | None]:
    """What training loads its images with: (per-image transform, step that finishes each batch on its
    device, or None). open_clip's train transform becomes ``FastTrainTransform`` and its ``normalize``;
    any other transform (the eval transform of ``augment: none``) is kept as it is."""
    fast = fast_train_transform(transform)
    return (transform, None) if fast is None else (fast, fast.normalize)


def fast_eval_transform(transform: Callable) -> FastEvalTransform | None:
    """The fast equivalent of open_clip's eval transform of a square size (``image_transform(...,
    is_train=False)``, resize mode ``shortest``: Resize, CenterCrop, MaybeConvertMode to RGB, MaybeToTensor,
    Normalize), or None when ``transform`` is anything else. Its Resize and CenterCrop are kept as they are,
    whatever their interpolation and size: the same objects run."""
    from torchvision.transforms import CenterCrop, Compose, Normalize, Resize

    steps = transform.transforms if isinstance(transform, Compose) else []
    names = [type(t).__name__ for t in steps]
    if names != ["Resize", "CenterCrop", "MaybeConvertMode", "MaybeToTensor", "Normalize"]:
        return None
    resize, crop, convert, _, norm = steps
    if not (isinstance(resize, Resize) and isinstance(crop, CenterCrop) and isinstance(norm, Normalize)):
        return None
    if convert.mode != "RGB" or len(norm.mean) != 3 or len(norm.std) != 3 or norm.inplace:
        return None
    return FastEvalTransform((resize, crop, convert), tuple(float(v) for v in norm.mean),
                             tuple(float(v) for v in norm.std))


def evaluation_transform(transform: Callable) -> tuple[Callable, Callable[[torch.Tensor], torch.Tensor] | None]:
    """What evaluation loads its images with: (per-image transform, step that finishes each batch on its
    device, or None). open_clip's eval transform becomes ``FastEvalTransform`` and its ``normalize`` (the
    same bits); any other transform is kept as it is."""
    fast = fast_eval_transform(transform)
    return (transform, None) if fast is None else (fast, fast.normalize)
