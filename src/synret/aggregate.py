"""The grid's results: one table row per evaluated cell, and accuracy-versus-scale figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

TABLE_COLUMNS = [
    "task", "source", "scale", "seed", "top1", "mean_per_class", "n_train", "wall_seconds",
    "val_top1", "val_mean_per_class", "steps",
]
PROBE_COLUMNS = ["lp_top1", "lp_mean_per_class"]  # present when some cell ran the linear-probe evaluation
SOURCE_STYLE = {
    "retrieved": {"color": "#1f77b4", "marker": "o", "label": "retrieved (real)"},
    "synthetic": {"color": "#d62728", "marker": "s", "label": "synthetic (generated)"},
}


def collect(metric_files: Sequence[str | Path], expected_rows: int | None = None) -> pd.DataFrame:
    """Read every cell's metrics.json into the results table (checked, sorted)."""
    metrics = []
    for path in metric_files:
        m = json.loads(Path(path).read_text())
        missing = [c for c in ("task", "source", "scale", "seed", "top1", "mean_per_class") if m.get(c) is None]
        if missing:
            raise ValueError(f"{path}: no value for {', '.join(missing)}")
        metrics.append(m)
    columns = TABLE_COLUMNS + [c for c in PROBE_COLUMNS if any(m.get(c) is not None for m in metrics)]
    df = pd.DataFrame([{c: m.get(c) for c in columns} for m in metrics], columns=columns)
    if expected_rows is not None and len(df) != expected_rows:
        raise ValueError(f"expected {expected_rows} result rows, found {len(df)}")
    for column in ("top1", "mean_per_class"):
        bad = df[~df[column].between(0, 1)]
        if len(bad):
            raise ValueError(f"{column} outside [0, 1] for {bad[['task', 'source', 'scale', 'seed']].to_dict('records')}")
    return df.sort_values(["task", "source", "scale", "seed"], kind="stable").reset_index(drop=True)


def _plot_axes(ax, df: pd.DataFrame, task: str, metric: str) -> None:
    import matplotlib.ticker

    cells = df[(df["task"] == task) & (df["source"] != "zeroshot")]
    for source, group in cells.groupby("source", sort=True):
        stats = group.groupby("scale")[metric].agg(["mean", "min", "max"]).sort_index()
        style = SOURCE_STYLE.get(source, {"label": source})
        ax.plot(stats.index, stats["mean"], marker=style.get("marker", "o"), color=style.get("color"),
                label=style["label"])
        if (stats["max"] > stats["min"]).any():
            ax.fill_between(stats.index, stats["min"], stats["max"], color=style.get("color"), alpha=0.15, lw=0)
    zero = df[(df["task"] == task) & (df["source"] == "zeroshot")][metric]
    if len(zero):
        ax.axhline(float(zero.mean()), color="gray", ls="--", label="zero-shot")
    ax.set_xscale("log")
    scales = sorted(cells["scale"].unique())
    if scales:  # label the grid's own scales, not powers of ten
        ax.set_xticks(scales, [f"{s:,}" for s in scales])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training images")
    ax.set_ylabel("top-1 accuracy" if metric == "top1" else "mean per-class accuracy")
    ax.set_title(task)
    ax.grid(True, which="both", alpha=0.3)


def plot_task(df: pd.DataFrame, task: str, path: str | Path, metric: str = "top1") -> None:
    """Accuracy against the number of training images: a line per source, zero-shot as reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    _plot_axes(ax, df, task, metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_summary(df: pd.DataFrame, tasks: Sequence[str], path: str | Path, metric: str = "top1") -> None:
    """All tasks side by side, like the paper's Figure 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not tasks:
        raise ValueError("no tasks to plot")
    cols = min(len(tasks), 3)
    rows = int(np.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), dpi=120, squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        _plot_axes(ax, df, task, metric)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    legend = {}
    for ax in axes.flat:  # one entry per source, whichever panel has it
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle("Synthetic vs retrieved training images")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)
