"""Image loading (synret.augment) against open_clip's PIL transforms. Training: the same crops, the same
normalisation bits, pixels within the resize tolerance, on real encoded JPEG and PNG bytes. Evaluation: the
bits of the model's ``preprocess_val``, its logits and features included, on images of several sizes and modes."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from synret.augment import (
    RESIZE_TOLERANCE,
    FastTrainTransform,
    _normalize_by_table,
    fast_train_transform,
    normalization_table,
    training_transform,
)
from synret.clip import load_clip
from synret.embed import ImageDataset, image_loader
from synret.shards import decode_image, encode_image


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Gradients, hard-edged blocks and grain: content on which bicubic rounding differences show."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    pixels = np.stack([a * x + b * y + c for a, b, c in rng.uniform(-1, 1, (3, 3))], axis=-1) * 120 + 128
    for _ in range(6):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        pixels[y0 : y0 + height // 3, x0 : x0 + width // 4] = rng.integers(0, 256, 3)
    pixels += rng.normal(0, 6, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def vit_b16_train():
    """ViT-B-16's train transform as open_clip builds it from the model's own config (random weights)."""
    _, train, val = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    return train, val


def encoded(fmt: str, shapes, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode_image(photo_like(rng, h, w), fmt) for h, w in shapes]


def to_levels(x: torch.Tensor, fast: FastTrainTransform) -> torch.Tensor:
    """Normalised floats back to uint8 levels (exact: they came from uint8)."""
    mean, std = torch.tensor(fast.mean).view(3, 1, 1), torch.tensor(fast.std).view(3, 1, 1)
    return torch.round((x * std + mean) * 255)


def test_the_fast_form_comes_from_the_models_config(tiny_clip_dir, vit_b16_train):
    train, val = vit_b16_train
    fast = fast_train_transform(train)
    norm = train.transforms[-1]
    assert fast.size == (224, 224) and fast.scale == (0.9, 1.0)
    assert fast.mean == tuple(norm.mean) and fast.std == tuple(norm.std)
    # a local-dir model: its size and its config's mean and std
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    tiny = fast_train_transform(clip.preprocess_train)
    assert tiny.size == (clip.image_size, clip.image_size) == (32, 32)
    assert tiny.mean == tuple(clip.preprocess_train.transforms[-1].mean)
    custom = fast_train_transform(open_clip.image_transform(96, True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4),
                                                            aug_cfg={"scale": (0.5, 1.0)}))
    assert custom.size == (96, 96) and custom.scale == (0.5, 1.0) and custom.mean == (0.5, 0.4, 0.3)
    # anything else keeps open_clip's own transform: the eval transform, colour jitter, grayscale
    assert fast_train_transform(val) is None and training_transform(val) == (val, None)
    jitter = open_clip.image_transform(224, True, aug_cfg={"color_jitter_prob": 0.5, "color_jitter": (0.4,) * 4})
    gray = open_clip.image_transform(224, True, aug_cfg={"gray_scale_prob": 0.2})
    assert fast_train_transform(jitter) is None and fast_train_transform(gray) is None


def test_normalisation_has_the_bits_of_totensor_and_normalize(vit_b16_train):
    train, _ = vit_b16_train
    fast = fast_train_transform(train)
    reference = lambda hwc: train.transforms[-1](TF.to_tensor(hwc))  # noqa: E731
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (5, 17, 23, 3), dtype=np.uint8)
    hwc[0, 0, :3] = [[0, 0, 0], [255, 255, 255], [128, 1, 254]]
    batch = torch.from_numpy(hwc)
    expected = torch.stack([reference(im) for im in hwc])
    assert fast.normalize(batch).dtype == torch.float32
    assert torch.equal(fast.normalize(batch), expected)
    # the table other devices look values up in (CUDA's scalar division is not ToTensor's)
    assert torch.equal(_normalize_by_table(batch, fast.mean, fast.std), expected)
    assert torch.equal(_normalize_by_table(batch, fast.mean, fast.std, chunk=2), expected)
    assert normalization_table(fast.mean, fast.std).shape == (3, 256)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_same_crops_and_pixels_within_the_resize_tolerance(vit_b16_train, fmt):
    """256-px images as the shards hold them, a non-square one and one smaller than the crop (upsampled)."""
    train, _ = vit_b16_train
    fast = fast_train_transform(train)
    crop = train.transforms[0]
    diffs = []
    for i, data in enumerate(encoded(fmt, [(256, 256)] * 6 + [(300, 200), (150, 180)])):
        torch.manual_seed(i)
        reference = train(decode_image(data))
        after_reference = torch.get_rng_state()
        torch.manual_seed(i)
        pixels = fast(decode_image(data))
        assert torch.equal(torch.get_rng_state(), after_reference)  # the same draws, no more
        assert pixels.shape == (224, 224, 3) and pixels.dtype == torch.uint8 and reference.shape == (3, 224, 224)
        # the same box: Pillow's resize of it, normalised, has the reference's bits exactly
        torch.manual_seed(i)
        box = RandomResizedCrop.get_params(decode_image(data), list(crop.scale), list(crop.ratio))
        pil_pixels = torch.from_numpy(np.array(TF.resized_crop(decode_image(data), *box, [224, 224], crop.interpolation)))
        assert torch.equal(fast.normalize(pil_pixels[None])[0], reference)
        # torch's resize of the box: within the tolerance of Pillow's
        diffs.append((to_levels(reference, fast) - pixels.permute(2, 0, 1).float()).abs())
        assert (fast.normalize(pixels[None])[0] - reference).abs().max() <= RESIZE_TOLERANCE / 255 / min(fast.std) + 1e-6
    diffs = torch.stack(diffs)
    assert diffs.max() <= RESIZE_TOLERANCE
    assert diffs.mean() < 0.02 and (diffs == 0).float().mean() > 0.98


@pytest.mark.parametrize("source, size", [((256, 233), (224, 224)), ((233, 256), (224, 224)), ((250, 200), (224, 224)),
                                          ((120, 100), (224, 224)), ((47, 40), (32, 32)), ((300, 128), (96, 160))])
def test_resize_passes_in_the_order_that_gives_pillows_values(source, size):
    """Shrinking both ways, one way and enlarging the other, enlarging both, non-square outputs."""
    from PIL import Image

    from synret.augment import _resize_like_pillow

    pixels = photo_like(np.random.default_rng(5), *source)
    pil = torch.from_numpy(np.array(Image.fromarray(pixels).resize(size[::-1], Image.BICUBIC))).permute(2, 0, 1)
    ours = _resize_like_pillow(torch.from_numpy(pixels).permute(2, 0, 1)[None], size)[0]
    diff = (pil.float() - ours.float()).abs()
    assert diff.max() <= RESIZE_TOLERANCE and (diff == 0).float().mean() > 0.98


def test_grayscale_and_rgba_sources_become_rgb(vit_b16_train):
    train, _ = vit_b16_train
    fast = fast_train_transform(train)
    from PIL import Image

    rgb = photo_like(np.random.default_rng(3), 240, 240)
    for image in (Image.fromarray(rgb).convert("L"), Image.fromarray(rgb).convert("RGBA")):
        torch.manual_seed(0)
        reference = train(image)
        torch.manual_seed(0)
        pixels = fast(image)
        assert pixels.shape == (224, 224, 3)
        assert (to_levels(reference, fast) - pixels.permute(2, 0, 1).float()).abs().max() <= RESIZE_TOLERANCE


def test_deterministic_under_a_seed(vit_b16_train):
    fast = fast_train_transform(vit_b16_train[0])
    data = encoded("jpg", [(256, 256)] * 3)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(torch.stack([fast(decode_image(d)) for d in data]))
    assert torch.equal(runs[0], runs[1])
    torch.manual_seed(8)
    assert not torch.equal(runs[0], torch.stack([fast(decode_image(d)) for d in data]))


def batches(data, transform, finish, workers):
    loader = image_loader(ImageDataset(data, transform, list(range(len(data)))), 4, workers, shuffle=True,
                          generator=torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    return [(finish(x) if finish else x, y) for x, y in loader]


def test_loader_workers_give_the_references_crops(vit_b16_train):
    """In forked workers the fast path draws what the reference draws (each worker's seeded generator):
    uint8 batches that normalise to the reference's within the tolerance, the same every time."""
    train, _ = vit_b16_train
    transform, finish = training_transform(train)
    data = encoded("jpg", [(256, 256)] * 6) + encoded("png", [(256, 256)] * 5, seed=1)
    for workers in (0, 2):
        reference = batches(data, train, None, workers)
        fast = batches(data, transform, None, workers)
        assert [y.tolist() for _, y in fast] == [y.tolist() for _, y in reference]
        for (x, _), (ref, _) in zip(fast, reference):
            assert x.dtype == torch.uint8 and x.permute(0, 3, 1, 2).shape == ref.shape
            assert (to_levels(ref, transform) - x.permute(0, 3, 1, 2).float()).abs().max() <= RESIZE_TOLERANCE
            assert (finish(x) - ref).abs().max() <= RESIZE_TOLERANCE / 255 / min(transform.std) + 1e-6
        again = batches(data, transform, None, workers)
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(fast, again))


