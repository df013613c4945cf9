"""The synthetic arm: a diffusers text-to-image pipeline turns a shard of prompts into a webdataset shard.

The pipeline is loaded with ``StableDiffusionPipeline.from_pretrained(id_or_dir)``, the same call for
SD 1.5 on a GPU node and for the demo world's tiny pipeline on a laptop. Every image has its own
seeded generator (base seed + image index), so an image does not depend on the batch it ran in.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from .progress import Progress
from .shards import content_hash, encode_image, write_shard


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def make_scheduler(name: str, config: dict):
    """A sampler built from the pipeline's own scheduler config."""
    import diffusers

    if name == "ddim":
        return diffusers.DDIMScheduler.from_config(config)
    if name == "dpm":
        # no dynamic thresholding: in latent space it clamps latents to [-1, 1] and ruins colours
        return diffusers.DPMSolverMultistepScheduler.from_config(config)
    if name == "euler":
        return diffusers.EulerDiscreteScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}")


def load_pipeline(model: str, scheduler: str, dtype: str = "auto", device: str | None = None, cache_dir: str | None = None,
                  pipeline_class=None):
    """Load a Stable-Diffusion pipeline by hub id or local directory, without the safety checker.

    ``pipeline_class``: the diffusers class to load it as (default ``StableDiffusionPipeline``, text to
    image; ``synret.img2img`` loads the same folder as ``StableDiffusionImg2ImgPipeline``).

    Hub ids resolve through the Hugging Face cache (``cache_dir``, else ``$HF_HOME``; with
    ``HF_HUB_OFFLINE=1`` only the cache). diffusers takes the safetensors weights wherever the repo or
    folder has them. ``dtype`` ``auto`` is fp16 on a GPU (the reference samples under fp16 autocast),
    fp32 on CPU.
    """
    from .config import HUB_ID

    if pipeline_class is None:
        from diffusers import StableDiffusionPipeline as pipeline_class

    if not Path(model).is_dir() and not HUB_ID.match(model):
        raise FileNotFoundError(f"generator {model!r} is neither a directory nor a hub id (config key 'generator.model')")
    device = device or pick_device()
    pipe = pipeline_class.from_pretrained(
        model,
        dtype=torch_dtype(dtype, device),
        cache_dir=cache_dir,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _to_uint8(images: np.ndarray, save_size: int) -> list[np.ndarray]:
    out = []
    for img in np.clip(np.rint(images * 255), 0, 255).astype(np.uint8):
        if img.shape[0] != save_size or img.shape[1] != save_size:
            img = np.asarray(Image.fromarray(img).resize((save_size, save_size), Image.BICUBIC))
        out.append(img)
    return out


def generate_shard(
    pipe, prompts: pa.Table, cfg: dict, shard_path: str | Path, manifest_path: str | Path,
    log: Callable[[str], None] = print,
) -> dict:
    """Generate the images of one shard's prompts; writes the tar and its per-image manifest."""
    rows = prompts.to_pylist()
    device = pipe.device
    samples, manifest, start = [], [], time.time()
    progress = Progress(len(rows), "generate", log, unit="images")
    for b in range(0, len(rows), cfg["batch_size"]):
        batch = rows[b : b + cfg["batch_size"]]
        seeds = [cfg["seed"] + int(r["key"][1:]) for r in batch]
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        result = pipe(
            prompt=[r["prompt"] for r in batch],
            num_inference_steps=cfg["steps"],
            guidance_scale=cfg["guidance_scale"],
            height=cfg["height"],
            width=cfg["width"],
            generator=generators,
            output_type="np",
        )
        for row, seed, img in zip(batch, seeds, _to_uint8(result.images, cfg["save_size"])):
            data = encode_image(img, cfg["image_format"])
            meta = {"key": row["key"], "label": row["label"], "classname": row["classname"],
                    "prompt": row["prompt"], "seed": seed}
            samples.append((row["key"], data, cfg["image_format"], meta))
            manifest.append({**meta, "shard": str(shard_path), "sha256": content_hash(data)})
        progress.update(len(batch))
    progress.done()
    write_shard(shard_path, samples)
    pq.write_table(pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA), manifest_path)
    seconds = time.time() - start
    return {"images": len(samples), "seconds": round(seconds, 2), "images_per_second": round(len(samples) / max(seconds, 1e-9), 2)}


MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("label", pa.int32()),
        ("classname", pa.string()),
        ("prompt", pa.string()),
        ("seed", pa.int64()),
        ("shard", pa.string()),
        ("sha256", pa.string()),
    ]
)
