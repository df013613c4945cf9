"""Uncertainty of the grid's accuracies, from the per-image predictions every cell stores.

Three questions, three tools:

- **One cell** (one seed, one test set): a percentile bootstrap over test images, for top-1 and mean
  per-class accuracy (the interval ``scipy.stats.bootstrap`` gives with ``method="percentile"``, to
  within resampling noise: tests/test_stats.py compares them).
- **A (task, source, scale) point across seeds**: the mean over seeds, with an interval whose
  variance has two parts, the test images' (a bootstrap over images of the seed-averaged
  correctness) and the seeds' (between-seed variance / number of seeds), and a Student-t quantile
  with Welch-Satterthwaite degrees of freedom. Why: all seeds are scored on one finite test set, so
  its sampling error does not shrink with more seeds (a t-interval over seed means misses it), and a
  bootstrap over images alone misses the seed-to-seed spread of training (simulated in
  tests/test_stats.py: at 90% nominal it covered 63% with a realistic seed spread). With three
  seeds the seeds' part is itself uncertain: the t quantile widens the interval when it dominates
  and falls back to the normal quantile when the test set does. scipy has no estimator for this
  two-factor design, so the combination is written here, from scipy's and numpy's parts.
- **Two sources at one scale**: the *paired* difference on the same test images. Per seed, a
  bootstrap of the per-image differences and an exact McNemar test (a two-sided binomial test on the
  discordant pairs, ``scipy.stats.binomtest``); across seeds, the same two-part interval with the
  image part resampled jointly for both sides (the pairing) and each side's seeds counted on their
  own (seed *s* of one source shares nothing with seed *s* of another but the number).

Bootstrap intervals are two-sided percentile intervals (95% unless configured). Percentile rather
than BCa: the accuracies here sit away from 0 and 1 on hundreds to thousands of images, where the two
agree within resampling noise, and BCa fails on degenerate data (a cell right on every image).
Resampling is seeded from the name of what is resampled, so the tables are identical run to run. What is
resampled is a test set's images: ``ImageResamples`` draws a test set's resamples once (as multinomial image
counts) and every cell, point, comparison and exchange rate on that test set uses them, so the intervals
in one table share their resamples (common random numbers) and a grid of hundreds of cells costs a few
matrix products per cell instead of hundreds of fresh resamplings.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class BootstrapConfig:
    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self):
        if self.resamples < 100:
            raise ValueError(f"aggregate.bootstrap.resamples must be at least 100, got {self.resamples}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"aggregate.bootstrap.confidence must be in [0.5, 1), got {self.confidence}")

    def rng(self, *names: object) -> np.random.Generator:
        """A generator seeded from the config's seed and the name of what is resampled."""
        key = zlib.crc32("/".join(map(str, names)).encode())
        return np.random.default_rng([self.seed, key])


# ----------------------------------------------------------------------------- the statistics


