"""The img2img source: real images that a curated source kept, passed through the generator's
image-to-image pipeline at a strength ``s`` (the paper's generator-artifact probe).

The images are the parent source's kept ones in its nested order (``nested_subset(curated, images,
seed=0)``: the first ``n`` of them are what the parent's seed-0 cell at scale ``n`` trains on), keyed
``i<position>`` in that order, ``shard_size`` to a shard. Each is resized to the generator's
``height`` x ``width``, encoded by its VAE, noised to the timestep that ``s`` reaches and denoised from
there with the class's prompt: diffusers runs ``int(steps * s)`` of the ``steps`` denoising steps
(``synret.sources.effective_steps``), so at ``s = 1`` the input is all but replaced by a sample of the
generator and at small ``s`` it keeps its content and passes through the VAE and a few UNet steps. The
prompt is the task's class name in a template (default ``"a photo of {a/an} {c}"``), the same text for
every image of a class: the image, not its (noisy, often off-topic) web caption, carries what differs.
Every image has its own seeded generator (base seed + its position), so an image does not depend on the
batch it ran in. The shard and its manifest have the format ``synret.synthesize.generate_shard`` writes,
plus ``source_key`` (the parent's curated key of the image it came from) and ``strength``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from .curate import nested_subset
from .progress import Progress
from .shards import content_hash, decode_image, encode_image, load_images, write_shard
from .sources import effective_steps
from .synthesize import MANIFEST_SCHEMA as SYNTHETIC_SCHEMA
from .synthesize import _to_uint8, load_pipeline
from .templates import fill_template

KEY_PREFIX = "i"

MANIFEST_SCHEMA = pa.schema([*SYNTHETIC_SCHEMA, ("source_key", pa.string()), ("strength", pa.float64())])


def selected_images(curated: pd.DataFrame, images: int, shard_size: int, shard: int | None = None) -> pd.DataFrame:
    """The parent's images the source transforms: the first ``images`` kept ones of its curated manifest in
    its nested order (seed 0), each keyed ``i<position>`` and in shard ``position // shard_size``; only those
    of ``shard`` where it is given. Fewer where the parent kept fewer."""
    subset = nested_subset(curated, int(images), seed=0)
    position = np.arange(len(subset))
    rows = pd.DataFrame({
        "key": [f"{KEY_PREFIX}{j:07d}" for j in position],
        "label": subset["label"].astype(int).to_numpy(),
        "source_key": subset["key"].astype(str).to_numpy(),
        "source_shard": subset["shard"].to_numpy(),  # None: an image file (the real source's)
        "source_member": subset["member"].to_numpy(),
        "shard": position // int(shard_size),
    })
    return rows if shard is None else rows[rows["shard"] == int(shard)].reset_index(drop=True)


def check_strength(strength: float, steps: int, key: str = "source_settings.img2img") -> None:
    """A strength in (0, 1] that leaves at least one denoising step; else a ValueError naming the key."""
    if not 0 < strength <= 1:
        raise ValueError(f"config key '{key}.strength': must lie in (0, 1], got {strength}")
    if effective_steps(steps, strength) < 1:
        raise ValueError(f"config key '{key}.strength': {strength} of {steps} steps leaves no denoising step "
                         f"(int(steps * strength) = 0); raise it or synthetic.steps")


def load_img2img_pipeline(model: str, scheduler: str, dtype: str = "auto", device: str | None = None,
                          cache_dir: str | None = None):
    """The generator (hub id or folder) as diffusers' image-to-image pipeline (``synthesize.load_pipeline``)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    return load_pipeline(model, scheduler, dtype=dtype, device=device, cache_dir=cache_dir,
                         pipeline_class=StableDiffusionImg2ImgPipeline)


def img2img_shard(
    pipe, rows: pd.DataFrame, classnames: list[str], cfg: dict, shard_path: str | Path, manifest_path: str | Path,
    log: Callable[[str], None] = print, key: str = "source_settings.img2img",
) -> dict:
    """Transform one shard's images (``selected_images``); writes the tar and its per-image manifest.

    ``cfg``: the sampling settings (``batch_size``, ``steps``, ``guidance_scale``, ``height``, ``width``,
    ``save_size``, ``image_format``, ``seed``) with ``strength`` and the ``prompt`` template; ``key``: the
    config key of the source's settings, for errors."""
    check_strength(cfg["strength"], cfg["steps"], key)
    rows = rows.reset_index(drop=True)
    inputs = load_images(zip(rows["source_shard"], rows["source_member"]))
    size = (cfg["width"], cfg["height"])
    device = pipe.device
    samples, manifest, start = [], [], time.time()
    progress = Progress(len(rows), "img2img", log, unit="images")
    for b in range(0, len(rows), cfg["batch_size"]):
        batch = rows.iloc[b : b + cfg["batch_size"]]
        images = [decode_image(data).convert("RGB").resize(size, Image.BICUBIC) for data in inputs[b : b + len(batch)]]
        seeds = [cfg["seed"] + int(k[len(KEY_PREFIX):]) for k in batch["key"]]
        prompts = [fill_template(cfg["prompt"], classnames[int(y)]) for y in batch["label"]]
        result = pipe(
            prompt=prompts,
            image=images,
            strength=cfg["strength"],
            num_inference_steps=cfg["steps"],
            guidance_scale=cfg["guidance_scale"],
            generator=[torch.Generator(device=device).manual_seed(s) for s in seeds],
            output_type="np",
        )
        for row, prompt, seed, img in zip(batch.itertuples(), prompts, seeds, _to_uint8(result.images, cfg["save_size"])):
            data = encode_image(img, cfg["image_format"])
            meta = {"key": row.key, "label": int(row.label), "classname": classnames[int(row.label)], "prompt": prompt,
                    "seed": seed, "source_key": row.source_key, "strength": float(cfg["strength"])}
            samples.append((row.key, data, cfg["image_format"], meta))
            manifest.append({**meta, "shard": str(shard_path), "sha256": content_hash(data)})
        progress.update(len(batch))
    progress.done()
    write_shard(shard_path, samples)
    pq.write_table(pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA), manifest_path)
    seconds = time.time() - start
    return {"images": len(samples), "seconds": round(seconds, 2),
            "denoising_steps": effective_steps(cfg["steps"], cfg["strength"])}
