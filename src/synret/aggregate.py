"""The grid's results: tables with intervals, paired comparisons and accuracy-versus-scale figures.

Inputs are the cells' ``metrics.json`` and ``predictions.parquet``; outputs are

- ``all.csv``: one row per evaluated cell, with a bootstrap interval over its test images;
- ``summary.csv``: one row per (task, source, scale), the mean over seeds with an interval that
  counts both the seeds and the test images, and whether the source fell short of the scale;
- ``paired.csv``: per (task, scale), each source minus each earlier source of the grid and minus
  zero-shot on the same test images, per seed (with an exact McNemar p-value) and across seeds.

A task's extra evaluation sets (``synret.eval_sets``, e.g. under distribution shift) add, per set
``<name>``, columns ``top1_<name>``, ``mean_per_class_<name>`` (each with ``_lo``/``_hi``) and
``n_<name>`` to ``all.csv`` and ``summary.csv`` (empty for tasks without the set), computed from the
cells' predictions on the set as the test columns are from theirs; ``eval_set_plots`` draws them.

See ``synret.stats`` for the methods. Accuracies are rounded to 4 decimals, p-values to 4
significant digits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .config import ZEROSHOT, expected_cells  # noqa: F401 (expected_cells: part of this module's API)
from .sources import source_style
from .stats import BootstrapConfig, ImageResamples, cell_interval, equivalent_real, paired_difference, seed_image_interval

KEY = ["task", "source", "scale", "seed"]
TABLE_COLUMNS = [
    "task", "source", "scale", "seed", "top1", "top1_lo", "top1_hi", "top5",
    "mean_per_class", "mean_per_class_lo", "mean_per_class_hi", "n_train", "short", "n_test",
    "wall_seconds", "val_top1", "val_mean_per_class", "steps", "size", "images_per_class", "mix",
]
PROBE_COLUMNS = ["lp_top1", "lp_mean_per_class"]  # present when some cell ran the linear-probe evaluation
SUMMARY_COLUMNS = [
    "task", "source", "scale", "seeds", "n_train", "short", "top1", "top1_lo", "top1_hi", "top1_seed_sd",
    "mean_per_class", "mean_per_class_lo", "mean_per_class_hi", "n_test",
]
PAIRED_COLUMNS = [
    "task", "scale", "a", "b", "seed", "n_test", "diff_top1", "diff_top1_lo", "diff_top1_hi",
    "diff_mean_per_class", "diff_mean_per_class_lo", "diff_mean_per_class_hi", "a_only", "b_only", "mcnemar_p",
]
EXCHANGE_COLUMNS = [
    "task", "source", "scale", "seeds", "n_train", "top1", "real_per_class", "real_per_class_lo", "real_per_class_hi",
    "real_images", "real_images_per_image", "real_curve_min", "real_curve_max",
]
SOURCE_COLUMNS = [
    "task", "source", "candidates", "kept", "largest_scale", "shortfall", "label_fidelity", "label_fidelity_kept",
    "zeroshot_test_top1", "mean_clip_score_kept", "planted_copies", "planted_copy_recall", "planted_copies_kept",
]
ACCURACY_DECIMALS = 4


# ----------------------------------------------------------------------------- the grid


def check_grid(found: Iterable[tuple | str], expected: Iterable[tuple | str]) -> None:
    """Every expected cell exactly once, nothing else: an error naming each cell that is not. Cells are
    ids (``task/source/size/seed<seed>``, see ``synret.sources.Cell``) or (task, source, scale, seed)."""
    found, expected = [_cell_name(c) for c in found], [_cell_name(c) for c in expected]
    counts = pd.Series(found, dtype=object).value_counts() if found else pd.Series(dtype=int)
    problems = []
    missing = sorted(set(expected) - set(found))
    duplicated = sorted(c for c, n in counts.items() if n > 1)
    unexpected = sorted(set(found) - set(expected))
    names = ", ".join
    if missing:
        problems.append(f"missing cells {names(missing)}")
    if duplicated:
        problems.append(f"duplicated cells {names(duplicated)}")
    if unexpected:
        problems.append(f"cells outside the configured grid {names(unexpected)}")
    if problems:
        raise ValueError("results do not match the grid: " + "; ".join(problems))


def _cell_name(cell: tuple | str) -> str:
    if isinstance(cell, str):
        return cell
    task, source, scale, seed = cell[:4]
    size = cell[4] if len(cell) > 4 and isinstance(cell[4], str) else f"n{scale}"
    return f"{task}/{source}" if source == ZEROSHOT else f"{task}/{source}/{size}/seed{seed}"


# ----------------------------------------------------------------------------- reading cells


def read_metrics(metric_files: Sequence[str | Path]) -> list[dict]:
    metrics = []
    for path in metric_files:
        m = json.loads(Path(path).read_text())
        missing = [c for c in (*KEY, "top1", "mean_per_class") if m.get(c) is None]
        if missing:
            raise ValueError(f"{path}: no value for {', '.join(missing)}")
        metrics.append(m)
    return metrics


def read_predictions(path: str | Path, evaluation: str = "classifier", split: str = "test") -> pd.DataFrame:
    """One evaluation's predictions on one split, ordered by image key."""
    table = pq.read_table(path, columns=["evaluation", "split", "key", "label", "pred", "ranked"]).to_pandas()
    table = table[(table["evaluation"] == evaluation) & (table["split"] == split)]
    if table["key"].duplicated().any():
        raise ValueError(f"{path}: an image is listed twice in the {split} predictions")
    return table.sort_values("key", kind="stable").reset_index(drop=True)


