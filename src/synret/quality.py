"""What a curated training set is like, measured on the images themselves: the data-quality panel.

One record per (task, source), computed once per curated set on the images the cells train on (the
kept ones) and, for reference, on the task's own training images:

- label fidelity: the share of kept images that a reference classifier assigns to their label. The
  task's zero-shot CLIP (its templates) always; on the demo world also the world's ground truth, which
  the pool knows for every pool image (``true_<factor>`` columns; a generated image has none);
- diversity: the mean pairwise cosine similarity of the images of a class (1 = all alike) and the Vendi
  score (Friedman & Dieng, 2023: the exponential of the entropy of the eigenvalues of the similarity
  matrix over n, the effective number of distinct images; 1 = all alike, n = all orthogonal) of up to
  ``per_class`` images a class, averaged over classes;
- distance to the test distribution: the Fréchet distance between Gaussians fitted to the CLIP
  embeddings of the kept images and of the test images (FID's formula on CLIP features);
- the CLIP-score distribution of kept and dropped images, kept / dropped counts by reason, leakage
  removed and shortfall (from the curation summary).

It also picks the sample images the report shows: for a few classes the same for every source, kept
images and dropped ones (with their reason), with their prompt or caption and CLIP score.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
SAMPLE_COLUMNS = ["key", "label", "classname", "text", "clip_score", "kept", "drop_reason", "image"]


def within_class_similarity(emb: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean over classes (with 2+ images) of the mean cosine similarity between two different images of
    the class; rows of ``emb`` are L2-normalised."""
    means = []
    for label in np.unique(labels):
        x = emb[labels == label]
        n = len(x)
        if n < 2:
            continue
        s = x.sum(axis=0)
        means.append(float((s @ s - n) / (n * (n - 1))))  # sum of off-diagonal similarities / pairs
    return float(np.mean(means)) if means else None


def vendi_score(emb: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K / n), K the cosine-similarity matrix of the (normalised) rows.
    K / n = X X^T / n has the non-zero eigenvalues of X^T X / n, which is d x d: cheap for any n."""
    from scipy import linalg

    n = len(emb)
    if n == 0:
        return 0.0
    x = emb.astype(np.float64)
    eig = np.clip(linalg.eigvalsh(x.T @ x / n), 0, None)
    eig = eig[eig > 1e-12]
    eig = eig / eig.sum()
    return float(np.exp(-(eig * np.log(eig)).sum()))


def class_vendi(emb: np.ndarray, labels: np.ndarray, per_class: int, seed: int = 0) -> float | None:
    """Mean over classes of the Vendi score of up to ``per_class`` seeded images of the class (the score
    grows with the number of images, so sources compare at the same count)."""
    rng = np.random.default_rng(seed)
    scores = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        scores.append(vendi_score(emb[idx]))
    return float(np.mean(scores)) if scores else None


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of Gaussians fitted to two sets of rows."""
    from scipy import linalg

    if len(a) < 2 or len(b) < 2:
        return None
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu = a.mean(axis=0) - b.mean(axis=0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb)
    if not np.isfinite(root).all():  # singular product: nudge both (as FID implementations do)
        eps = np.eye(len(ca)) * 1e-6
        root = linalg.sqrtm((ca + eps) @ (cb + eps))
    value = mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.trace(root.real)
    return float(max(value, 0.0))


def quantiles(values: pd.Series) -> dict | None:
    v = values.dropna().to_numpy(dtype=np.float64)
    if not len(v):
        return None
    return {f"q{int(q * 100):02d}": float(np.quantile(v, q)) for q in QUANTILES} | {"mean": float(v.mean()), "n": int(len(v))}


# ----------------------------------------------------------------------------- ground truth


def world_truth(pool_parts: Sequence[str], factors: Sequence[str], url_column: str) -> dict[str, str]:
    """URL -> the class name the world rendered (its factors' true values joined, as the world's datasets
    name classes), read from the demo pool's ``true_<factor>`` columns."""
    columns = [url_column, *(f"true_{f}" for f in factors)]
    truth = {}
    for part in pool_parts:
        t = pq.read_table(part, columns=columns).to_pandas()
        names = t[columns[1]].astype(str)
        for c in columns[2:]:
            names = names + " " + t[c].astype(str)
        truth.update(zip(t[url_column], names))
    return truth


