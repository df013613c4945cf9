"""Leakage calibration: does the test-set dedup catch copies of test images, and what else does it drop?

The curated sets of both arms are deduplicated against the task's evaluation images (see
:mod:`synret.curate`). A descriptor and threshold earn trust by measurement: copies of test images,
made the ways web copies and memorised generations differ from their original, are planted among
look-alike images that are not copies, stored the way each arm stores its images, and the dedup
decision is taken on them exactly as curation takes it.

Copies (:data:`COPY_KINDS`): ``exact``; ``resized`` (to 0.5-2x, bicubic); ``jpeg`` (re-encoded at
quality 10-30); ``letterbox`` (padded to 4:3 or 3:4 with a uniform border); ``crop`` (a window
keeping 80-90% of each side, anywhere in the image); ``colour_jitter`` (brightness, contrast and
saturation x0.8-1.2, hue turned by up to 0.05 of a circle).

Arms: ``retrieved`` copies go through img2dataset's own resizer with the configured download
settings (as a downloaded web image does); ``synthetic`` copies are resized to the generator's
``save_size`` and encoded in its ``image_format`` (as a generated image is saved).

Figures: recall (copies whose max similarity to any evaluation image exceeds the threshold), per
kind and overall; the share of caught copies whose best match is their own original; the false-
positive rate (look-alikes above the threshold); and the similarity quantiles of both, so that the
threshold reaching 99% recall and its false-positive rate can be read off.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from .sources import source, sources_of

COPY_KINDS = ("exact", "resized", "jpeg", "letterbox", "crop", "colour_jitter")


def _encode(image: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG" if fmt in ("jpg", "jpeg") else fmt.upper(), quality=quality)
    return buf.getvalue()


def make_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One copy of ``image`` of the given kind (see the module docstring)."""
    image = image.convert("RGB")
    w, h = image.size
    if kind == "exact":
        return image.copy()
    if kind == "resized":
        f = float(rng.uniform(0.5, 2.0))
        return image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC)
    if kind == "jpeg":
        return Image.open(io.BytesIO(_encode(image, "jpeg", int(rng.integers(10, 31))))).convert("RGB")
    if kind == "letterbox":
        wide = bool(rng.integers(2))
        cw, ch = (max(w, round(h * 4 / 3)), h) if wide else (w, max(h, round(w * 4 / 3)))
        colour = tuple(int(c) for c in rng.choice([0, 255], size=1).repeat(3))
        canvas = Image.new("RGB", (cw, ch), colour)
        canvas.paste(image, ((cw - w) // 2, (ch - h) // 2))
        return canvas
    if kind == "crop":
        fw, fh = rng.uniform(0.8, 0.9, size=2)
        cw, ch = max(1, round(w * fw)), max(1, round(h * fh))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x, y, x + cw, y + ch))
    if kind == "colour_jitter":
        out = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
        out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.8, 1.2)))
        out = ImageEnhance.Color(out).enhance(float(rng.uniform(0.8, 1.2)))
        hsv = np.asarray(out.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(int) + int(round(rng.uniform(-0.05, 0.05) * 256))) % 256
        return Image.fromarray(hsv, "HSV").convert("RGB")
    raise ValueError(f"unknown copy kind {kind!r}; choose from {', '.join(COPY_KINDS)}")


def arm_storage(arm: str, settings: dict) -> Callable[[Image.Image], bytes]:
    """How a source stores an incoming image: the bytes a shard of that source would hold, given the
    settings that say how (``synret.sources.Source.storage``; ``retrieved``: ``retrieval.download``,
    ``synthetic``: the ``synthetic`` block)."""
    return source(arm).storage(settings)


def plant_copies(originals: Sequence[Image.Image], kinds: Sequence[str], seed: int) -> list[tuple[int, str, Image.Image]]:
    """One copy of every kind of every original: (original index, kind, copy)."""
    rng = np.random.default_rng(seed)
    return [(i, kind, make_copy(image, kind, rng)) for i, image in enumerate(originals) for kind in kinds]


