"""The ISC-2021 copy-detection descriptor, as the reference uses it to drop near-duplicates of test images.

The descriptor is the winning model of the Facebook AI Image Similarity Challenge 2021, descriptor track
(Yokoo, "Contrastive Learning with Large Memory Bank and Negative Embedding Subtraction for Accurate Copy
Detection", 2021), released as the pip package ``isc-feature-extractor`` with the weights ``isc_ft_v107``.
The reference (``clip_filter_and_dedup.py``) builds it with ``create_model(weight_name='isc_ft_v107')``
and drops a candidate whose largest dot product with a test descriptor exceeds 0.604169.

This module rebuilds that network here, so that no package or download is needed at run time:

* backbone: timm's ``tf_efficientnetv2_m`` (the ``in21k_ft_in1k`` configuration, which the release
  names ``tf_efficientnetv2_m_in21ft1k``), ``features_only``; its last feature map has 512 channels;
* GeM pooling of that map with p = 1 in training and evaluation alike (the package's defaults, which
  the reference keeps; v107 was also trained and evaluated with p = 1). Activations are clamped at
  1e-6 first, so negative ones count as zero: this is not plain average pooling;
* a 512 -> 256 linear layer without bias, ``BatchNorm1d(256)`` (running statistics), L2 normalisation.

Preprocessing is the package's: the image as RGB, resized (bilinear, aspect ratio ignored) to the
checkpoint's input size (512 for v107), scaled to [0, 1] and normalised with mean = std = 0.5 (the
backbone configuration's values).

The weights are a local copy of ``isc_ft_v107.pth.tar`` (``WEIGHTS_URL``), named by the config key
``curate.dedup.weights``. The released file is ``torch.save`` of a training checkpoint: a dict with
``arch``, ``epoch``, ``state_dict`` (keys prefixed ``module.`` by DistributedDataParallel), ``optimizer``
and ``args`` (an ``argparse.Namespace`` holding ``input_size``). It is read with ``weights_only=True``,
allowing that one extra class; a bare state dict is accepted too.
"""

from __future__ import annotations

import argparse
import io
import os
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

WEIGHTS_NAME = "isc_ft_v107"
WEIGHTS_FILE = f"{WEIGHTS_NAME}.pth.tar"
WEIGHTS_URL = f"https://github.com/lyakaap/ISC21-Descriptor-Track-1st/releases/download/v1.0.1/{WEIGHTS_FILE}"
CONFIG_KEY = "curate.dedup.weights"

BACKBONE = "tf_efficientnetv2_m.in21k_ft_in1k"
# what a checkpoint's ``arch`` may say for this backbone (timm's old name, its current one, a hub id)
BACKBONE_NAMES = ("tf_efficientnetv2_m_in21ft1k", BACKBONE, f"timm/{BACKBONE}", f"hf-hub:timm/{BACKBONE}")
FEATURE_DIM = 512  # channels of the backbone's last feature map
DIM = 256
GEM_P = 1.0  # GeM power in training and in evaluation (create_model's p and eval_p)
GEM_EPS = 1e-6
INPUT_SIZE = 512  # when the checkpoint does not record its own
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
THRESHOLD = 0.604169  # the reference's dedup threshold on the dot product of two descriptors
BATCH_SIZE = 64  # images per forward pass; a 512 px batch of 64 holds a few GB of activations

DOWNLOAD_HINT = (f"download {WEIGHTS_FILE} from {WEIGHTS_URL} (e.g. `wget -O <path> {WEIGHTS_URL}`) "
                 f"and set {CONFIG_KEY} to its path")


class WeightsError(RuntimeError):
    """The copy-detection weights file is missing, unreadable, or not the ISC network's.

    ``what``: the problem alone; the message adds the config key and where to download the file."""

    def __init__(self, what: str):
        self.what = what
        super().__init__(f"config key '{CONFIG_KEY}': {what}; {DOWNLOAD_HINT}")