def test_training_finishes_uint8_batches_on_its_device(tiny_clip_dir, shape_images, monkeypatch):
    from synret.finetune import FinetuneConfig, build_classifier, train_classifier

    images, labels = shape_images
    data = [encode_image(im, "jpg" if i % 2 else "png") for i, im in enumerate(images[:24])]
    seen = []
    normalize = FastTrainTransform.normalize

    def spy(self, batch):
        seen.append(batch.dtype)
        return normalize(self, batch)

    monkeypatch.setattr(FastTrainTransform, "normalize", spy)
    cfg = FinetuneConfig(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=1,
                         grad_clip=1.0, label_smoothing=0.0, num_workers=2, augment="open_clip", seed=1)
    losses = []
    for _ in range(2):
        clip = load_clip(f"local-dir:{tiny_clip_dir}")
        model = build_classifier(clip, [str(c) for c in range(10)], ["a {c}."], "cpu")
        losses.append(train_classifier(model, data, labels[:24].tolist(), clip.preprocess_train, cfg, "cpu", "fp32",
                                       log=lambda m: None)["final_loss"])
    assert seen == [torch.uint8] * 6 and losses[0] == losses[1]



# Evaluation: open_clip's eval transform, its normalisation moved to the batch, the same bits.


def test_the_eval_fast_form_is_open_clips_eval_transform(tiny_clip_dir, vit_b16_train):
    from synret.augment import FastEvalTransform, evaluation_transform, fast_eval_transform

    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    val = clip.preprocess_val
    fast = fast_eval_transform(val)
    assert isinstance(fast, FastEvalTransform) and fast.geometry == tuple(val.transforms[:3])
    assert fast.mean == tuple(val.transforms[-1].mean) and fast.std == tuple(val.transforms[-1].std)
    transform, finish = evaluation_transform(val)
    assert transform == fast and finish == transform.normalize
    b16 = fast_eval_transform(vit_b16_train[1])
    assert b16.geometry[1].size == (224, 224)
    # its own Resize runs, whatever the interpolation
    assert fast_eval_transform(open_clip.image_transform(40, False, interpolation="bilinear")) is not None
    # any other form is used as it is: a non-square size, other resize modes, the train transform, a function
    for other in (open_clip.image_transform((32, 48), False), open_clip.image_transform(32, False, resize_mode="longest"),
                  open_clip.image_transform(32, False, resize_mode="squash"), vit_b16_train[0], lambda image: val(image)):
        assert fast_eval_transform(other) is None and evaluation_transform(other) == (other, None)