def truth_fidelity(rows: pd.DataFrame, truth: dict[str, str] | None, kind: str) -> float | None:
    """The share of rows whose known true class is their label: pool images by their URL (``origin``); the
    task's own images are labelled by the renderer, so 1; a generated image has no ground truth (None)."""
    if kind == "real":
        return 1.0 if truth is not None and len(rows) else None
    if truth is None or kind not in ("retrieved", "random") or not len(rows):
        return None
    true = rows["origin"].map(truth)
    known = true.notna()
    return float((true[known] == rows.loc[known, "classname"]).mean()) if known.any() else None


# ----------------------------------------------------------------------------- images


def row_images(rows: pd.DataFrame) -> list[bytes | str]:
    """Each row's image, in order: bytes from its webdataset shard, or its file path where it has none."""
    from .shards import read_images

    out: list = [None] * len(rows)
    pos = {k: i for i, k in enumerate(rows.index)}
    in_shards = rows["shard"].notna()
    for shard, group in rows[in_shards].groupby("shard", sort=True):
        images = read_images(shard, group["member"].unique())
        for idx, member in zip(group.index, group["member"]):
            out[pos[idx]] = images[member]
    for idx, member in rows.loc[~in_shards, "member"].items():
        out[pos[idx]] = str(member)
    return out


def image_bytes(item: bytes | str) -> bytes:
    if isinstance(item, bytes):
        return item
    with open(item, "rb") as f:
        return f.read()


# ----------------------------------------------------------------------------- the panel


def data_quality(manifest: pd.DataFrame, summary: dict, kind: str, embed: Callable[[list], np.ndarray],
                 train: pd.DataFrame, test: pd.DataFrame, n_classes: int, per_class: int,
                 zeroshot: np.ndarray, truth: dict[str, str] | None = None, seed: int = 0) -> dict:
    """The panel's record of one curated set. ``embed``: images (bytes or paths) -> L2-normalised CLIP
    embeddings; ``zeroshot``: the task's zero-shot classifier (classes x dim); ``train``/``test``: the
    task's split manifests (``path``, ``label``)."""
    kept = manifest[manifest["kept"].astype(bool)].reset_index(drop=True)
    emb = embed(row_images(kept)) if len(kept) else np.zeros((0, zeroshot.shape[1]), np.float32)
    train_emb = embed(list(train["path"]))
    test_emb = embed(list(test["path"]))
    labels = kept["label"].to_numpy(dtype=np.int64)
    train_labels = train["label"].to_numpy(dtype=np.int64)
    predicted = (emb @ zeroshot.T).argmax(axis=1) if len(emb) else np.zeros(0, np.int64)
    train_predicted = (train_emb @ zeroshot.T).argmax(axis=1)
    dropped = manifest[~manifest["kept"].astype(bool)]
    classes_present = int(len(np.unique(labels)))
    return {
        "kind": kind,
        "kept": int(len(kept)),
        "candidates": int(summary.get("candidates", len(manifest))),
        "classes_with_images": classes_present,
        "classes": int(n_classes),
        "dropped": summary.get("dropped", {}),
        "leakage_removed": summary.get("planted_copies_removed"),
        "leakage_kept": summary.get("planted_copies_kept"),
        # a random source's labels are the zero-shot classifier's own: its fidelity to it says nothing
        "label_fidelity_zeroshot": float((predicted == labels).mean()) if len(kept) and kind != "random" else None,
        "label_fidelity_zeroshot_real": float((train_predicted == train_labels).mean()) if len(train) else None,
        "label_fidelity_truth": truth_fidelity(kept, truth, kind),
        "within_class_similarity": within_class_similarity(emb, labels),
        "within_class_similarity_real": within_class_similarity(train_emb, train_labels),
        "vendi_per_class": class_vendi(emb, labels, per_class, seed),
        "vendi_per_class_real": class_vendi(train_emb, train_labels, per_class, seed),
        "vendi_images_per_class": int(per_class),
        "frechet_to_test": frechet_distance(emb, test_emb),
        "frechet_to_test_real": frechet_distance(train_emb, test_emb),
        "clip_score_kept": quantiles(kept["clip_score"]),
        "clip_score_dropped": quantiles(dropped["clip_score"]),
    }