def gem(x: torch.Tensor, p: float = GEM_P, eps: float = GEM_EPS) -> torch.Tensor:
    """Generalised-mean pooling of (N, C, H, W) feature maps to (N, C): the mean of clamp(x, eps)^p, ^(1/p)."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class CopyDetector(nn.Module):
    """EfficientNetV2-M features, GeM pooling, a linear projection, batch norm and L2 normalisation.

    Submodule names (``backbone``, ``fc``, ``bn``) are those of the released checkpoint's state dict.
    """

    def __init__(self, backbone: nn.Module, dim: int = DIM, p: float = GEM_P, eval_p: float = GEM_P):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.feature_info.channels()[-1], dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)
        self.p, self.eval_p = p, eval_p
        nn.init.xavier_normal_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[-1]
        pooled = gem(features, self.p if self.training else self.eval_p)
        return F.normalize(self.bn(self.fc(pooled)), dim=-1)


def build_model() -> CopyDetector:
    """The network with random weights (the backbone's pretrained weights are not fetched)."""
    import timm  # slow to import; only needed here

    backbone = timm.create_model(BACKBONE, features_only=True, pretrained=False)
    return CopyDetector(backbone)


# ---------------------------------------------------------------- weights


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict (without ``module.`` prefixes) and input size of a weights file.

    Accepts the released format (a training checkpoint; see the module docstring) or a bare state dict.
    Raises ``WeightsError`` naming the file and the config key when it is missing or unreadable.
    """
    if not os.path.isfile(path):
        raise WeightsError(f"copy-detection weights file {path!r} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects beyond tensors and Namespace
        raise WeightsError(f"{path!r} is not a readable torch checkpoint ({_load_failure(e)})") from None
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path!r} holds a {type(checkpoint).__name__}, not a state dict or checkpoint dict")
    arch = checkpoint.get("arch")
    if arch is not None and arch not in BACKBONE_NAMES:
        raise WeightsError(f"{path!r} is a checkpoint of {arch!r}, not of the ISC descriptor's {BACKBONE_NAMES[0]!r}")
    state = checkpoint.get("state_dict", checkpoint)
    args = checkpoint.get("args")
    input_size = int(getattr(args, "input_size", None) or INPUT_SIZE)
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    return state, input_size


def _load_failure(error: Exception) -> str:
    """The gist of a ``torch.load`` failure, without its advice to load untrusted files unsafely."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it pickles {found.group(1)}, which weights-only loading refuses"
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {detail.group(1) if detail else (lines[0] if lines else '')}"


def _listed(keys: list[str], shown: int = 4) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def check_state(model: nn.Module, state: dict, path: str) -> None:
    """Raise ``WeightsError`` unless ``state`` has exactly the model's keys, with the model's shapes."""
    own = model.state_dict()
    # BatchNorm fills in a missing batch counter itself (it is unused in eval mode)
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state)
                      if not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape)
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s): {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {_listed(unexpected)}")
    if reshaped:
        shapes = [f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(own[k].shape)}" for k in reshaped]
        parts.append(f"{len(reshaped)} of another shape: {_listed(shapes)}")
    raise WeightsError(f"{path!r} does not hold the ISC descriptor's weights "
                       f"({BACKBONE} + GeM + fc {FEATURE_DIM}->{DIM} + BatchNorm1d): {'; '.join(parts)}")


@dataclass
class LoadedDetector:
    model: CopyDetector
    input_size: int
    path: str
    device: str


_LOADED: dict[tuple, LoadedDetector] = {}


def load_detector(path: str, device: str | torch.device = "cpu") -> LoadedDetector:
    """The network with the weights of ``path`` on ``device``, in eval mode; cached per file and device
    within the process (a file replaced on disk is read again)."""
    path = os.path.expanduser(str(path))
    stat = os.stat(path) if os.path.isfile(path) else None
    key = (os.path.realpath(path), str(device), stat and (stat.st_mtime_ns, stat.st_size))
    if key not in _LOADED:
        state, input_size = read_checkpoint(path)
        model = build_model()
        check_state(model, state, path)
        model.load_state_dict(state)
        _LOADED[key] = LoadedDetector(model.to(device).eval(), input_size, path, str(device))
    return _LOADED[key]


# ---------------------------------------------------------------- descriptors


def as_rgb(item: Image.Image | bytes | str | os.PathLike | np.ndarray) -> Image.Image:
    """An image given as a PIL image, encoded bytes, a file path or a uint8 array, as RGB."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, bytes):
        return Image.open(io.BytesIO(item)).convert("RGB")
    if isinstance(item, np.ndarray):
        return Image.fromarray(item).convert("RGB")
    with Image.open(item) as image:
        return image.convert("RGB")


def resized_pixels(image: Image.Image, size: int = INPUT_SIZE) -> torch.Tensor:
    """(3, size, size) uint8: the image bilinearly resized to a square (as torchvision's Resize does a PIL image)."""
    resized = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) to float32 in [0, 1], then (x - mean) / std, on the tensor's device."""
    x = pixels.float() / 255.0
    mean = torch.tensor(MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def preprocess(image: Image.Image, size: int = INPUT_SIZE) -> torch.Tensor:
    """(3, size, size) float32: the package's Resize((size, size)), ToTensor and Normalize."""
    return normalize(resized_pixels(image, size))


class _Pixels(torch.utils.data.Dataset):
    """Images of any kind ``as_rgb`` reads, as (3, size, size) uint8 tensors: what ``describe`` batches."""

    def __init__(self, items: Sequence, size: int):
        self.items, self.size = items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return resized_pixels(as_rgb(self.items[i]), self.size)


@torch.no_grad()
def describe(items: Sequence, weights: str, device: str | torch.device = "cpu",
             batch_size: int = BATCH_SIZE, num_workers: int = 0) -> np.ndarray:
    """ISC descriptors of ``items`` (PIL images, encoded bytes or paths): float32 (n, 256), unit norm, in order.

    Computed in fp32 (the threshold was set on fp32 descriptors), ``batch_size`` images at a time;
    the descriptors do not depend on the batch size. Images are decoded and resized by ``num_workers``
    data-loader processes (0: here; ``embed.image_loader``) and sent to the device as uint8, where they are
    normalised (a quarter of the bytes, and less CPU work).
    """
    from .embed import image_loader

    if len(items) == 0:
        return np.zeros((0, DIM), dtype=np.float32)
    detector = load_detector(weights, device)
    out = []
    for pixels in image_loader(_Pixels(items, detector.input_size), batch_size, num_workers, str(device)):
        out.append(detector.model(normalize(pixels.to(device))).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)
