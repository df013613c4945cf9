"""One cell of the grid: a (task, source, scale, seed) finetuning run, or a task's zero-shot evaluation."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from .clip import load_clip
from .curate import nested_subset, select_training
from .finetune import (
    TOP_K,
    FinetuneConfig,
    ProbeConfig,
    accuracy,
    build_classifier,
    evaluate,
    extract_features,
    train_classifier,
    train_probe,
)
from .progress import Progress
from .shards import load_images
from .synthesize import pick_device


def resolve_precision(precision: str, device: str, key: str = "clip.precision") -> str:
    """``auto`` is fp32 on CPU and bf16 autocast on GPU; fp32 master weights always. ``amp`` (fp16
    autocast, trained with a gradient scaler) needs a GPU: CPU kernels for fp16 are slow or missing."""
    if precision == "auto":
        return "amp_bf16" if device.startswith("cuda") else "fp32"
    if precision == "amp" and not device.startswith("cuda"):
        raise ValueError(f"config key {key!r}: 'amp' (fp16 autocast) needs a CUDA device, this job runs on {device}; "
                         "use amp_bf16 or fp32")
    return precision


def evaluate_splits(model, task: dict, splits: dict[str, pd.DataFrame], transform, cfg: dict, device: str,
                    precision: str, num_workers: int = 0, log: Callable[[str], None] | None = None,
                    ) -> tuple[dict, dict[str, np.ndarray]]:
    """Accuracy on every configured evaluation split, ``{split: {top1, top5, mean_per_class, n}}``, and
    the ranked predictions of each split's images (read by ``num_workers`` data-loader processes);
    ``log``: where each split's progress lines go (None: nowhere)."""
    n_classes = len(task["classnames"])
    results, ranked = {}, {}
    for name, table in splits.items():
        with Progress(len(table), f"evaluate {name}", log, unit="images") as progress:
            results[name], ranked[name] = evaluate(model, list(table["path"]), list(table["label"]), n_classes,
                                                   transform, cfg["batch_size"], device, precision, num_workers,
                                                   progress=progress)
    return results, ranked