def sample_classes(n_classes: int, count: int, seed: int = 0) -> list[int]:
    """The classes the report shows for a task: the same seeded few for every source."""
    return sorted(np.random.default_rng(seed).permutation(n_classes)[:count].tolist())


def pick_samples(manifest: pd.DataFrame, classes: Sequence[int], kept_per_class: int, dropped_per_class: int,
                 seed: int = 0) -> pd.DataFrame:
    """For each class shown: up to ``kept_per_class`` kept images and ``dropped_per_class`` dropped ones that
    have an image (a failed download has none), dropped for different reasons where there are several."""
    rng = np.random.default_rng(seed)
    picked = []
    has_image = manifest["drop_reason"].ne("download_failed") & (manifest["shard"].notna() | manifest["member"].notna())
    for label in classes:
        rows = manifest[(manifest["label"] == label) & has_image]
        kept = rows[rows["kept"].astype(bool)]
        picked.append(kept.iloc[np.sort(rng.permutation(len(kept))[:kept_per_class])])
        dropped = rows[~rows["kept"].astype(bool)]
        reasons = sorted(dropped["drop_reason"].dropna().unique())
        chosen = []
        for i in range(min(dropped_per_class, len(dropped))):  # one per reason in turn
            pool = dropped[(dropped["drop_reason"] == reasons[i % len(reasons)]) & ~dropped.index.isin(chosen)]
            pool = pool if len(pool) else dropped[~dropped.index.isin(chosen)]
            chosen.append(pool.index[rng.integers(len(pool))])
        picked.append(dropped.loc[chosen])
    return pd.concat(picked) if picked else manifest.iloc[:0]


def samples_table(samples: pd.DataFrame) -> pa.Table:
    """The picked rows with their image bytes, as the report's sample grid reads them."""
    images = [image_bytes(x) for x in row_images(samples)] if len(samples) else []
    out = samples.reset_index(drop=True).assign(image=images)
    for column in ("text", "clip_score", "drop_reason"):
        if column not in out:
            out[column] = None
    return pa.Table.from_pandas(out[SAMPLE_COLUMNS], preserve_index=False)


# ----------------------------------------------------------------------------- the table and its figure

PANEL = [  # (column, axis label, what is better)
    ("label_fidelity_zeroshot", "label fidelity\n(zero-shot CLIP)", "higher"),
    ("label_fidelity_truth", "label fidelity\n(world ground truth)", "higher"),
    ("within_class_similarity", "within-class\nsimilarity", "lower: more diverse"),
    ("vendi_per_class", "Vendi score\nper class", "higher: more diverse"),
    ("frechet_to_test", "Fréchet distance\nto test (CLIP)", "lower"),
    ("top1", "top-1 accuracy\n(largest scale)", "higher"),
]


QUALITY_COLUMNS = [  # the table's first columns, in reading order; dropped_<reason> and the rest follow
    "task", "source", "kind", "candidates", "kept", "classes", "classes_with_images",
    "label_fidelity_zeroshot", "label_fidelity_zeroshot_real", "label_fidelity_truth",
    "within_class_similarity", "within_class_similarity_real", "vendi_per_class", "vendi_per_class_real",
    "vendi_images_per_class", "frechet_to_test", "frechet_to_test_real",
    "clip_score_kept_median", "clip_score_dropped_median", "leakage_removed", "leakage_kept", "scale", "top1",
]


