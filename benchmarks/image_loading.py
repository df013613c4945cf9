"""Image loading for training: decode + augment, images per second per core, open_clip's PIL path against training's.

    python benchmarks/image_loading.py [--images 512] [--rounds 5] [--batch-size 64] [--model ViT-B-16]

Writes webdataset shards of 256-px photo-like images (gradients, shapes, blur, grain, texture) in the
formats the two arms store: retrieved images as JPEG quality 95 (img2dataset's default, which
synret.fetch passes), synthetic ones as PNG (synret.synthesize's ``image_format: png``). Reads them back
as a finetuning cell does (``shards.load_images``) and times, on one core in this process
(``torch.set_num_threads(1)``, ``num_workers=0``), batches of ``embed.image_loader`` over ``ImageDataset``:

- baseline: the model's ``preprocess_train`` (open_clip's RandomResizedCrop on PIL, ToTensor, Normalize),
  built from the model's own config by ``create_model_and_transforms`` (random weights: none are needed);
- fast: training's path (``augment.training_transform``): uint8 crops resized by torch, the batch then
  normalised. On CPU that step is counted here; on a GPU the device does it, so the loader cores' own
  figure (``loader_images_per_second``) is reported too.

Rounds alternate the two so both see the same load on a shared machine; each figure is the median
round, images per CPU-second of this process (``time.process_time``; wall-clock figures alongside).
Then the same passes through ``image_loader`` with the worker processes a finetuning rule of 2 threads
gets (1 compute thread: ``resources.loader_workers(2, 1)``): wall-clock images per second and images per
CPU-second of the parent and its workers together. Also measured: decode alone (PIL), and the pixel
difference between the two paths for the same random draws. Writes
``benchmarks/results/image_loading.json`` (target: >= 1,000 images per second per core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

TARGET = 1000.0  # images per second per core, from the issue
EARLIER_BASELINE = 755.0  # PIL path, smooth 256-px JPEGs, another run on this kind of machine (the issue)
SIZE = 256
FORMATS = {"jpg": "retrieved (img2dataset, JPEG quality 95)", "png": "synthetic (PNG, synret.synthesize)"}


def photo_like(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """An RGB image with the statistics that matter to a codec: smooth gradients, hard-edged shapes
    softened by a blur, mid-frequency texture and sensor-like grain."""
    from PIL import Image, ImageDraw, ImageFilter

    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([a * x + b * y + c for a, b, c in rng.uniform(-1, 1, (3, 3))], axis=-1) * 120 + 128
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 16))):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 20, size // 2, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    texture = Image.fromarray(rng.integers(0, 256, (size // 8, size // 8), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    pixels = np.asarray(image, np.float32) + (np.asarray(texture, np.float32)[..., None] - 128) * 0.25
    pixels += rng.normal(0, float(rng.uniform(2, 8)), pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_shards(folder: Path, n: int) -> dict[str, list[bytes]]:
    """One shard per format of the same ``n`` images; returns their bytes as training loads them."""
    from synret.shards import encode_image, load_images, write_shard

    rng = np.random.default_rng(0)
    images = [photo_like(rng) for _ in range(n)]
    out = {}
    for fmt in FORMATS:
        shard = folder / f"{fmt}-000000.tar"
        write_shard(shard, ((f"{i:06d}", encode_image(im, fmt), fmt, {"label": i % 10}) for i, im in enumerate(images)))
        out[fmt] = load_images((str(shard), f"{i:06d}") for i in range(n))
    return out


def one_pass(images: list[bytes], transform, finish, batch_size: int, workers: int, seed: int) -> dict:
    """Seconds (wall, and CPU of this process and of its finished children) of one shuffled pass of
    ``image_loader``, each batch finished by ``finish`` (None: not at all)."""
    import torch

    from synret.embed import ImageDataset, image_loader

    torch.manual_seed(seed)
    loader = image_loader(ImageDataset(images, transform, [i % 10 for i in range(len(images))]), batch_size, workers,
                          shuffle=True, generator=torch.Generator().manual_seed(seed))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, cpu = time.perf_counter(), time.process_time()
    for x, _ in loader:
        if finish is not None:
            x = finish(x)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return {"wall": wall, "cpu": cpu, "cpu_all": cpu + workers_cpu}


def rate(n: int, passes: list[dict], key: str) -> float:
    return round(n / statistics.median(p[key] for p in passes), 1)


def timed_paths(images: list[bytes], paths: dict, batch_size: int, workers: int, rounds: int) -> dict[str, list[dict]]:
    """Rounds alternating the paths (same seed per round), after one untimed warm-up pass of each."""
    small = images[: 2 * batch_size]
    for transform, finish in paths.values():
        one_pass(small, transform, finish, batch_size, workers, 0)
    passes = {name: [] for name in paths}
    for r in range(rounds):
        for name, (transform, finish) in paths.items():
            passes[name].append(one_pass(images, transform, finish, batch_size, workers, r))
    return passes


def decode_rate(images: list[bytes], rounds: int) -> float:
    from synret.shards import decode_image

    seconds = []
    for _ in range(rounds):
        start = time.process_time()
        for data in images:
            decode_image(data)
        seconds.append(time.process_time() - start)
    return round(len(images) / statistics.median(seconds), 1)


def difference(images: list[bytes], reference, fast) -> dict:
    """The two paths on the same images with the same random draws: uint8 levels (the reference's floats
    mapped back) and normalised units."""
    import torch

    from synret.shards import decode_image

    mean = torch.tensor(fast.mean).view(3, 1, 1)
    std = torch.tensor(fast.std).view(3, 1, 1)
    levels, normalised = [], 0.0
    for i, data in enumerate(images):
        torch.manual_seed(i)
        ref = reference(decode_image(data))
        torch.manual_seed(i)
        pixels = fast(decode_image(data))
        ours = fast.normalize(pixels[None])[0]
        normalised = max(normalised, float((ref - ours).abs().max()))
        levels.append((torch.round((ref * std + mean) * 255) - pixels.permute(2, 0, 1).float()).abs().flatten())
    levels = torch.cat(levels)
    counts = torch.bincount(levels.to(torch.int64)).tolist()
    return {"images": len(images), "values": int(levels.numel()), "max_levels": int(levels.max()),
            "mean_levels": round(float(levels.mean()), 5), "fraction_identical": round(counts[0] / levels.numel(), 5),
            "values_by_difference": {str(d): c for d, c in enumerate(counts)}, "max_normalised": round(normalised, 5)}


def versions() -> dict:
    import open_clip
    import PIL
    import torch
    import torchvision
    from PIL import features

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "open_clip": open_clip.__version__, "pillow": PIL.__version__, "numpy": np.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"),
            "zlib": features.version("zlib")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512, help="images per format")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes of each path")
    parser.add_argument("--batch-size", type=int, default=64, help="the demo config's finetune.batch_size")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture whose train transform is used")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "image_loading.json"))
    args = parser.parse_args()

    import open_clip
    import torch

    from synret.augment import fast_train_transform, training_transform
    from synret.resources import loader_workers
    from workflow_speed import machine

    torch.set_num_threads(1)
    about = machine()
    _, preprocess_train, _ = open_clip.create_model_and_transforms(args.model, pretrained=None)
    fast = fast_train_transform(preprocess_train)
    if fast is None:
        raise SystemExit(f"{args.model}'s train transform is not one the fast path recognises: {preprocess_train}")
    paths = {"baseline": (preprocess_train, None), "fast": training_transform(preprocess_train),
             "fast_uint8": (fast, None)}
    workers = loader_workers(2, 1)
    result = {"benchmark": "image_loading", "model": args.model, "image_size": SIZE, "crop_size": list(fast.size),
              "train_transform": repr(preprocess_train).replace("\n", " "), "batch_size": args.batch_size,
              "images_per_format": args.images, "rounds": args.rounds, "target_images_per_second_per_core": TARGET,
              "earlier_baseline_images_per_second_per_core": EARLIER_BASELINE,
              "formats": {}, "versions": versions(), "machine": about}
    with tempfile.TemporaryDirectory() as folder:
        shards = write_shards(Path(folder), args.images)
    for fmt, images in shards.items():
        print(f"{fmt}: {np.mean([len(b) for b in images]) / 1e3:.1f} kB per image", flush=True)
        one_core = timed_paths(images, paths, args.batch_size, 0, args.rounds)
        figures = {name: {"images_per_cpu_second": rate(len(images), p, "cpu"),
                          "images_per_wall_second": rate(len(images), p, "wall")} for name, p in one_core.items()}
        base, ours = figures["baseline"]["images_per_cpu_second"], figures["fast"]["images_per_cpu_second"]
        loader_only = figures["fast_uint8"]["images_per_cpu_second"]
        with_workers = timed_paths(images, {k: paths[k] for k in ("baseline", "fast")}, args.batch_size, workers,
                                   args.rounds)
        in_workers = {name: {"images_per_wall_second": rate(len(images), p, "wall"),
                             "images_per_cpu_second": rate(len(images), p, "cpu_all")} for name, p in with_workers.items()}
        result["formats"][fmt] = {
            "arm": FORMATS[fmt], "mean_bytes": round(float(np.mean([len(b) for b in images]))),
            "decode_only_images_per_cpu_second": decode_rate(images, args.rounds),
            "one_core": {**figures, "ratio_fast_to_baseline": round(ours / base, 3),
                         "ratio_fast_to_target": round(ours / TARGET, 3),
                         "ratio_loader_uint8_to_baseline": round(loader_only / base, 3),
                         "ratio_loader_uint8_to_target": round(loader_only / TARGET, 3)},
            "with_workers": {"num_workers": workers, "rule": "resources.loader_workers(threads=2, compute_threads=1)",
                             **in_workers,
                             "ratio_fast_to_baseline_wall": round(in_workers["fast"]["images_per_wall_second"]
                                                                  / in_workers["baseline"]["images_per_wall_second"], 3)},
            "difference": difference(images[:128], preprocess_train, fast),
        }
        print(json.dumps(result["formats"][fmt], indent=1), flush=True)
    result["load_average_after"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