class Predictions:
    """The test-split (or ``split``: an extra evaluation set's) correctness of every cell, aligned on one
    image order per task."""

    def __init__(self, files: dict[tuple, str | Path], n_classes: dict[str, int], split: str = "test"):
        self.split = split
        self._resamples: dict[tuple, ImageResamples] = {}
        self.n_classes = dict(n_classes)
        self.labels: dict[str, np.ndarray] = {}
        self.keys: dict[str, np.ndarray] = {}
        self.correct: dict[tuple, np.ndarray] = {}
        for cell, path in files.items():
            table = read_predictions(path, split=split)
            task = cell[0]
            if task not in self.n_classes:
                raise ValueError(f"{path}: no class count for task {task!r}")
            if task not in self.keys:
                self.keys[task], self.labels[task] = table["key"].to_numpy(), table["label"].to_numpy()
            elif not np.array_equal(table["key"].to_numpy(), self.keys[task]):
                raise ValueError(f"{path}: its test images differ from those of the task's other cells; "
                                 "rerun the cells of this task (snakemake -R finetune zeroshot)")
            if not len(table):
                raise ValueError(f"{path}: no {split}-split predictions")
            self.correct[tuple(cell)] = table["pred"].to_numpy() == self.labels[task]

    def matrix(self, task: str, source: str, scale: int, seeds: Sequence[int]) -> np.ndarray:
        """Correctness, seeds x test images."""
        return np.stack([self.correct[(task, source, scale, seed)] for seed in seeds])

    def resamples(self, task: str, bootstrap: BootstrapConfig) -> ImageResamples:
        """The bootstrap resamples of the task's images on this split, drawn once and shared by every interval
        on them (``synret.stats.ImageResamples``)."""
        if (task, bootstrap) not in self._resamples:
            self._resamples[(task, bootstrap)] = ImageResamples(self.labels[task], self.n_classes[task], bootstrap,
                                                                "images", task, self.split)
        return self._resamples[(task, bootstrap)]


def bootstrap_config(settings: dict | None) -> BootstrapConfig:
    return BootstrapConfig(**(settings or {}))


# ----------------------------------------------------------------------------- tables


def collect(metric_files: Sequence[str | Path], expected: Sequence[tuple] | None = None) -> pd.DataFrame:
    """Every cell's metrics in one table, checked against the grid (``expected``) and sorted."""
    metrics = read_metrics(metric_files)
    columns = TABLE_COLUMNS + [c for c in PROBE_COLUMNS if any(m.get(c) is not None for m in metrics)]
    df = pd.DataFrame([{c: m.get(c) for c in columns} for m in metrics], columns=columns)
    if expected is not None:
        check_grid([(*key, m.get("size") or f"n{key[2]}") for key, m in
                    zip(df[KEY].itertuples(index=False, name=None), metrics)], expected)
    for column in ("top1", "mean_per_class"):
        bad = df[~df[column].between(0, 1)]
        if len(bad):
            raise ValueError(f"{column} outside [0, 1] for {bad[KEY].to_dict('records')}")
    df["short"] = (df["source"] != ZEROSHOT) & (df["n_train"].fillna(0) < df["scale"])
    df["size"] = [size or ("" if source == ZEROSHOT else f"n{scale}")
                  for size, source, scale in zip(df["size"], df["source"], df["scale"])]
    numeric = [c for c in columns if c not in ("task", "source", "short", "size")]
    df[numeric] = df[numeric].apply(pd.to_numeric)
    # the real source's kall is its k-cell where a task has exactly k images a class: the same point, once
    same = df.duplicated(KEY, keep="first")
    if same.any():
        if not df.loc[same, "size"].str.startswith("k").all():
            raise ValueError(f"two cells of the same (task, source, scale, seed): {df.loc[same, KEY].to_dict('records')}")
        df = df[~same]
    return df.sort_values(KEY, kind="stable").reset_index(drop=True)


