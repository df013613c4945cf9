"""Tests of synret.stats on constructed predictions with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from synret.stats import (
    BootstrapConfig,
    cell_interval,
    class_means,
    seed_image_interval,
    mcnemar_exact,
    mean_per_class,
    paired_difference,
)

CFG = BootstrapConfig(resamples=2000, confidence=0.95, seed=0)


def _predictions(n=600, classes=6, accuracy=0.4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    return rng.random(n) < accuracy, labels


def test_mean_per_class_known_values():
    correct = np.array([1, 1, 0, 0, 0, 1], float)
    labels = np.array([0, 0, 0, 1, 1, 2])
    # class recalls 2/3, 0, 1
    assert mean_per_class(correct, labels, 3) == pytest.approx((2 / 3 + 0 + 1) / 3)
    # vectorised over a batch axis, and a class absent from a row is left out, not counted as 0
    batch = np.stack([correct, correct])
    assert mean_per_class(batch, np.stack([labels, labels]), 4) == pytest.approx([(2 / 3 + 0 + 1) / 3] * 2)
    weights = np.array([1, 1, 1, 0, 0, 1], float)  # class 1 dropped by a resample
    assert np.nanmean(class_means(correct, labels, 3, weights)) == pytest.approx((2 / 3 + 1) / 2)


def test_cell_interval_contains_estimate_and_matches_binomial_width():
    correct, labels = _predictions(n=1000, accuracy=0.3)
    out = cell_interval(correct, labels, 6, CFG, "task", "source", 10, 0)
    assert out["top1"] == pytest.approx(correct.mean())
    assert out["top1_lo"] < out["top1"] < out["top1_hi"]
    assert out["mean_per_class_lo"] < out["mean_per_class"] < out["mean_per_class_hi"]
    # the normal-approximation binomial interval is +-1.96 * sqrt(p(1-p)/n)
    half = 1.96 * np.sqrt(0.3 * 0.7 / 1000)
    assert (out["top1_hi"] - out["top1_lo"]) / 2 == pytest.approx(half, rel=0.15)
    # the same name gives the same resamples; another name other ones
    assert cell_interval(correct, labels, 6, CFG, "task", "source", 10, 0) == out
    assert cell_interval(correct, labels, 6, CFG, "task", "source", 10, 1)["top1_lo"] != pytest.approx(out["top1_lo"], abs=0)


def test_cell_interval_degenerate_cell():
    labels = np.arange(50) % 5
    out = cell_interval(np.ones(50, bool), labels, 5, CFG, "all right")
    assert (out["top1"], out["top1_lo"], out["top1_hi"]) == (1.0, 1.0, 1.0)


def test_identical_sources_differ_by_zero():
    correct, labels = _predictions()
    out = paired_difference(correct, correct, labels, 6, CFG, "same")
    assert out["diff_top1"] == 0 and out["diff_top1_lo"] == 0 and out["diff_top1_hi"] == 0
    assert out["a_only"] == out["b_only"] == 0 and out["mcnemar_p"] == 1.0
    # across seeds, the same seeds on both sides: centred on zero, and it covers zero
    rng = np.random.default_rng(1)
    seeds = rng.random((3, len(labels))) < 0.4
    across = seed_image_interval(seeds, labels, 6, CFG, "same", baseline=seeds)
    assert across["top1"] == 0
    assert across["top1_lo"] < 0 < across["top1_hi"]
    assert abs(across["top1_lo"] + across["top1_hi"]) < 0.01


def test_one_source_right_wherever_the_other_is_wrong():
    labels = np.arange(40) % 4
    a = np.zeros(40, bool)
    a[:12] = True  # right on 12 images
    b = np.zeros(40, bool)  # wrong everywhere
    out = paired_difference(a, b, labels, 4, CFG, "dominates")
    assert (out["a_only"], out["b_only"]) == (12, 0)
    assert out["mcnemar_p"] == pytest.approx(2 * 0.5 ** 12)  # exact McNemar: two-sided binomial tail
    assert out["diff_top1"] == pytest.approx(12 / 40)
    assert out["diff_top1_lo"] > 0
    # the reverse comparison is the mirror image
    back = paired_difference(b, a, labels, 4, CFG, "dominates")
    assert back["mcnemar_p"] == out["mcnemar_p"] and back["diff_top1"] == -out["diff_top1"]


@pytest.mark.parametrize("a_only, b_only", [(7, 2), (0, 0), (30, 25), (1, 9)])
def test_mcnemar_exact_against_binomial_tail(a_only, b_only):
    n = a_only + b_only
    if n == 0:
        assert mcnemar_exact(0, 0) == 1.0
        return
    k = min(a_only, b_only)
    tail = sum(scipy_stats.binom.pmf(i, n, 0.5) for i in range(k + 1))
    assert mcnemar_exact(a_only, b_only) == pytest.approx(min(1.0, 2 * tail))


def test_one_seed_is_the_image_bootstrap():
    correct, labels = _predictions(n=800, accuracy=0.35, seed=3)
    across = seed_image_interval(correct[None], labels, 6, CFG, "one seed")
    plain = cell_interval(correct, labels, 6, CFG, "one seed")
    assert np.isinf(across["top1_df"])  # no seed part: the normal quantile
    for key in ("top1_lo", "top1_hi", "mean_per_class_lo", "mean_per_class_hi"):
        assert across[key] == pytest.approx(plain[key], abs=0.006)


def test_few_seeds_that_dominate_get_the_t_quantile():
    labels = np.arange(20000) % 4
    rng = np.random.default_rng(2)
    base = rng.random(20000)
    correct = np.stack([base < p for p in (0.3, 0.45, 0.6)])  # 20k images: the seeds' spread dominates
    out = seed_image_interval(correct, labels, 4, CFG, "seeds")
    assert 2 <= out["top1_df"] < 2.2
    per_seed = correct.mean(axis=1)
    t_half = scipy_stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / np.sqrt(3)
    assert (out["top1_hi"] - out["top1_lo"]) / 2 == pytest.approx(t_half, rel=0.05)


def test_seed_image_interval_grows_with_the_seed_spread():
    labels = np.arange(900) % 9
    rng = np.random.default_rng(5)
    base = rng.random(900)
    alike = np.stack([base < 0.5] * 3)
    spread = np.stack([base < p for p in (0.3, 0.5, 0.7)])  # same mean, seeds far apart
    narrow = seed_image_interval(alike, labels, 9, CFG, "x")
    wide = seed_image_interval(spread, labels, 9, CFG, "x")
    assert narrow["top1"] == pytest.approx(wide["top1"], abs=0.02)
    assert (wide["top1_hi"] - wide["top1_lo"]) > 2 * (narrow["top1_hi"] - narrow["top1_lo"])


def test_seed_image_interval_covers_under_seed_and_image_noise():
    """Coverage of the across-seeds interval when both factors vary: near nominal for the two-part
    interval, far under it for an image-only bootstrap (why the seeds get their own part)."""
    rng = np.random.default_rng(11)
    cfg = BootstrapConfig(resamples=400, confidence=0.9, seed=0)
    n_seeds, n_images, truth, trials = 3, 300, 0.5, 150
    covered_both = covered_images = 0
    for trial in range(trials):
        difficulty = rng.normal(0, 1.0, n_images)  # the test set: a fresh draw of images
        shift = rng.normal(0, 0.25, n_seeds)  # the training runs: a fresh draw of seeds
        logits = difficulty[None, :] + shift[:, None]
        correct = rng.random((n_seeds, n_images)) < 1 / (1 + np.exp(-logits))
        labels = np.arange(n_images) % 3
        both = seed_image_interval(correct, labels, 3, cfg, trial)
        covered_both += both["top1_lo"] <= truth <= both["top1_hi"]
        pooled = correct.mean(axis=0)  # seeds averaged, then an image bootstrap
        images = rng.integers(0, n_images, (cfg.resamples, n_images))
        lo, hi = np.quantile(pooled[images].mean(axis=1), [0.05, 0.95])
        covered_images += lo <= truth <= hi
    assert covered_both / trials >= 0.85  # 90% nominal; three seeds leave the seed part itself uncertain
    assert covered_images / trials < 0.75


def test_bootstrap_config_checks():
    with pytest.raises(ValueError, match="aggregate.bootstrap.resamples"):
        BootstrapConfig(resamples=10)
    with pytest.raises(ValueError, match="aggregate.bootstrap.confidence"):
        BootstrapConfig(confidence=1.0)


def test_the_real_curve_read_backwards():
    from synret.stats import interpolate_curve

    x, y = np.array([1.0, 4.0, 16.0]), np.array([0.2, 0.4, 0.6])
    assert interpolate_curve(x, y, 0.4) == pytest.approx(4.0)
    assert interpolate_curve(x, y, 0.3) == pytest.approx(2.0)  # linear in log x: halfway between 1 and 4
    assert interpolate_curve(x, y, 0.1) == -np.inf and interpolate_curve(x, y, 0.7) == np.inf
    # a dip in the curve is read as its best so far: more real images never count as worse
    assert interpolate_curve(x, np.array([0.2, 0.5, 0.45]), 0.48) < 4.0


def test_equivalent_real_images_with_an_interval():
    from synret.stats import equivalent_real

    rng = np.random.default_rng(0)
    n = 2000
    curve = [(k, (rng.random((3, n)) < acc)) for k, acc in ((1, 0.3), (4, 0.5), (16, 0.7))]
    same = curve[1][1].copy()  # a cell exactly as good as 4 real images per class
    out = equivalent_real(same, curve, BootstrapConfig(resamples=300), "t")
    assert out["per_class"] == pytest.approx(4.0, rel=0.02)
    assert out["per_class_lo"] < 4.0 < out["per_class_hi"] and out["per_class_hi"] < 8
    better = rng.random((3, n)) < 0.9
    assert equivalent_real(better, curve, BootstrapConfig(resamples=200), "t")["per_class"] == np.inf
    with pytest.raises(ValueError, match="two or more"):
        equivalent_real(same, curve[:1], BootstrapConfig(resamples=200))


def test_cell_interval_agrees_with_scipys_percentile_bootstrap():
    """The interval from the test set's multinomial resamples is scipy's percentile bootstrap of the same
    statistic, to within the resampling noise of either."""
    correct, labels = _predictions(n=1200, classes=8, accuracy=0.45, seed=4)
    ours = cell_interval(correct, labels, 8, CFG, "scipy")
    for metric, statistic in (("top1", lambda c, y, axis=-1: np.mean(c, axis=axis)),
                              ("mean_per_class", lambda c, y, axis=-1: mean_per_class(c, y, 8, axis))):
        theirs = scipy_stats.bootstrap((correct.astype(float), labels), statistic, paired=True, vectorized=True,
                                       n_resamples=4000, method="percentile", rng=np.random.default_rng(1))
        assert ours[f"{metric}_lo"] == pytest.approx(theirs.confidence_interval.low, abs=0.006)
        assert ours[f"{metric}_hi"] == pytest.approx(theirs.confidence_interval.high, abs=0.006)


def test_a_test_sets_resamples_are_shared_and_checked():
    from synret.stats import ImageResamples

    correct, labels = _predictions(n=500, classes=5, accuracy=0.5, seed=6)
    other = np.random.default_rng(7).random(500) < 0.6
    images = ImageResamples(labels, 5, CFG, "images", "task", "test")
    # a statistic read from shared resamples is the one drawn under the same name
    assert cell_interval(correct, labels, 5, CFG, "images", "task", "test") == cell_interval(
        correct, labels, 5, CFG, "anything", resamples=images)
    # a difference in each resample: A's statistic minus B's on the same images
    diff = paired_difference(correct, other, labels, 5, CFG, resamples=images)
    draws = images.mean_per_class(correct.astype(float)) - images.mean_per_class(other.astype(float))
    assert diff["diff_mean_per_class_lo"] == pytest.approx(np.quantile(draws, 0.025))
    # the weights are multinomial counts: every resample holds the test set's size in images
    assert all((chunk.sum(axis=1) == 500).all() for chunk in images.chunks)
    with pytest.raises(ValueError, match="another test set"):
        cell_interval(correct[:400], labels[:400], 5, CFG, resamples=images)


def _read_one_curve(x, y, value):
    """The curve read backwards one point at a time: the definition ``read_curves`` vectorises."""
    y = np.maximum.accumulate(y)
    if value < y[0]:
        return -np.inf
    if value > y[-1]:
        return np.inf
    i = int(np.searchsorted(y, value, side="left"))
    if i == 0:
        return x[0]
    t = (value - y[i - 1]) / (y[i] - y[i - 1])
    return float(np.exp(np.log(x[i - 1]) + t * (np.log(x[i]) - np.log(x[i - 1]))))


def test_curves_read_backwards_many_at_once():
    from synret.stats import read_curves

    rng = np.random.default_rng(3)
    x = np.array([1.0, 2.0, 4.0, 5.0])
    curves = rng.random((200, 4))
    curves[:20, 1] = curves[:20, 0]  # plateaus
    values = np.concatenate([rng.random(180), curves[180:, 0], curves[190:, 2]])[:200]
    many = read_curves(x, curves, values)
    assert many == pytest.approx([_read_one_curve(x, c, v) for c, v in zip(curves, values)], rel=1e-12)
