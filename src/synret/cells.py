"""One cell of the grid: a (task, source, scale, seed) finetuning run, or a task's zero-shot evaluation."""

from __future__ import annotations

import time
from typing import Callable

import pandas as pd
import torch

from .clip import load_clip
from .curate import nested_subset
from .finetune import (
    FinetuneConfig,
    ProbeConfig,
    accuracy,
    build_classifier,
    evaluate,
    extract_features,
    train_classifier,
    train_probe,
)
from .shards import load_images
from .synthesize import pick_device


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` is fp32 on CPU and bf16 autocast on GPU; fp32 master weights either way."""
    if precision == "auto":
        return "amp_bf16" if device.startswith("cuda") else "fp32"
    return precision


def evaluate_splits(model, task: dict, splits: dict[str, pd.DataFrame], transform, cfg: dict, device: str,
                    precision: str) -> dict:
    """Accuracy on every configured evaluation split: ``{split: {top1, mean_per_class, n}}``."""
    n_classes = len(task["classnames"])
    return {
        name: evaluate(model, list(table["path"]), list(table["label"]), n_classes, transform,
                       cfg["batch_size"], device, precision)
        for name, table in splits.items()
    }


def linear_probe_splits(model, task: dict, tables: dict[str, pd.DataFrame], transform, settings: dict,
                        batch_size: int, device: str, precision: str, seed: int, log: Callable[[str], None]) -> dict:
    """The linear-probe evaluation of the model's image tower: ``{split: {top1, mean_per_class, n}}``."""
    cfg = ProbeConfig(**settings)
    n_classes = len(task["classnames"])
    train = pd.concat([tables[s] for s in cfg.train_splits], ignore_index=True)
    if not len(train):
        raise ValueError(f"linear probe: no training images in splits {list(cfg.train_splits)} "
                         "(config key 'evaluate.linear_probe.train_splits')")

    def features(table: pd.DataFrame):
        return extract_features(model.visual, list(table["path"]), transform, batch_size, device, precision)

    head = train_probe(features(train), list(train["label"]), n_classes, cfg, seed, log, device)
    results = {}
    with torch.no_grad():
        for split in cfg.eval_splits:
            pred = head(features(tables[split])).argmax(dim=1).numpy()
            results[split] = accuracy(pred, tables[split]["label"].to_numpy(), n_classes)
    return results


def _record(cell: dict, results: dict, extra: dict) -> dict:
    test = results.get("test", {})
    val = results.get("val", {})
    return {
        **cell,
        "top1": test.get("top1"),
        "mean_per_class": test.get("mean_per_class"),
        "val_top1": val.get("top1"),
        "val_mean_per_class": val.get("mean_per_class"),
        "evaluation": results,
        **extra,
    }


def run_cell(
    task: dict, cell: dict, clip_cfg: dict, eval_splits: dict[str, pd.DataFrame], evaluate_cfg: dict,
    curated: pd.DataFrame | None = None, finetune_cfg: dict | None = None, log: Callable[[str], None] = print,
    probe_tables: dict[str, pd.DataFrame] | None = None,
) -> tuple[dict, pd.DataFrame | None]:
    """Finetune on the cell's nested subset (or not at all for zero-shot) and evaluate.

    With ``evaluate_cfg['linear_probe']`` set, a linear probe on the task's own splits
    (``probe_tables``: train/val/test manifests) also measures the image tower; its test accuracy
    becomes ``lp_top1`` / ``lp_mean_per_class``. Returns the cell's metrics record and the manifest
    of the images it trained on.
    """
    start = time.time()
    device = pick_device()
    precision = resolve_precision(clip_cfg["precision"], device)
    clip = load_clip(clip_cfg["model"], clip_cfg["pretrained"], device=device, cache_dir=clip_cfg["cache_dir"])
    model = build_classifier(clip, task["classnames"], task["templates"], device)
    extra, subset = {"n_train": 0, "steps": 0, "device": device, "precision": precision}, None
    if curated is not None:
        subset = nested_subset(curated, cell["scale"], cell["seed"])
        if len(subset) < cell["scale"]:
            log(f"WARNING: only {len(subset)} curated images for scale {cell['scale']}; training on all of them")
        images = load_images(zip(subset["shard"], subset["member"]))
        cfg = FinetuneConfig(**finetune_cfg, seed=cell["seed"])
        transform = clip.preprocess_train if cfg.augment == "open_clip" else clip.preprocess_val
        log(f"finetuning on {len(subset)} images, {cfg.epochs} epochs of batch {cfg.batch_size} on {device}")
        stats = train_classifier(model, images, list(subset["label"]), transform, cfg, device, precision, log)
        extra.update(n_train=len(subset), **stats)
    results = evaluate_splits(model, task, eval_splits, clip.preprocess_val, evaluate_cfg, device, precision)
    log(f"evaluation: {results}")
    if evaluate_cfg.get("linear_probe") is not None:
        probe = linear_probe_splits(model, task, probe_tables, clip.preprocess_val, evaluate_cfg["linear_probe"],
                                    evaluate_cfg["batch_size"], device, precision, cell["seed"], log)
        log(f"linear probe: {probe}")
        results["linear_probe"] = probe
        extra.update(lp_top1=probe.get("test", {}).get("top1"), lp_mean_per_class=probe.get("test", {}).get("mean_per_class"))
    extra["wall_seconds"] = round(time.time() - start, 2)
    return _record(cell, results, extra), subset
