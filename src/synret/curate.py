"""Curating a source's images: CLIP-score filtering, dedup against the task's evaluation images,
and the nested training subsets of the grid.

Every image of the source gets one row in the curated manifest, kept or not, with the reason it was
dropped. Reasons are checked in this order: ``download_failed`` (no image), ``duplicate_image``
(same bytes already listed for the class), ``near_duplicate_of_eval`` (descriptor similarity to some
val/test image above the threshold: the paper's test-set dedup, done for both arms; the descriptor is
CLIP's embedding, shrunk pixels, or the reference's ISC-2021 copy-detection network, ``synret.copydetect``), and
``clip_score`` (below its class's top-fraction cut, the optional minimum score, or the per-class cap);
with ``order: filter_first`` (the reference's order) the CLIP-score cut comes before the dedup.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from PIL import Image

from . import copydetect
from .clip import LoadedClip, zero_shot_weights
from .embed import embed_images
from .progress import Progress
from .shards import content_hash, decode_image, read_images

# near-duplicates of evaluation images dropped before the per-class CLIP-score cut (the kept top fraction
# is of eligible images), or after it among the kept (the reference's order: filter, then dedup)
ORDERS = ("dedup_first", "filter_first")

MANIFEST_COLUMNS = [
    "key", "label", "classname", "source", "origin", "text", "query", "methods", "shard", "member", "sha256",
    "clip_score", "zeroshot_label", "dedup_similarity", "dedup_match", "kept", "drop_reason", "planted_from",
]


def pixel_descriptor(image: Image.Image, size: int) -> np.ndarray:
    """A copy-detection descriptor: the image shrunk to size x size, mean-removed, unit norm.

    Cosine similarity of two descriptors is their pixel correlation: near 1 for re-encoded,
    recoloured or noised copies, lower for different images (however similar their content).
    """
    a = np.asarray(image.convert("RGB").resize((size, size), Image.BOX), dtype=np.float32).ravel()
    a = a - a.mean()
    return a / max(float(np.linalg.norm(a)), 1e-6)


def dedup_descriptors(
    clip: LoadedClip, items: list, dedup: dict, batch_size: int, device: str, clip_emb: np.ndarray | None = None,
    precision: str = "fp32", num_workers: int = 0,
) -> np.ndarray:
    """Dedup descriptors of images given as bytes or paths (``clip_emb``: their CLIP embeddings, if known).

    ``isc`` descriptors are computed in fp32 whatever ``precision`` says, at most ``copydetect.BATCH_SIZE``
    images at a time (512 px images through EfficientNetV2-M need far more memory than CLIP's batches)."""
    if dedup["descriptor"] == "clip":
        if clip_emb is not None:
            return clip_emb
        return embed_images(clip, items, batch_size=batch_size, device=device, precision=precision,
                            num_workers=num_workers)
    if dedup["descriptor"] == "isc":
        return copydetect.describe(items, dedup["weights"], device=device,
                                   batch_size=min(batch_size, copydetect.BATCH_SIZE), num_workers=num_workers)
    size = dedup["pixel_size"]
    pixels = [pixel_descriptor(decode_image(x) if isinstance(x, bytes) else Image.open(x), size) for x in items]
    return np.stack(pixels) if pixels else np.zeros((0, 3 * size * size), np.float32)


def describe_rows(clip: LoadedClip, rows: pd.DataFrame, cfg: dict, device: str, log: Callable,
                  precision: str = "fp32", num_workers: int = 0):
    """Embeddings and dedup descriptors of the rows' images, read shard by shard (NaN without image) and
    decoded by ``num_workers`` data-loader processes."""
    have = rows["shard"].notna()
    emb = desc = None
    progress = Progress(int(have.sum()), "describe", log, unit="images")  # counts the CLIP embedding pass
    for shard, group in rows[have].groupby("shard", sort=True):
        images = read_images(shard, group["member"].unique())
        data = [images[m] for m in group["member"]]
        e = embed_images(clip, data, batch_size=cfg["batch_size"], device=device, precision=precision,
                         num_workers=num_workers, progress=progress)
        d = dedup_descriptors(clip, data, cfg["dedup"], cfg["batch_size"], device, clip_emb=e, num_workers=num_workers)
        if emb is None:
            emb = np.full((len(rows), e.shape[1]), np.nan, dtype=np.float32)
            desc = np.full((len(rows), d.shape[1]), np.nan, dtype=np.float32)
        emb[group.index.to_numpy()], desc[group.index.to_numpy()] = e, d
        missing_hash = group["sha256"].isna().to_numpy()
        if missing_hash.any():
            rows.loc[group.index[missing_hash], "sha256"] = [content_hash(x) for x, m in zip(data, missing_hash) if m]
        log(f"described {len(group)} images of {shard}")
    if emb is None:
        raise ValueError("the source has no images to curate (every candidate failed)")
    progress.done()
    return emb, desc


def dedup_similarity(candidates: np.ndarray, reference: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each candidate, the max cosine similarity to any reference embedding and its index."""
    best = np.full(len(candidates), -np.inf, dtype=np.float32)
    arg = np.full(len(candidates), -1, dtype=np.int64)
    if len(reference) == 0:
        return best, arg
    ref = torch.from_numpy(reference)
    valid = ~np.isnan(candidates).any(axis=1)
    idx = np.flatnonzero(valid)
    for start in range(0, len(idx), chunk):
        rows = idx[start : start + chunk]
        sims = torch.from_numpy(candidates[rows]) @ ref.T
        value, where = sims.max(dim=1)
        best[rows], arg[rows] = value.numpy(), where.numpy()
    return best, arg


def copies_of(planted_from: pd.Series, eval_paths: pd.Series) -> pd.Series:
    """Which rows are known copies of one of these evaluation images: their ``planted_from`` is the
    image's path or a suffix of it after a ``/`` (the pool names the copied image relative to some root)."""
    paths = [str(p).replace("\\", "/") for p in eval_paths]
    suffixes = {p[i + 1:] for p in paths for i in range(len(p)) if p[i] == "/"} | set(paths)
    return planted_from.map(lambda x: isinstance(x, str) and x.replace("\\", "/") in suffixes).astype(bool)


def class_filter(scores: pd.Series, top_fraction: float, min_score: float | None, max_per_class: int | None) -> pd.Series:
    """Keep-mask within one class: the top fraction by score, above min_score, at most max_per_class."""
    keep = pd.Series(True, index=scores.index)
    if len(scores) == 0:
        return keep
    cut = np.quantile(scores.to_numpy(), 1 - top_fraction) if top_fraction < 1 else -np.inf
    keep &= scores >= cut
    if min_score is not None:
        keep &= scores >= min_score
    if max_per_class is not None and keep.sum() > max_per_class:
        ranked = scores[keep].sort_values(ascending=False, kind="stable")
        keep &= scores.index.isin(ranked.index[:max_per_class])
    return keep


def curate(
    rows: pd.DataFrame, task: dict, clip: LoadedClip, eval_items: pd.DataFrame, cfg: dict,
    device: str = "cpu", log: Callable[[str], None] = print, precision: str = "fp32", num_workers: int = 0,
) -> tuple[pa.Table, dict]:
    """Score, dedup and filter one source of one task; returns (per-image manifest, summary).

    ``precision``: fp32, or an autocast precision for the CLIP on GPU (see ``embed.autocast``).
    ``num_workers``: data-loader processes that decode the images (the results do not depend on it)."""
    rows = rows.reset_index(drop=True).copy()
    rows["drop_reason"] = np.where(rows["status"] == "success", None, "download_failed")
    rows.loc[rows["status"] != "success", "shard"] = None

    # describe candidates and evaluation images
    emb, desc = describe_rows(clip, rows, cfg, device, log, precision, num_workers)
    unlabelled = (rows["label"] < 0) & rows["shard"].notna()
    if unlabelled.any():  # an untargeted source: its images take the task's zero-shot class
        classifier = zero_shot_weights(clip, task["classnames"], task.get("templates") or task["filter_templates"],
                                       device=device).numpy()
        rows.loc[unlabelled, "label"] = (emb[unlabelled.to_numpy()] @ classifier.T).argmax(axis=1)
        log(f"labelled {int(unlabelled.sum())} images by the task's zero-shot classifier")
    rows["classname"] = [task["classnames"][y] if y >= 0 else None for y in rows["label"]]
    eval_desc = dedup_descriptors(clip, list(eval_items["path"]), cfg["dedup"], cfg["batch_size"], device,
                                  precision=precision, num_workers=num_workers)

    # exact duplicates within a class; near-duplicates of evaluation images are marked before or after
    # the CLIP-score filter, as ``order`` says
    pending = rows["drop_reason"].isna()
    repeat = rows.duplicated(["label", "sha256"], keep="first") & pending
    rows.loc[repeat, "drop_reason"] = "duplicate_image"
    sim, match = dedup_similarity(desc, eval_desc)
    rows["dedup_similarity"] = np.where(np.isfinite(sim), sim, np.nan)
    rows["dedup_match"] = [eval_items["key"].iloc[m] if m >= 0 else None for m in match]
    order = cfg.get("order", "dedup_first")
    if order not in ORDERS:
        raise ValueError(f"config key 'curate.order': {order!r} is not one of {', '.join(ORDERS)}")

    def drop_near_duplicates() -> pd.Series:
        examined = rows["drop_reason"].isna()
        rows.loc[examined & (rows["dedup_similarity"] > cfg["dedup"]["threshold"]), "drop_reason"] = \
            "near_duplicate_of_eval"
        return examined

    if order == "dedup_first":
        examined = drop_near_duplicates()

    # CLIP score against the image's own class, then the per-class filter
    text = zero_shot_weights(clip, task["classnames"], task["filter_templates"], device=device,
                             average=cfg["filter"].get("template_average", "raw")).numpy()
    rows["clip_score"] = np.einsum("nd,nd->n", np.nan_to_num(emb), text[rows["label"].to_numpy()])
    rows.loc[rows["shard"].isna(), "clip_score"] = np.nan
    # label fidelity: the class the task's own zero-shot classifier (its templates) gives each image
    classifier = zero_shot_weights(clip, task["classnames"], task.get("templates") or task["filter_templates"],
                                   device=device).numpy()
    predicted = pd.Series((np.nan_to_num(emb) @ classifier.T).argmax(axis=1), index=rows.index, dtype="Int64")
    rows["zeroshot_label"] = predicted.where(rows["shard"].notna())
    f = cfg["filter"]
    for label, group in rows[rows["drop_reason"].isna()].groupby("label"):
        keep = class_filter(group["clip_score"], f["top_fraction"], f.get("min_score"), f.get("max_per_class"))
        rows.loc[keep.index[~keep], "drop_reason"] = "clip_score"
    if order == "filter_first":
        examined = drop_near_duplicates()
    rows["kept"] = rows["drop_reason"].isna()
    planted = copies_of(rows["planted_from"], eval_items["path"]) & examined
    return pa.Table.from_pandas(rows[MANIFEST_COLUMNS], preserve_index=False), summarize(rows, task, planted)


def label_fidelity(rows: pd.DataFrame) -> float | None:
    """The share of images (with an image) whose zero-shot class is their label."""
    have = rows[rows["zeroshot_label"].notna()]
    return float((have["zeroshot_label"] == have["label"]).mean()) if len(have) else None


def leakage(rows: pd.DataFrame, planted: pd.Series) -> dict:
    """Known copies of evaluation images that the dedup examined (``planted``: see :func:`copies_of`;
    not those dropped before it): how many, how many it removed, how many were kept."""
    removed = planted & (rows["drop_reason"] == "near_duplicate_of_eval")
    return {
        "planted_copies": int(planted.sum()),
        "planted_copies_removed": int(removed.sum()),
        "planted_copies_kept": int((planted & rows["kept"]).sum()),
        "planted_copy_recall": float(removed.sum() / planted.sum()) if planted.any() else None,
    }


def summarize(rows: pd.DataFrame, task: dict, planted: pd.Series | None = None) -> dict:
    kept = rows[rows["kept"]]
    planted = pd.Series(False, index=rows.index) if planted is None else planted
    return {
        "candidates": int(len(rows)),
        "kept": int(len(kept)),
        "dropped": {str(k): int(v) for k, v in rows["drop_reason"].value_counts().sort_index().items()},
        # by label (names can repeat: ImageNet's do)
        "kept_per_class": np.bincount(kept["label"].to_numpy(dtype=np.int64), minlength=len(task["classnames"])).tolist(),
        "mean_clip_score_kept": float(kept["clip_score"].mean()) if len(kept) else None,
        "label_fidelity": label_fidelity(rows),
        "label_fidelity_kept": label_fidelity(kept),
        **leakage(rows, planted),
    }


def nested_subset(manifest: pd.DataFrame, scale: int, seed: int) -> pd.DataFrame:
    """The first ``scale`` kept images of a seeded permutation: smaller scales nest inside larger ones."""
    kept = manifest[manifest["kept"]].sort_values("key", kind="stable").reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(kept))
    return kept.iloc[order[:scale]].reset_index(drop=True)


def per_class_subset(manifest: pd.DataFrame, per_class: int | None, seed: int) -> pd.DataFrame:
    """The first ``per_class`` kept images of each class in a seeded permutation (all of them: None), in
    that permutation's order: smaller counts nest inside larger ones."""
    kept = manifest[manifest["kept"]].sort_values("key", kind="stable").reset_index(drop=True)
    order = kept.iloc[np.random.default_rng(seed).permutation(len(kept))]
    if per_class is not None:
        order = order.groupby("label", sort=False).head(per_class)
    return order.reset_index(drop=True)


def select_training(curated: dict[str, pd.DataFrame], selection: dict, seed: int) -> tuple[pd.DataFrame, int]:
    """A cell's training images from the curated manifests of the sources it draws on, as ``selection``
    says (``synret.sources.Source.selection``), and the number it asked for (None: as many as there are).

    - ``nested``: the first ``scale`` of one source's seeded permutation;
    - ``per_class``: the first ``per_class`` of each class (the real source);
    - ``mix``: from each source of ``parts`` its own nested subset of that many, so a mix nests in the
      same mix at a larger total, and a share of 0 or 1 is the source's own cell.
    """
    how = selection["how"]
    if how == "nested":
        return nested_subset(curated[selection["source"]], selection["scale"], seed), selection["scale"]
    if how == "per_class":
        subset = per_class_subset(curated[selection["source"]], selection["per_class"], seed)
        k = selection["per_class"]
        return subset, None if k is None else k * int(subset["label"].nunique() if len(subset) else 0)
    if how == "mix":
        parts = [nested_subset(curated[name], n, seed) for name, n in selection["parts"].items()]
        return pd.concat(parts, ignore_index=True), sum(selection["parts"].values())
    raise ValueError(f"unknown training-image selection {how!r}")


def keep_all(rows: pd.DataFrame, task: dict) -> tuple[pa.Table, dict]:
    """The curated manifest of a source kept as it is (the task's own labelled training images): every
    row kept, no scores."""
    rows = rows.reset_index(drop=True).copy()
    rows["classname"] = [task["classnames"][y] for y in rows["label"]]
    for column in ("clip_score", "dedup_similarity"):
        rows[column] = np.nan
    rows["zeroshot_label"] = pd.Series(pd.NA, index=rows.index, dtype="Int64")
    rows["dedup_match"], rows["drop_reason"], rows["kept"] = None, None, True
    return pa.Table.from_pandas(rows[MANIFEST_COLUMNS], preserve_index=False), summarize(rows, task)