def eval_images(shape_images) -> list:
    """Rendered shapes as PIL images of 24, 32 and 50 px, non-square, in the modes images come in."""
    from PIL import Image

    images, _ = shape_images
    out = []
    for i, (size, mode) in enumerate([((24, 24), "RGB"), ((32, 32), "RGB"), ((50, 50), "RGB"), ((57, 45), "RGB"),
                                      ((20, 70), "RGB"), ((32, 32), "L"), ((50, 50), "RGBA"), ((45, 57), "P"),
                                      ((24, 24), "LA"), ((33, 31), "CMYK"), ((32, 32), "1"), ((64, 40), "RGB")]):
        image = Image.fromarray(images[i * 7]).resize(size, Image.BICUBIC)
        out.append(image.quantize(64) if mode == "P" else image.convert(mode))
    return out


def test_eval_pixels_normalise_to_preprocess_vals_bits(tiny_clip_dir, vit_b16_train, shape_images):
    from synret.augment import fast_eval_transform

    for val in (load_clip(f"local-dir:{tiny_clip_dir}").preprocess_val, vit_b16_train[1],
                open_clip.image_transform(40, False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))):
        fast = fast_eval_transform(val)
        for image in eval_images(shape_images):
            pixels = fast(image)
            assert pixels.dtype == torch.uint8 and pixels.shape[2] == 3
            assert torch.equal(fast.normalize(pixels[None])[0], val(image)), image.mode
            assert torch.equal(_normalize_by_table(pixels[None], fast.mean, fast.std)[0], val(image))


