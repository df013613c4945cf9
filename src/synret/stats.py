"""Uncertainty of the grid's accuracies, from the per-image predictions every cell stores.

Three questions, three tools:

- **One cell** (one seed, one test set): a percentile bootstrap over test images
  (``scipy.stats.bootstrap``), for top-1 and mean per-class accuracy.
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
Resampling is seeded from the name of what is resampled, so the tables are identical run to run.
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


# ----------------------------------------------------------------------------- one cell, one seed


def cell_interval(correct: np.ndarray, labels: np.ndarray, n_classes: int, cfg: BootstrapConfig, *name: object) -> dict:
    """Top-1 and mean per-class accuracy of one evaluated cell with percentile bootstrap intervals."""
    correct, labels = np.asarray(correct, dtype=float), np.asarray(labels, dtype=np.int64)
    out = {"top1": float(correct.mean()), "mean_per_class": float(mean_per_class(correct, labels, n_classes))}
    for metric, statistic in (("top1", lambda c, y, axis=-1: np.mean(c, axis=axis)),
                              ("mean_per_class", lambda c, y, axis=-1: mean_per_class(c, y, n_classes, axis))):
        lo, hi = _scipy_percentile((correct, labels), statistic, cfg, *name, metric)
        out[f"{metric}_lo"], out[f"{metric}_hi"] = lo, hi
    return out


def _scipy_percentile(data: tuple, statistic, cfg: BootstrapConfig, *name: object) -> tuple[float, float]:
    """scipy's paired percentile bootstrap of ``statistic(*data)`` (images are the paired unit)."""
    if len(data[0]) < 2:
        value = float(statistic(*data))
        return value, value
    result = scipy_stats.bootstrap(
        data, statistic, paired=True, vectorized=True, n_resamples=cfg.resamples,
        confidence_level=cfg.confidence, method="percentile", rng=cfg.rng(*name),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, labels: np.ndarray, n_classes: int,
                      cfg: BootstrapConfig, *name: object) -> dict:
    """A minus B on the same test images (one seed each): differences, intervals, exact McNemar p.

    ``a_only`` counts images A gets right and B wrong, ``b_only`` the reverse; McNemar's exact test
    is the two-sided binomial test of ``a_only`` successes in ``a_only + b_only`` trials at 1/2.
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
    fa, fb = a.astype(float), b.astype(float)
    out["diff_top1_lo"], out["diff_top1_hi"] = _scipy_percentile(
        (fa, fb), lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis), cfg, *name, "top1")
    out["diff_mean_per_class_lo"], out["diff_mean_per_class_hi"] = _scipy_percentile(
        (fa, fb, labels),
        lambda x, y, z, axis=-1: mean_per_class(x, z, n_classes, axis) - mean_per_class(y, z, n_classes, axis),
        cfg, *name, "mean_per_class")
    return out


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
                        baseline: np.ndarray | None = None, chunk: int = 250) -> dict:
    """Mean over seeds (rows of ``correct``, seeds x images) with an interval for both sources of error.

    The variance of the seed mean is the sum of two parts: the test images' (a bootstrap over
    images of the seed-averaged correctness) and the seeds' (the between-seed variance of the
    accuracy over the number of seeds). The interval is the mean +- a Student-t quantile times the
    standard error, with Welch-Satterthwaite degrees of freedom: near the normal quantile when the
    test set dominates, near t with S - 1 degrees of freedom when a few seeds do.

    With ``baseline`` (its own seeds x the same images), the statistic is the difference
    ``correct - baseline``: the image part is resampled jointly (paired), each side brings its own
    seed part. Returns point estimates and ``*_lo`` / ``*_hi`` for top-1 and mean per-class, and the
    degrees of freedom used (``*_df``).
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
    rng = cfg.rng(*name)
    draws = {"top1": [], "mean_per_class": []}
    for start in range(0, cfg.resamples, chunk):
        weights = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=min(chunk, cfg.resamples - start))
        draws["top1"].append(weights @ point / n_images)
        draws["mean_per_class"].append(_nanmean(class_means(np.broadcast_to(point, weights.shape), labels, n_classes,
                                                            weights=weights)))
    per_seed = [_seed_statistics(side, labels, n_classes) for side in sides]
    alpha = 1 - cfg.confidence
    out = dict(estimate)
    for metric, value in estimate.items():
        image_var = float(np.var(np.concatenate(draws[metric]), ddof=1))
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


def interpolate_curve(x: np.ndarray, y: np.ndarray, value: float) -> float:
    """Where a curve of accuracy ``y`` over training images per class ``x`` (ascending) reaches ``value``:
    linear in log x between the points around it, on the curve made monotone (each point the best so
    far: more real images never count as worse); ``-inf`` below its first point, ``inf`` above its best."""
    y = np.maximum.accumulate(np.asarray(y, dtype=float))
    lx = np.log(np.asarray(x, dtype=float))
    if value < y[0]:
        return -np.inf
    if value > y[-1]:
        return np.inf
    i = int(np.searchsorted(y, value, side="left"))
    if i == 0 or y[i] == y[i - 1]:
        return float(np.exp(lx[i]))
    t = (value - y[i - 1]) / (y[i] - y[i - 1])
    return float(np.exp(lx[i - 1] + t * (lx[i] - lx[i - 1])))


def equivalent_real(correct: np.ndarray, curve: list[tuple[float, np.ndarray]], cfg: BootstrapConfig,
                    *name: object) -> dict:
    """How many real training images per class give the same top-1 as ``correct`` (seeds x test images):
    the real source's curve (``curve``: per-class count, its seeds x the same images) read backwards.

    The interval resamples the test images (one draw for the cell and the whole curve: they share the
    test set) and each side's seeds, and reads the curve backwards in every draw (percentiles). A value
    below the curve's first point is ``-inf`` (worth fewer real images than the fewest tried), above its
    best ``inf``; an interval end beyond the curve likewise.
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=float))
    curve = sorted(((float(x), np.atleast_2d(np.asarray(c, dtype=float))) for x, c in curve), key=lambda p: p[0])
    if len(curve) < 2:
        raise ValueError("an exchange rate needs the real source at two or more per-class counts")
    xs = np.array([x for x, _ in curve])
    n_images = correct.shape[1]
    point = interpolate_curve(xs, np.array([c.mean() for _, c in curve]), float(correct.mean()))
    rng = cfg.rng("equivalent_real", *name)
    draws = []
    for _ in range(cfg.resamples):
        weights = rng.multinomial(n_images, np.full(n_images, 1 / n_images)) / n_images

        def accuracy(m: np.ndarray) -> float:
            rows = m[rng.integers(0, len(m), len(m))]
            return float(rows.mean(axis=0) @ weights)

        draws.append(interpolate_curve(xs, np.array([accuracy(c) for _, c in curve]), accuracy(correct)))
    alpha = 1 - cfg.confidence
    lo, hi = np.quantile(np.array(draws), [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return {"per_class": point, "per_class_lo": float(lo), "per_class_hi": float(hi),
            "curve_min": float(xs[0]), "curve_max": float(xs[-1])}