def linear_probe_splits(model, task: dict, tables: dict[str, pd.DataFrame], transform, settings: dict,
                        batch_size: int, device: str, precision: str, seed: int,
                        log: Callable[[str], None], num_workers: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """The linear-probe evaluation of the model's image tower: ``{split: {top1, top5, mean_per_class, n}}``
    and the probe's ranked predictions per evaluated split."""
    cfg = ProbeConfig(**settings)
    n_classes = len(task["classnames"])
    train = pd.concat([tables[s] for s in cfg.train_splits], ignore_index=True)
    if not len(train):
        raise ValueError(f"linear probe: no training images in splits {list(cfg.train_splits)} "
                         "(config key 'evaluate.linear_probe.train_splits')")

    def features(table: pd.DataFrame, name: str):
        with Progress(len(table), f"linear probe features of {name}", log, unit="images") as progress:
            return extract_features(model.visual, list(table["path"]), transform, batch_size, device, precision,
                                    num_workers, progress=progress)

    head = train_probe(features(train, "+".join(cfg.train_splits)), list(train["label"]), n_classes, cfg, seed, log,
                       device)
    results, ranked = {}, {}
    with torch.no_grad():
        for split in cfg.eval_splits:
            logits = head(features(tables[split], split))
            ranked[split] = logits.topk(min(TOP_K, n_classes), dim=1).indices.numpy().astype(np.int32)
            results[split] = accuracy(ranked[split], tables[split]["label"].to_numpy(), n_classes)
    return results, ranked


PREDICTION_SCHEMA = pa.schema([
    ("evaluation", pa.string()),  # "classifier": the cell's model; "linear_probe": the probe on its tower
    ("split", pa.string()),
    ("key", pa.string()),  # the image's key in the task's split manifest
    ("label", pa.int32()),
    ("pred", pa.int32()),  # the top-1 class
    ("ranked", pa.list_(pa.int32())),  # the top-5 classes, best first
])


def prediction_table(splits: dict[str, pd.DataFrame], ranked: dict[str, dict[str, np.ndarray]]) -> pa.Table:
    """Per-image predictions of every evaluation (``ranked[evaluation][split]``) in one table."""
    parts = []
    for evaluation, by_split in ranked.items():
        for split, order in by_split.items():
            table = splits[split]
            parts.append(pa.table({
                "evaluation": pa.array([evaluation] * len(table), pa.string()),
                "split": pa.array([split] * len(table), pa.string()),
                "key": pa.array(table["key"].astype(str).tolist(), pa.string()),
                "label": pa.array(table["label"].to_numpy().astype(np.int32)),
                "pred": pa.array(order[:, 0] if len(order) else np.zeros(0, np.int32)),
                "ranked": pa.array([row.tolist() for row in order], pa.list_(pa.int32())),
            }, schema=PREDICTION_SCHEMA))
    return pa.concat_tables(parts) if parts else PREDICTION_SCHEMA.empty_table()


def _record(cell: dict, results: dict, extra: dict) -> dict:
    test = results.get("test", {})
    val = results.get("val", {})
    return {
        **cell,
        "top1": test.get("top1"),
        "top5": test.get("top5"),
        "mean_per_class": test.get("mean_per_class"),
        "val_top1": val.get("top1"),
        "val_mean_per_class": val.get("mean_per_class"),
        "evaluation": results,
        **extra,
    }


def run_cell(
    task: dict, cell: dict, clip_cfg: dict, eval_splits: dict[str, pd.DataFrame], evaluate_cfg: dict,
    curated: pd.DataFrame | None = None, finetune_cfg: dict | None = None, log: Callable[[str], None] = print,
    probe_tables: dict[str, pd.DataFrame] | None = None, num_workers: int = 0, selection: dict | None = None,
    eval_sets: dict[str, tuple[pd.DataFrame, list[int]]] | None = None,
) -> tuple[dict, pd.DataFrame | None, pa.Table]:
    """Finetune on the cell's nested subset (or not at all for zero-shot) and evaluate.

    With ``evaluate_cfg['linear_probe']`` set, a linear probe on the task's own splits
    (``probe_tables``: train/val/test manifests) also measures the image tower; its test accuracy
    becomes ``lp_top1`` / ``lp_mean_per_class``. Returns the cell's metrics record, the manifest
    of the images it trained on (None for zero-shot) and the per-image predictions of every evaluation
    (``PREDICTION_SCHEMA``). ``num_workers``: data-loader processes that read the evaluation images (and the
    probe's); training reads its own with ``finetune.num_workers``. Neither changes the evaluation's bits.
    ``curated``: the source's curated manifest (the first ``scale`` of its nested order are trained on), or
    with ``selection`` (``synret.curate.select_training``) the curated manifests of every source it draws on.
    ``eval_sets``: the task's extra evaluation sets, ``{name: (manifest, task labels that compete)}``
    (``synret.eval_sets``); their accuracies become ``eval_sets[name]`` of the record and their predictions
    rows with split ``name``.
    """
    start = time.time()
    device = pick_device()
    precision = resolve_precision(clip_cfg["precision"], device)
    clip = load_clip(clip_cfg["model"], clip_cfg["pretrained"], device=device, cache_dir=clip_cfg["cache_dir"])
    model = build_classifier(clip, task["classnames"], task["templates"], device)
    # evaluation (and the linear probe) at its own precision: the reference evaluates in fp32
    eval_precision = resolve_precision(evaluate_cfg.get("precision", "fp32"), device, "evaluate.precision")
    extra = {"n_train": 0, "steps": 0, "device": device, "precision": precision, "eval_precision": eval_precision}
    subset = None
    if curated is not None:
        if selection is None:
            subset, wanted = nested_subset(curated, cell["scale"], cell["seed"]), cell["scale"]
        else:
            subset, wanted = select_training(curated, selection, cell["seed"])
            cell = {**cell, "scale": len(subset) if wanted is None else wanted}
        if len(subset) < cell["scale"]:
            log(f"WARNING: only {len(subset)} curated images for scale {cell['scale']}; training on all of them")
        images = load_images(zip(subset["shard"], subset["member"]))
        cfg = FinetuneConfig(**finetune_cfg, seed=cell["seed"])
        transform = clip.preprocess_train if cfg.augment == "open_clip" else clip.preprocess_val
        log(f"finetuning on {len(subset)} images, {cfg.epochs} epochs of batch {cfg.batch_size} on {device}")
        stats = train_classifier(model, images, list(subset["label"]), transform, cfg, device, precision, log)
        extra.update(n_train=len(subset), **stats)
    results, ranked = evaluate_splits(model, task, eval_splits, clip.preprocess_val, evaluate_cfg, device,
                                      eval_precision, num_workers, log)
    ranked, tables = {"classifier": ranked}, dict(eval_splits)
    log(f"evaluation: {results}")
    extra["eval_sets"] = {}
    for name, (table, classes) in sorted((eval_sets or {}).items()):  # the extra sets, e.g. under shift
        with Progress(len(table), f"evaluate {name}", log, unit="images") as progress:
            extra["eval_sets"][name], ranked["classifier"][name] = evaluate(
                model, list(table["path"]), list(table["label"]), len(task["classnames"]), clip.preprocess_val,
                evaluate_cfg["batch_size"], device, eval_precision, num_workers, classes=classes, progress=progress)
        tables[name] = table
        log(f"evaluation set {name}: {extra['eval_sets'][name]}")
    if evaluate_cfg.get("linear_probe") is not None:
        tables = {**probe_tables, **tables}  # the task's splits, then the evaluated ones and the extra sets
        probe, ranked["linear_probe"] = linear_probe_splits(model, task, probe_tables, clip.preprocess_val, evaluate_cfg["linear_probe"],
                                    evaluate_cfg["batch_size"], device, eval_precision, cell["seed"], log,
                                    num_workers)
        log(f"linear probe: {probe}")
        results["linear_probe"] = probe
        extra.update(lp_top1=probe.get("test", {}).get("top1"), lp_mean_per_class=probe.get("test", {}).get("mean_per_class"))
    extra["wall_seconds"] = round(time.time() - start, 2)
    return _record(cell, results, extra), subset, prediction_table(tables, ranked)