def quality_rows(records: dict[tuple[str, str], dict], summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, source): the panel's measures, the same measured on the task's own training
    images (``*_real``), kept / dropped counts, and the source's accuracy at the largest scale it reached
    (mean over seeds, from summary.csv) beside it."""
    rows = []
    for (task, name), q in records.items():
        row = {"task": task, "source": name, **{k: v for k, v in q.items()
                                                if k not in ("dropped", "clip_score_kept", "clip_score_dropped")}}
        for reason, count in sorted((q.get("dropped") or {}).items()):
            row[f"dropped_{reason}"] = count
        for which in ("kept", "dropped"):
            stats = q.get(f"clip_score_{which}") or {}
            row[f"clip_score_{which}_median"] = stats.get("q50")
            row[f"clip_score_{which}_q10"] = stats.get("q10")
            row[f"clip_score_{which}_q90"] = stats.get("q90")
        mine = summary[(summary["task"] == task) & (summary["source"] == name)]
        if len(mine):
            best = mine.sort_values("scale").iloc[-1]
            row["scale"], row["top1"] = int(best["scale"]), float(best["top1"])
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("scale", "top1"):
        if column not in table:
            table[column] = np.nan
    first = [c for c in QUALITY_COLUMNS if c in table]
    table = table[first + sorted(c for c in table.columns if c not in first)]
    return table.sort_values(["task", "source"], kind="stable").reset_index(drop=True)


def plot_quality(table: pd.DataFrame, path, styles: dict) -> None:
    """Per task (rows) and measure (columns) one bar per source, the task's own training images as a dashed
    line where measured on them: which property of the data goes with the accuracy gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(len(tasks), len(PANEL), figsize=(2.6 * len(PANEL), 0.5 + 0.32 * len(table) + 1.0 * len(tasks)),
                             squeeze=False)
    for r, task in enumerate(tasks):
        mine = table[table["task"] == task].reset_index(drop=True)
        names = list(mine["source"])
        for c, (column, label, better) in enumerate(PANEL):
            ax = axes[r][c]
            values = pd.to_numeric(mine[column], errors="coerce") if column in mine else pd.Series(np.nan, index=mine.index)
            colors = [styles.get(n, {}).get("color", "#777777") for n in names]
            ax.barh(range(len(names)), values.fillna(0), color=colors)
            for y, v in enumerate(values):
                ax.text(0, y, "  n/a" if pd.isna(v) else f" {v:.3g}", va="center", fontsize=7)
            reference = f"{column}_real"
            if reference in mine and mine[reference].notna().any():
                ax.axvline(float(mine[reference].dropna().iloc[0]), color="black", linestyle="--", linewidth=1)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names if c == 0 else [], fontsize=8)
            ax.invert_yaxis()
            if r == 0:
                ax.set_title(f"{label}\n({better})", fontsize=8)
            if c == 0:
                ax.set_ylabel(task, fontsize=10)
            ax.tick_params(axis="x", labelsize=7)
    fig.text(0.01, 0.005, "dashed: the same measure on the task's own training images", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


REASONS = {"dropped: clip_score": "dropped: low score", "dropped: near_duplicate_of_eval": "dropped: eval copy",
           "dropped: duplicate_image": "dropped: repeat"}  # short, to fit under an image


def plot_samples(task: dict, sources: dict[str, pd.DataFrame], test: pd.DataFrame, classes: Sequence[int],
                 labels: dict[str, str], path, test_per_class: int = 3) -> None:
    """A block of rows per shown class: its test images, then one row per source of the images it kept and
    dropped, each with its prompt or caption, CLIP score and kept / dropped reason (red). Narrow and tall, so
    that a report page, which fits it to its width, keeps the captions readable."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from .shards import decode_image

    per_class = max([test_per_class] + [int((df["label"] == c).sum()) for df in sources.values() for c in classes])
    rows = [(label, name) for label in classes for name in [None, *sources]]
    fig, axes = plt.subplots(len(rows), per_class, figsize=(1.6 * per_class + 1.2, 1.75 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (label, name) in enumerate(rows):
        if name is None:
            picked = test[test["label"] == label].head(test_per_class)
            items = [(Image.open(p).convert("RGB"), "", "test image", None) for p in picked["path"]]
            row_label = f"{task['classnames'][label]}\n\ntest images"
        else:
            picked = sources[name][sources[name]["label"] == label]
            items = [(decode_image(x["image"]), x["text"] or "", "kept" if x["kept"] else f"dropped: {x['drop_reason']}",
                      x["clip_score"]) for x in picked.to_dict("records")]
            row_label = labels.get(name, name)
        for j, (image, text, status, score) in enumerate(items[:per_class]):
            ax = axes[r][j]
            ax.imshow(image, interpolation="nearest")
            lines = textwrap.wrap(textwrap.shorten(str(text), 56, placeholder="…"), 24)[:3]
            score_text = "" if score is None or pd.isna(score) else f"CLIP {score:.2f} · "
            ax.set_title("\n".join(lines + [score_text + REASONS.get(status, status)]), fontsize=6.5,
                         color="black" if status in ("kept", "test image") else "#b00020")
        axes[r][0].text(-0.12, 0.5, row_label, transform=axes[r][0].transAxes, va="center", ha="right",
                        fontsize=9, fontweight="bold" if name is None else "normal")
    fig.tight_layout(rect=(0.08, 0, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