def class_means(values: np.ndarray, labels: np.ndarray, n_classes: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-class weighted means of ``values`` along the last axis: shape ``values.shape[:-1] + (n_classes,)``.

    ``values`` is (..., N), ``labels`` (N,) or broadcastable to ``values``, ``weights`` like ``values``
    (image multiplicities of a bootstrap resample; None: all 1). A class without weight is NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    batch = values.shape[:-1]
    flat_values = values.reshape(-1, values.shape[-1])
    flat_labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), values.shape).reshape(flat_values.shape)
    w = np.ones_like(flat_values) if weights is None else np.broadcast_to(weights, values.shape).reshape(flat_values.shape)
    rows = len(flat_values)
    bins = (np.arange(rows)[:, None] * n_classes + flat_labels).ravel()
    num = np.bincount(bins, weights=(w * flat_values).ravel(), minlength=rows * n_classes)
    den = np.bincount(bins, weights=w.ravel(), minlength=rows * n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = num / den
    means[den == 0] = np.nan
    return means.reshape(batch + (n_classes,))


def mean_per_class(correct: np.ndarray, labels: np.ndarray, n_classes: int | None = None, axis: int = -1) -> np.ndarray:
    """Mean over the classes present of each class's recall (along ``axis``; vectorised over the rest)."""
    correct, labels = np.moveaxis(np.asarray(correct, float), axis, -1), np.moveaxis(np.asarray(labels), axis, -1)
    n_classes = n_classes or int(labels.max()) + 1
    return _nanmean(class_means(correct, labels, n_classes))


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN (a class that a resample happens to leave out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=-1)


def _percentile(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1 - confidence
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- a test set's resamples


DENSE_BYTES = 2**28  # a test set's resamples up to this size are kept as float64 (the demo's: 16 MB)


class ImageResamples:
    """Bootstrap resamples of one test set's images, drawn once: ``cfg.resamples`` rows of multinomial
    image counts (each row a resample of the N images with replacement), seeded from ``name``.

    Every statistic on the test set reads its draws from these rows: ``top1(v)`` and ``mean_per_class(v)``
    give, for a per-image vector ``v`` (correctness, or a difference or seed average of it), the statistic in
    each resample. Counts are kept with the images in class order (a class is a run of columns) and used
    ``chunk`` rows at a time: as float64 up to ``DENSE_BYTES``, else as uint16, so a 50,000-image test set at
    2,000 resamples holds 200 MB and computes in ~100 MB pieces. A class a resample leaves out has no per-class mean there and is left out of its mean.
    """

    def __init__(self, labels: np.ndarray, n_classes: int, cfg: BootstrapConfig, *name: object, chunk: int = 250):
        labels = np.asarray(labels, dtype=np.int64)
        self.n_images, self.n_classes, self.resamples = len(labels), n_classes, cfg.resamples
        self.labels = labels
        self.order = np.argsort(labels, kind="stable")  # images in class order
        present = np.unique(labels)
        self.starts = np.searchsorted(labels[self.order], present)  # where each present class's run begins
        rng, n = cfg.rng(*name), self.n_images
        # counts as float64 where they fit in DENSE_BYTES (every product then reads them as they are), else uint16
        kind = np.float64 if 8 * n * cfg.resamples <= DENSE_BYTES else np.uint16
        chunks = [rng.multinomial(n, np.full(n, 1 / n), size=min(chunk, cfg.resamples - start))[:, self.order]
                  .astype(kind) for start in range(0, cfg.resamples, chunk)] if n else []
        self.chunks = chunks
        # images of each class in each resample: the per-class means' denominators
        self.class_counts = [np.add.reduceat(c.astype(np.float64), self.starts, axis=1) for c in chunks]

    def _check(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.n_images,):
            raise ValueError(f"resampled statistic: {values.shape[0] if values.ndim else 0} values for a test set "
                             f"of {self.n_images} images")
        return values[self.order]

    def top1(self, values: np.ndarray) -> np.ndarray:
        """The mean of ``values`` over the images of each resample: shape (resamples,)."""
        v = self._check(values)
        return np.concatenate([c @ v for c in self.chunks]) / self.n_images

    def mean_per_class(self, values: np.ndarray) -> np.ndarray:
        """The mean over the classes present of each class's mean of ``values``, in each resample."""
        v = self._check(values)
        out = []
        for counts, per_class in zip(self.chunks, self.class_counts):
            sums = np.add.reduceat(counts * v, self.starts, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(per_class > 0, sums / per_class, np.nan)
            out.append(_nanmean(means))
        return np.concatenate(out)

    def interval(self, values: np.ndarray, cfg: BootstrapConfig) -> dict:
        """Percentile intervals of top-1 and mean per-class accuracy of ``values``: ``{metric}_lo`` / ``_hi``."""
        out = {}
        for metric in ("top1", "mean_per_class"):
            if self.n_images < 2:
                point = float(np.mean(values)) if metric == "top1" else float(
                    mean_per_class(values, self.labels, self.n_classes))
                out[f"{metric}_lo"] = out[f"{metric}_hi"] = point
                continue
            out[f"{metric}_lo"], out[f"{metric}_hi"] = _percentile(getattr(self, metric)(values), cfg.confidence)
        return out


def _resamples(resamples: ImageResamples | None, labels: np.ndarray, n_classes: int, cfg: BootstrapConfig,
               *name: object) -> ImageResamples:
    """The test set's shared resamples where given (they must match the labels), else ones of its own."""
    if resamples is None:
        return ImageResamples(labels, n_classes, cfg, *name)
    if resamples.n_images != len(labels) or not np.array_equal(resamples.labels, labels):
        raise ValueError("resamples drawn for another test set: its images or labels differ")
    return resamples


# ----------------------------------------------------------------------------- one cell, one seed


def cell_interval(correct: np.ndarray, labels: np.ndarray, n_classes: int, cfg: BootstrapConfig, *name: object,
                  resamples: ImageResamples | None = None) -> dict:
    """Top-1 and mean per-class accuracy of one evaluated cell with percentile bootstrap intervals over its
    test images (``resamples``: the test set's shared ones; None: drawn from ``name``)."""
    correct, labels = np.asarray(correct, dtype=float), np.asarray(labels, dtype=np.int64)
    out = {"top1": float(correct.mean()), "mean_per_class": float(mean_per_class(correct, labels, n_classes))}
    return {**out, **_resamples(resamples, labels, n_classes, cfg, *name).interval(correct, cfg)}


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, labels: np.ndarray, n_classes: int,
                      cfg: BootstrapConfig, *name: object, resamples: ImageResamples | None = None) -> dict:
    """A minus B on the same test images (one seed each): differences, intervals, exact McNemar p.

    ``a_only`` counts images A gets right and B wrong, ``b_only`` the reverse; McNemar's exact test
    is the two-sided binomial test of ``a_only`` successes in ``a_only + b_only`` trials at 1/2. The
    intervals resample the images once for both sides (the pairing): in every resample, A's statistic
    minus B's (a class a resample leaves out is left out of both).
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    if a.shape != b.shape or a.shape != labels.shape:
        raise ValueError(f"paired predictions differ in length: {a.shape}, {b.shape}, labels {labels.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    out = {
        "diff_top1": float(a.mean() - b.mean()),
        "diff_mean_per_class": float(mean_per_class(a, labels, n_classes) - mean_per_class(b, labels, n_classes)),
        "a_only": a_only,
        "b_only": b_only,
        "mcnemar_p": mcnemar_exact(a_only, b_only),
    }
    # per resample and class, mean(a) - mean(b) = mean(a - b) over the same images
    interval = _resamples(resamples, labels, n_classes, cfg, *name).interval(a.astype(float) - b.astype(float), cfg)
    return {**out, **{f"diff_{k}": v for k, v in interval.items()}}


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the two discordant counts (1.0 when there are none)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    return float(scipy_stats.binomtest(a_only, n, 0.5, alternative="two-sided").pvalue)


# ----------------------------------------------------------------------------- across seeds


def _seed_statistics(side: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Each seed's (row's) top-1 and mean per-class accuracy."""
    return {"top1": side.mean(axis=1), "mean_per_class": _nanmean(class_means(side, labels, n_classes))}


def seed_image_interval(correct: np.ndarray, labels: np.ndarray, n_classes: int, cfg: BootstrapConfig, *name: object,
                        baseline: np.ndarray | None = None, resamples: ImageResamples | None = None) -> dict:
    """Mean over seeds (rows of ``correct``, seeds x images) with an interval for both sources of error.

    The variance of the seed mean is the sum of two parts: the test images' (a bootstrap over
    images of the seed-averaged correctness) and the seeds' (the between-seed variance of the
    accuracy over the number of seeds). The interval is the mean +- a Student-t quantile times the
    standard error, with Welch-Satterthwaite degrees of freedom: near the normal quantile when the
    test set dominates, near t with S - 1 degrees of freedom when a few seeds do.

    With ``baseline`` (its own seeds x the same images), the statistic is the difference
    ``correct - baseline``: the image part is resampled jointly (paired), each side brings its own
    seed part. Returns point estimates and ``*_lo`` / ``*_hi`` for top-1 and mean per-class, and the
    degrees of freedom used (``*_df``). ``resamples``: the test set's shared ones (None: drawn from ``name``).
    """
    sides = [np.atleast_2d(np.asarray(correct, dtype=float))]
    if baseline is not None:
        sides.append(np.atleast_2d(np.asarray(baseline, dtype=float)))
    n_images = sides[0].shape[1]
    labels = np.asarray(labels, dtype=np.int64)
    if any(s.shape[1] != n_images for s in sides) or labels.shape != (n_images,):
        raise ValueError(f"seed/image interval: sides cover different images: {[s.shape for s in sides]}, "
                         f"labels {labels.shape}")
    signs = [1.0, -1.0][: len(sides)]
    point = sum(sign * side.mean(axis=0) for sign, side in zip(signs, sides))  # per image
    estimate = {"top1": float(point.mean()), "mean_per_class": float(_nanmean(class_means(point, labels, n_classes)))}

    # the test images' part: a bootstrap over images of the seed-averaged (difference of) correctness
    images = _resamples(resamples, labels, n_classes, cfg, *name)
    draws = {"top1": images.top1(point), "mean_per_class": images.mean_per_class(point)}
    per_seed = [_seed_statistics(side, labels, n_classes) for side in sides]
    alpha = 1 - cfg.confidence
    out = dict(estimate)
    for metric, value in estimate.items():
        image_var = float(np.var(draws[metric], ddof=1))
        # the seeds' part, side by side: between-seed variance / seeds, with S - 1 degrees of freedom
        seed_vars = [(float(np.var(stats[metric], ddof=1)) / len(stats[metric]), len(stats[metric]) - 1)
                     for stats in per_seed if len(stats[metric]) > 1]
        total = image_var + sum(v for v, _ in seed_vars)
        denominator = sum(v * v / df for v, df in seed_vars)
        df = total * total / denominator if denominator > 0 else np.inf
        quantile = scipy_stats.t.ppf(1 - alpha / 2, df) if np.isfinite(df) else scipy_stats.norm.ppf(1 - alpha / 2)
        half = quantile * np.sqrt(total)
        out[f"{metric}_lo"], out[f"{metric}_hi"], out[f"{metric}_df"] = value - half, value + half, float(df)
    return out


# ----------------------------------------------------------------------------- exchange rates


def read_curves(x: np.ndarray, y: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``interpolate_curve`` for many curves at once: row r of ``y`` (curves x points, over the ascending
    ``x``) read at ``values[r]``."""
    y = np.maximum.accumulate(np.atleast_2d(np.asarray(y, dtype=float)), axis=1)
    values = np.asarray(values, dtype=float).reshape(len(y))
    lx = np.log(np.asarray(x, dtype=float))
    i = np.clip((y < values[:, None]).sum(axis=1), 1, len(lx) - 1)  # first point at or above the value
    rows = np.arange(len(y))
    y0, y1 = y[rows, i - 1], y[rows, i]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip(np.where(y1 > y0, (values - y0) / (y1 - y0), 1.0), 0.0, 1.0)  # beyond the ends: set below
    out = np.exp(lx[i - 1] + t * (lx[i] - lx[i - 1]))
    out[values <= y[:, 0]] = np.exp(lx[0])  # at the first point (the first of equal ones)
    out[values < y[:, 0]] = -np.inf
    out[values > y[:, -1]] = np.inf
    return out


def interpolate_curve(x: np.ndarray, y: np.ndarray, value: float) -> float:
    """Where a curve of accuracy ``y`` over training images per class ``x`` (ascending) reaches ``value``:
    linear in log x between the points around it, on the curve made monotone (each point the best so
    far: more real images never count as worse); ``-inf`` below its first point, ``inf`` above its best."""
    return float(read_curves(x, np.asarray(y, dtype=float)[None], np.array([value]))[0])


def equivalent_real(correct: np.ndarray, curve: list[tuple[float, np.ndarray]], cfg: BootstrapConfig,
                    *name: object, labels: np.ndarray | None = None, resamples: ImageResamples | None = None) -> dict:
    """How many real training images per class give the same top-1 as ``correct`` (seeds x test images):
    the real source's curve (``curve``: per-class count, its seeds x the same images) read backwards.

    The interval resamples the test images (one draw for the cell and the whole curve: they share the
    test set; ``resamples``, the test set's shared ones, need ``labels``) and each side's seeds (drawn from
    ``name``), and reads the curve backwards in every draw (percentiles). A value below the curve's first
    point is ``-inf`` (worth fewer real images than the fewest tried), above its best ``inf``; an interval
    end beyond the curve likewise.
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=float))
    curve = sorted(((float(x), np.atleast_2d(np.asarray(c, dtype=float))) for x, c in curve), key=lambda p: p[0])
    if len(curve) < 2:
        raise ValueError("an exchange rate needs the real source at two or more per-class counts")
    xs = np.array([x for x, _ in curve])
    n_images = correct.shape[1]
    point = interpolate_curve(xs, np.array([c.mean() for _, c in curve]), float(correct.mean()))
    labels = np.zeros(n_images, dtype=np.int64) if labels is None else labels  # top-1 needs no classes
    images = _resamples(resamples, labels, int(labels.max(initial=0)) + 1 if resamples is None else resamples.n_classes,
                        cfg, "equivalent_real", *name)
    rng = cfg.rng("equivalent_real", "seeds", *name)

    def accuracy(side: np.ndarray) -> np.ndarray:
        """Top-1 in each draw: the draw's images, and its seeds drawn with replacement from the side's."""
        per_seed = np.stack([images.top1(row) for row in side], axis=1)  # (resamples, seeds)
        chosen = rng.integers(0, len(side), (images.resamples, len(side)))
        return np.take_along_axis(per_seed, chosen, axis=1).mean(axis=1)

    curves = np.stack([accuracy(c) for _, c in curve], axis=1)
    draws = read_curves(xs, curves, accuracy(correct))
    alpha = 1 - cfg.confidence
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return {"per_class": point, "per_class_lo": float(lo), "per_class_hi": float(hi),
            "curve_min": float(xs[0]), "curve_max": float(xs[-1])}