def with_cell_intervals(table: pd.DataFrame, preds: Predictions, bootstrap: BootstrapConfig) -> pd.DataFrame:
    """The table with each cell's bootstrap interval over its test images (and the test-set size)."""
    stats = [cell_interval(preds.correct[cell], preds.labels[cell[0]], preds.n_classes[cell[0]], bootstrap, *cell,
                           resamples=preds.resamples(cell[0], bootstrap))
             for cell in table[KEY].itertuples(index=False, name=None)]
    out = table.copy()
    for column in ("top1_lo", "top1_hi", "mean_per_class_lo", "mean_per_class_hi"):
        out[column] = [s[column] for s in stats]
    out["n_test"] = [len(preds.labels[task]) for task in out["task"]]
    return out


def summarize(table: pd.DataFrame, preds: Predictions, bootstrap: BootstrapConfig) -> pd.DataFrame:
    """One row per (task, source, scale): the mean over seeds with its seeds-and-images interval."""
    rows = []
    for (task, source, scale), group in table.groupby(["task", "source", "scale"], sort=True):
        seeds = sorted(group["seed"])
        correct = preds.matrix(task, source, scale, seeds)
        stats = seed_image_interval(correct, preds.labels[task], preds.n_classes[task], bootstrap, task, source, scale,
                                    resamples=preds.resamples(task, bootstrap))
        rows.append({
            "task": task, "source": source, "scale": scale, "seeds": len(seeds),
            "n_train": float(group["n_train"].mean()), "short": bool(group["short"].any()),
            **stats, "top1_seed_sd": float(group["top1"].std(ddof=1)) if len(seeds) > 1 else np.nan,
            "n_test": correct.shape[1],
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def compare(table: pd.DataFrame, preds: Predictions, sources: Sequence[str], bootstrap: BootstrapConfig) -> pd.DataFrame:
    """Paired differences on the same test images: for each task and scale, every source minus every
    source before it in ``sources`` and minus zero-shot, per seed and across seeds (seed ``all``)."""
    rows = []
    pairs = [(b, a) for i, a in enumerate(sources) for b in sources[i + 1:]] + [(s, ZEROSHOT) for s in sources]
    cells = table[table["source"] != ZEROSHOT]
    for (task, scale), group in cells.groupby(["task", "scale"], sort=True):
        seeds_of = {s: sorted(group.loc[group["source"] == s, "seed"]) for s in sources}
        labels, n_classes, images = preds.labels[task], preds.n_classes[task], preds.resamples(task, bootstrap)
        for a, b in pairs:
            if not seeds_of.get(a) or (b != ZEROSHOT and not seeds_of.get(b)):
                continue
            b_scale, b_seeds = (0, [0]) if b == ZEROSHOT else (scale, seeds_of[b])
            base = {"task": task, "scale": scale, "a": a, "b": b, "n_test": len(labels)}
            for seed in seeds_of[a]:
                b_seed = 0 if b == ZEROSHOT else seed
                if b_seed not in b_seeds:
                    continue
                stats = paired_difference(preds.correct[(task, a, scale, seed)], preds.correct[(task, b, b_scale, b_seed)],
                                          labels, n_classes, bootstrap, task, scale, a, b, seed, resamples=images)
                rows.append({**base, "seed": str(seed), **stats})
            across = seed_image_interval(preds.matrix(task, a, scale, seeds_of[a]), labels, n_classes, bootstrap,
                                         task, scale, a, b, "all", baseline=preds.matrix(task, b, b_scale, b_seeds),
                                         resamples=images)
            rows.append({**base, "seed": "all", **{f"diff_{k}": v for k, v in across.items()}})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def eval_set_tables(table: pd.DataFrame, files: dict[tuple, str | Path], n_classes: dict[str, int],
                    sets: dict[str, Sequence[str]], bootstrap: BootstrapConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Each extra evaluation set's columns for ``all.csv`` and ``summary.csv``, and its own summary table.

    ``files``: every cell's predictions file; ``sets``: each task's set names. Returns (the per-cell table with
    ``top1_<set>``, its interval, ``mean_per_class_<set>``, its interval and ``n_<set>`` added, the summary's
    extra columns keyed by (task, source, scale), ``{set: summary table of the cells on it}`` in
    ``SUMMARY_COLUMNS``, for the figures)."""
    out, extra, summaries = table.copy(), [], {}
    for name in sorted({n for names in sets.values() for n in names}):
        tasks = sorted(t for t, names in sets.items() if name in names)
        preds = Predictions({c: p for c, p in files.items() if c[0] in tasks}, n_classes, split=name)
        cells = table[table["task"].isin(tasks)].copy()
        stats = {cell: cell_interval(preds.correct[cell], preds.labels[cell[0]], preds.n_classes[cell[0]], bootstrap,
                                     *cell, name, resamples=preds.resamples(cell[0], bootstrap))
                 for cell in cells[KEY].itertuples(index=False, name=None)}
        columns = [f"{m}{suffix}" for m in ("top1", "mean_per_class") for suffix in ("", "_lo", "_hi")]
        for column in columns:
            cells[column] = [stats[c][column] for c in cells[KEY].itertuples(index=False, name=None)]
        cells["n_test"] = [len(preds.labels[t]) for t in cells["task"]]
        renamed = {c: f"{c[:-3]}_{name}{c[-3:]}" if c.endswith(("_lo", "_hi")) else f"{c}_{name}" for c in columns}
        renamed["n_test"] = f"n_{name}"
        out = out.merge(cells[KEY + list(renamed)].rename(columns=renamed), on=KEY, how="left")
        summary = summarize(cells, preds, bootstrap)
        summaries[name] = summary
        keep = ["top1", "top1_lo", "top1_hi", "mean_per_class", "mean_per_class_lo", "mean_per_class_hi", "n_test"]
        extra.append(summary[["task", "source", "scale"] + keep].rename(
            columns={c: renamed.get(c, c) for c in keep}).set_index(["task", "source", "scale"]))
    extra_columns = pd.concat(extra, axis=1) if extra else pd.DataFrame()
    return out, extra_columns, summaries


def with_extra_columns(summary: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """The summary table with the evaluation sets' columns (``eval_set_tables``) joined on its points."""
    if not len(extra.columns):
        return summary
    return summary.join(extra, on=["task", "source", "scale"])


def source_table(summaries: dict[tuple[str, str], str | Path], table: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, source) from the curation summaries: candidates, kept, the shortfall at the
    grid's largest scale, dropped by reason, label fidelity (the share of images the task's zero-shot
    CLIP assigns to their label, of all candidates and of the kept ones) next to that CLIP's own test
    accuracy, and the leakage figures where the pool names its planted copies of evaluation images
    (known copies that reached the dedup, the share it removed, and any kept)."""
    zeroshot = table[table["source"] == ZEROSHOT].set_index("task")["top1"]
    largest = table[table["source"] != ZEROSHOT].groupby(["task", "source"])["scale"].max()
    rows = []
    for (task, source), path in summaries.items():
        summary = json.loads(Path(path).read_text())
        scale = largest.get((task, source))
        rows.append({
            "task": task, "source": source, "candidates": summary["candidates"], "kept": summary["kept"],
            "largest_scale": None if scale is None else int(scale),
            "shortfall": None if scale is None else max(0, int(scale) - summary["kept"]),
            "planted_copies": summary.get("planted_copies", 0), "planted_copy_recall": summary.get("planted_copy_recall"),
            "planted_copies_kept": summary.get("planted_copies_kept", 0),
            "label_fidelity": summary.get("label_fidelity"), "label_fidelity_kept": summary.get("label_fidelity_kept"),
            "zeroshot_test_top1": zeroshot.get(task), "mean_clip_score_kept": summary.get("mean_clip_score_kept"),
            **{f"dropped_{reason}": n for reason, n in sorted(summary.get("dropped", {}).items())},
        })
    df = pd.DataFrame(rows)
    dropped = sorted(c for c in df.columns if c.startswith("dropped_"))
    df[dropped] = df[dropped].fillna(0).astype(int)
    return df[SOURCE_COLUMNS + dropped].sort_values(["task", "source"], kind="stable").reset_index(drop=True)


def exchange_table(table: pd.DataFrame, preds: Predictions, real: Sequence[str], bootstrap: BootstrapConfig) -> pd.DataFrame:
    """Each point of the grid (task, source, scale, across seeds; and zero-shot) as the number of the task's
    own training images per class that give the same top-1, read off the real source's curve with its
    interval (``synret.stats.equivalent_real``); ``real_images_per_image``: those real images over the
    images the point trained on (what one of its images is worth in real ones). ``inf`` / ``-inf``: beyond
    the real curve's best point / below its first."""
    rows = []
    for task in sorted(table["task"].unique()):
        cells = table[table["task"] == task]
        n_classes = preds.n_classes[task]
        for name in real:
            own = cells[cells["source"] == name]
            if own["scale"].nunique() < 2:
                continue
            curve = []
            for scale, group in own.groupby("scale", sort=True):
                seeds = sorted(group["seed"])
                curve.append((float(group["n_train"].mean()) / n_classes, preds.matrix(task, name, scale, seeds)))
            others = cells[~cells["source"].isin(real)]
            for (source, scale), group in others.groupby(["source", "scale"], sort=True):
                seeds = sorted(group["seed"])
                stats = equivalent_real(preds.matrix(task, source, scale, seeds), curve, bootstrap, task, source, scale,
                                        name, labels=preds.labels[task], resamples=preds.resamples(task, bootstrap))
                n_train = float(group["n_train"].mean())
                rows.append({
                    "task": task, "source": source, "scale": scale, "seeds": len(seeds), "n_train": n_train,
                    "top1": float(group["top1"].mean()), "real_per_class": stats["per_class"],
                    "real_per_class_lo": stats["per_class_lo"], "real_per_class_hi": stats["per_class_hi"],
                    "real_images": stats["per_class"] * n_classes,
                    "real_images_per_image": stats["per_class"] * n_classes / n_train if n_train else np.nan,
                    "real_curve_min": stats["curve_min"], "real_curve_max": stats["curve_max"],
                })
    return pd.DataFrame(rows, columns=EXCHANGE_COLUMNS)


def rounded(df: pd.DataFrame) -> pd.DataFrame:
    """The table as written: accuracies to 4 decimals, p-values to 4 significant digits, seconds to 0.1."""
    out = df.copy()
    for column in out.columns:
        if column == "mcnemar_p":
            out[column] = [float(f"{p:.4g}") if pd.notna(p) else p for p in out[column]]
        elif column in ("wall_seconds", "n_train"):
            values = out[column].astype(float)
            integral = values.dropna().eq(values.dropna().round()).all()
            out[column] = values.round().astype("Int64") if column == "n_train" and integral else values.round(1)
        elif pd.api.types.is_float_dtype(out[column]) and column not in ("scale",):
            out[column] = out[column].round(ACCURACY_DECIMALS)
    counts = [c for c in out.columns if c.startswith("n_") and c not in ("n_train", "n_test")]  # n_<eval set>
    for column in ("n_test", "steps", "a_only", "b_only", "largest_scale", "shortfall", "planted_copies",
                   "planted_copies_kept", *counts):
        if column in out:
            out[column] = out[column].astype("Int64")
    return out


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write the rounded table atomically (a killed job never leaves half a table under the name)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        rounded(df).to_csv(tmp, index=False)
        tmp.replace(path)
    finally:  # a failed write (a full disk) leaves no partial file taking the space
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- figures


def _plot_axes(ax, summary: pd.DataFrame, task: str, metric: str, styles: dict | None = None) -> None:
    import matplotlib.ticker

    rows = summary[summary["task"] == task]
    cells = rows[rows["source"] != ZEROSHOT]
    lows, highs = [], []
    groups = list(cells.groupby("source", sort=True))
    for i, (source, group) in enumerate(groups):
        group = group.sort_values("scale")
        style = (styles or {}).get(source) or source_style(source)
        dodge = 1 + 0.04 * (i - (len(groups) - 1) / 2)  # side by side on the log axis, so no interval hides another
        x, y = group["n_train"].to_numpy(float) * dodge, group[metric].to_numpy(float)
        lo, hi = group[f"{metric}_lo"].to_numpy(float), group[f"{metric}_hi"].to_numpy(float)
        line = ax.errorbar(x, y, yerr=[y - lo, hi - y], marker=style.get("marker", "o"), color=style.get("color"),
                           capsize=3, lw=1.5, label=style["label"])
        color = line[0].get_color()
        short = group["short"].to_numpy(bool)
        if short.any():  # fewer images than the scale asked for: hollow markers at the actual count
            ax.plot(x[short], y[short], ls="none", marker=style.get("marker", "o"), mfc="white", mec=color, mew=1.5,
                    ms=7, zorder=5)
        lows.append(lo), highs.append(hi)
    zero = rows[rows["source"] == ZEROSHOT]
    if len(zero):
        z = zero.iloc[0]
        ax.axhline(z[metric], color="gray", ls="--", lw=1.2, label="zero-shot")
        ax.axhspan(z[f"{metric}_lo"], z[f"{metric}_hi"], color="gray", alpha=0.15, lw=0)
        lows.append([z[f"{metric}_lo"]]), highs.append([z[f"{metric}_hi"]])
    if lows:  # every line and interval in view
        lo, hi = float(np.nanmin(np.concatenate(lows))), float(np.nanmax(np.concatenate(highs)))
        pad = max(0.01, 0.08 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax.set_xscale("log")
    if len(cells):  # label the grid's own scales, not powers of ten
        scales = sorted(cells["scale"].unique())
        ax.set_xticks(scales, [f"{s:,}" for s in scales])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        x = cells["n_train"].to_numpy(float)
        ax.set_xlim(min(x.min(), min(scales)) / 1.3, max(x.max(), max(scales)) * 1.3)
    ax.set_xlabel("training images")
    ax.set_ylabel("top-1 accuracy" if metric == "top1" else "mean per-class accuracy")
    ax.set_title(task)
    ax.grid(True, which="both", alpha=0.3)


def note_needed(summary: pd.DataFrame, tasks: Sequence[str]) -> bool:
    return _short_note(summary, tasks) is not None


def _short_note(summary: pd.DataFrame, tasks: Sequence[str]) -> str | None:
    short = summary[summary["short"] & summary["task"].isin(tasks)]
    if not len(short):
        return None
    cells = ", ".join(f"{r.task}/{r.source} {r.scale} (had {r.n_train:g})" for r in short.itertuples())
    return f"hollow markers: fewer images than the scale: {cells}"


def plot_task(summary: pd.DataFrame, task: str, path: str | Path, metric: str = "top1", title: str | None = None,
              styles: dict | None = None) -> None:
    """Accuracy against the number of training images: a line per source (mean over seeds with its
    95% interval), zero-shot as a reference band. ``title``: other than the task's name (an evaluation
    set's summary: ``eval_set_tables``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    _plot_axes(ax, summary, task, metric, styles)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    note = _short_note(summary, [task])
    if note:
        fig.text(0.01, 0.005, note, fontsize=6, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_summary(summary: pd.DataFrame, tasks: Sequence[str], path: str | Path, metric: str = "top1",
                 styles: dict | None = None) -> None:
    """All tasks side by side, like the paper's Figure 1, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not tasks:
        raise ValueError("no tasks to plot")
    cols = min(len(tasks), 3)
    rows = int(np.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), dpi=120, squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        _plot_axes(ax, summary, task, metric, styles)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    legend = {}
    for ax in axes.flat:  # one entry per source, whichever panel has it
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    ncol = max(1, min(len(labels), 4))
    legend_rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.025 if note_needed(summary, tasks) else 0))
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    fig.suptitle(f"Accuracy by training-image source (mean of up to {seeds} seed{'s' if seeds != 1 else ''}, 95% intervals)")
    note = _short_note(summary, tasks)
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, va="bottom", wrap=True)
    bottom = (0.03 + 0.065 * legend_rows) / rows + (0.03 if note else 0.0)  # room for the legend's rows
    fig.tight_layout(rect=(0, bottom, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


def plot_paired(paired: pd.DataFrame, tasks: Sequence[str], path: str | Path, a: str, b: str) -> None:
    """``a`` minus ``b`` on the same test images, per task and scale (across seeds, 95% intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = paired[(paired["seed"] == "all") & (paired["a"] == a) & (paired["b"] == b)]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    scales = sorted(rows["scale"].unique())
    width = 0.8 / max(1, len(tasks))
    for i, task in enumerate(tasks):
        r = rows[rows["task"] == task].set_index("scale").reindex(scales)
        x = np.arange(len(scales)) + (i - (len(tasks) - 1) / 2) * width
        y = r["diff_top1"].to_numpy(float)
        ax.errorbar(x, y, yerr=[y - r["diff_top1_lo"].to_numpy(float), r["diff_top1_hi"].to_numpy(float) - y],
                    ls="none", marker="o", capsize=3, label=task)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(scales)), [f"{s:,}" for s in scales])
    ax.set_xlabel("training images (scale)")
    ax.set_ylabel(f"top-1: {a} minus {b}")
    ax.set_title(f"{a} minus {b}, paired on the test images")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_mix(summary: pd.DataFrame, task: str, mixes: dict[str, dict], path: str | Path, metric: str = "top1") -> None:
    """Accuracy against the share of the second source in a mix (``mixes``: cell source -> {ratio, of}), one
    line per total, with the two sources' own cells at the same total as the shares 0 and 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary[summary["task"] == task].set_index(["source", "scale"])
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    lines: dict[tuple, list] = {}
    for name, mix in mixes.items():
        first, second = mix["of"]
        for scale in sorted({s for (src, s) in rows.index if src == name}):
            points = lines.setdefault((first, second, scale), [])
            points.append((mix["ratio"], rows.loc[(name, scale)]))
            for ratio, end in ((0.0, first), (1.0, second)):
                if (end, scale) in rows.index and all(r != ratio for r, _ in points):
                    points.append((ratio, rows.loc[(end, scale)]))
    for (first, second, scale), points in sorted(lines.items(), key=lambda item: item[0][2]):
        points.sort(key=lambda p: p[0])
        x = np.array([r for r, _ in points])
        y = np.array([float(p[metric]) for _, p in points])
        lo = np.array([float(p[f"{metric}_lo"]) for _, p in points])
        hi = np.array([float(p[f"{metric}_hi"]) for _, p in points])
        ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, lw=1.5, label=f"{scale:,} images")
        ax.set_xlabel(f"share of {second} (the rest {first})")
    zero = summary[(summary["task"] == task) & (summary["source"] == ZEROSHOT)]
    if len(zero):
        ax.axhline(float(zero.iloc[0][metric]), color="gray", ls="--", lw=1.2, label="zero-shot")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylabel("top-1 accuracy" if metric == "top1" else "mean per-class accuracy")
    ax.set_title(f"{task}: mixing at a fixed total")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLIP_benchmark results


def clip_benchmark_results(metric_files: Sequence[str | Path], out_dir: str | Path, clip: dict) -> list[Path]:
    """Every cell's test and extra-set accuracies as the JSON files ``clip_benchmark eval`` writes
    (``synret.clip_benchmark.result_json``), one per (cell, evaluated set), flat in ``out_dir`` so that
    ``clip_benchmark build <out_dir>`` reads them into its CSV. A file is named
    ``{task}_{source}[_n{scale}_seed{seed}]_{set}.json``; its ``dataset`` is ``{task}/{set}`` (set: ``test``
    or an extra set's name), ``model`` the CLIP's name and ``pretrained`` its tag (or ``-``) followed by the
    cell (``/zeroshot``, ``/synthetic/n100/seed0``), so that each cell is its own model in the CSV."""
    from .clip_benchmark import result_json, write_result

    out = Path(out_dir)
    if out.exists():
        for old in out.glob("*.json"):
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for m in read_metrics(metric_files):
        cell = (m["task"], m["source"], int(m["scale"]), int(m["seed"]))
        name = _cell_name((*cell, m.get("size") or f"n{cell[2]}"))
        results = {"test": (m.get("evaluation") or {}).get("test") or {
            "top1": m["top1"], "top5": m.get("top5"), "mean_per_class": m["mean_per_class"]}}
        results.update(m.get("eval_sets") or {})
        for split, metrics in results.items():
            path = out / f"{name.replace('/', '_')}_{split}.json"
            write_result(path, result_json(f"{cell[0]}/{split}", clip["model"],
                                           f"{clip.get('pretrained') or '-'}/{name.split('/', 1)[1]}", metrics))
            written.append(path)
    return written