def calibrate(
    clip, dedup: dict, eval_items: list, originals: Sequence[int], copies: list[tuple[int, str, Image.Image]],
    lookalikes: list[bytes], store: Callable[[Image.Image], bytes], batch_size: int = 256, device: str = "cpu",
) -> dict:
    """Recall on planted copies and false-positive rate on look-alikes for the dedup settings ``dedup``
    (``curate.dedup``: descriptor and threshold), decided by curation's own functions.

    ``eval_items`` are the evaluation images (paths or bytes) the dedup compares against;
    ``originals[i]`` is the position in ``eval_items`` of the i-th original that ``copies`` refer to;
    ``store`` turns a copy into the bytes its arm holds (:func:`arm_storage`); ``lookalikes`` are the
    arm's own images that copy no evaluation image; ``clip`` is needed by the ``clip`` descriptor only.
    """
    from .curate import dedup_descriptors, dedup_similarity

    threshold = dedup["threshold"]
    eval_desc = dedup_descriptors(clip, list(eval_items), dedup, batch_size, device)

    def best(items: list) -> tuple[np.ndarray, np.ndarray]:
        if not items:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        return dedup_similarity(dedup_descriptors(clip, items, dedup, batch_size, device), eval_desc)

    copy_sim, copy_match = best([store(c) for _, _, c in copies])
    look_sim, _ = best(list(lookalikes))
    kinds = [k for _, k, _ in copies]
    caught = copy_sim > threshold
    own = np.array([copy_match[j] == originals[i] for j, (i, _, _) in enumerate(copies)], dtype=bool)
    flagged = look_sim > threshold

    def quantiles(x: np.ndarray) -> dict:
        qs = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0)
        return {str(q): round(float(np.quantile(x, q)), 4) for q in qs} if len(x) else {}

    at_99 = float(np.quantile(copy_sim, 0.01)) if len(copy_sim) else None  # the threshold keeping 99% recall
    return {
        "descriptor": dedup["descriptor"],
        "threshold": threshold,
        "copies": int(len(copies)),
        "recall": float(caught.mean()) if len(copies) else None,
        "recall_by_kind": {k: float(caught[[x == k for x in kinds]].mean()) for k in dict.fromkeys(kinds)},
        "matched_own_original": float(own[caught].mean()) if caught.any() else None,
        "lookalikes": int(len(lookalikes)),
        "false_positive_rate": float(flagged.mean()) if len(lookalikes) else None,
        "copy_similarity": quantiles(copy_sim),
        "lookalike_similarity": quantiles(look_sim),
        "threshold_for_99_recall": None if at_99 is None else round(at_99, 4),
        "false_positive_rate_at_99_recall": (float((look_sim >= at_99).mean())
                                             if at_99 is not None and len(lookalikes) else None),
    }


def _arm_images(manifest_path: str, limit: int, rng: np.random.Generator, root: Path) -> list[bytes]:
    """Up to ``limit`` of an arm's curated images that copy no evaluation image: those with an image,
    not known to be planted copies, and not removed by the dedup (the dedup's own verdicts are what is
    being measured, but an arm's real near-duplicates would count as false positives otherwise)."""
    import pandas as pd

    from .shards import read_images

    rows = pd.read_parquet(manifest_path)
    planted = rows["planted_from"].notna() if "planted_from" in rows else False
    rows = rows[rows["shard"].notna() & ~planted & (rows["drop_reason"] != "near_duplicate_of_eval")]
    rows = rows.iloc[np.sort(rng.permutation(len(rows))[:limit])]
    out = []
    for shard, group in rows.groupby("shard", sort=True):
        images = read_images(shard if os.path.isabs(shard) else root / shard, group["member"].unique())
        out += [images[m] for m in group["member"]]
    return out


def calibrate_run(config: dict, task: str, originals: int = 40, lookalikes: int = 500, seed: int = 0,
                  root: str = ".", clip=None, device: str = "cpu") -> dict:
    """Calibrate the dedup of a finished run's task (``results/`` under ``root``), for both arms.

    ``originals`` test images each get every kind of copy, stored the way each arm stores its
    images; the look-alikes are the arm's own curated images (see :func:`_arm_images`). Returns the
    figures of :func:`calibrate` per arm, with the settings used."""
    import pandas as pd

    from .config import stage_settings

    root_path = Path(root)
    curate = stage_settings(config, "curate", task)
    dedup = curate["dedup"]
    evals = pd.concat([pd.read_parquet(root_path / f"results/tasks/{task}/{s}.parquet") for s in dedup["splits"]],
                      ignore_index=True)
    test = pd.read_parquet(root_path / f"results/tasks/{task}/test.parquet")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(test))[:originals])
    paths = [str(root_path / p) if not os.path.isabs(p) else p for p in test["path"].iloc[pick]]
    eval_paths = [str(root_path / p) if not os.path.isabs(p) else p for p in evals["path"]]
    position = {p: i for i, p in enumerate(eval_paths)}
    copies = plant_copies([Image.open(p) for p in paths], COPY_KINDS, seed)
    if clip is None and dedup["descriptor"] == "clip":
        from .clip import load_clip

        c = config["clip"]
        clip = load_clip(c["model"], c.get("pretrained"), device=device, cache_dir=c.get("cache_dir"))
    out = {"task": task, "dedup": dedup, "originals": int(len(pick)), "kinds": list(COPY_KINDS)}
    for arm in sources_of(config):
        if arm.storage_fn is None:  # its images are not fetched or made (the task's own; a mix of others)
            continue
        manifest = root_path / f"results/curated/{task}/{arm.name}/manifest.parquet"
        look = _arm_images(str(manifest), lookalikes, np.random.default_rng(seed + 1), root_path)
        store = arm.storage(arm.storage_settings(config, task))
        out[arm.name] = calibrate(clip, dedup, eval_paths, [position[p] for p in paths], copies, look, store,
                                  curate.get("batch_size", 256), device)
    return out