def test_evaluation_gives_the_logits_and_features_of_preprocess_val(tiny_clip_dir, shape_images, tmp_path, one_thread):
    """Files (PNG in several modes, JPEG) read by the evaluation's loaders: the same model inputs, logits,
    ranked predictions and features as open_clip's transform unchanged, in process and in loader workers;
    embeddings of encoded bytes and arrays likewise."""
    import dataclasses

    from synret.augment import evaluation_transform
    from synret.embed import embed_images
    from synret.finetune import build_classifier, extract_features, predict

    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    unchanged = lambda image: clip.preprocess_val(image)  # noqa: E731  (not recognised: used as it is)
    paths = []
    for i, image in enumerate(eval_images(shape_images) * 2):
        fmt = "jpg" if image.mode == "CMYK" or (i % 5 == 4 and image.mode in ("RGB", "L")) else "png"
        paths.append(str(tmp_path / f"{i}.{fmt}"))
        image.save(paths[-1])
    model = build_classifier(clip, [f"class {c}" for c in range(10)], ["a {c}."], "cpu")
    transform, finish = evaluation_transform(clip.preprocess_val)
    assert finish is not None
    fast = image_loader(ImageDataset(paths, transform), 5)
    reference = image_loader(ImageDataset(paths, unchanged), 5)
    with torch.no_grad():
        for x, ref in zip(fast, reference):
            assert x.dtype == torch.uint8 and torch.equal(finish(x), ref)
            assert torch.equal(model(finish(x)), model(ref))  # the logits
    for workers in (0, 2):
        assert np.array_equal(predict(model, paths, clip.preprocess_val, 5, "cpu", "fp32", workers),
                              predict(model, paths, unchanged, 5, "cpu", "fp32", workers))
        assert np.array_equal(predict(model, paths, clip.preprocess_val, 5, "cpu", "fp32", workers, classes=[1, 3, 4]),
                              predict(model, paths, unchanged, 5, "cpu", "fp32", workers, classes=[1, 3, 4]))
        assert torch.equal(extract_features(clip.model.visual, paths, clip.preprocess_val, 7, "cpu", "fp32", workers),
                           extract_features(clip.model.visual, paths, unchanged, 7, "cpu", "fp32", workers))
    images, _ = shape_images
    items = [encode_image(im, "png") for im in images[:9]] + [images[9], images[10][..., 0], np.dstack(
        [images[11], np.full(images[11].shape[:2], 200, np.uint8)])]  # bytes, RGB, grayscale and RGBA arrays
    assert np.array_equal(embed_images(clip, items, batch_size=4),
                          embed_images(dataclasses.replace(clip, preprocess_val=unchanged), items, batch_size=4))
