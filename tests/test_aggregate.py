"""Tests of synret.aggregate: the results tables, the grid check and the figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synret.aggregate import (
    PAIRED_COLUMNS,
    SUMMARY_COLUMNS,
    TABLE_COLUMNS,
    EXCHANGE_COLUMNS,
    Predictions,
    collect,
    compare,
    expected_cells,
    plot_paired,
    plot_summary,
    plot_task,
    read_predictions,
    rounded,
    source_table,
    summarize,
    with_cell_intervals,
    write_csv,
)
from synret.cells import PREDICTION_SCHEMA
from synret.stats import BootstrapConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOOT = BootstrapConfig(resamples=500)
N_TEST = {"shapes": 200, "colors": 120}
CLASSES = {"shapes": 10, "colors": 4}
GRID = {"tasks": ["shapes", "colors"], "sources": ["synthetic", "retrieved"], "scales": [60, 250], "seeds": [0, 1]}
CELLS = expected_cells(**GRID)


def _metrics(task, source, scale, seed, top1, mpc=None, **extra) -> dict:
    row = {
        "task": task, "source": source, "scale": scale, "seed": seed, "top1": top1,
        "mean_per_class": top1 if mpc is None else mpc, "n_train": scale, "wall_seconds": 1.53,
        "val_top1": top1, "val_mean_per_class": top1, "steps": 10 * scale,
    }
    row.update(extra)
    return row


def _prediction_table(task: str, correct: np.ndarray, extra_split: bool = True) -> pa.Table:
    """Test (and val) predictions of a task's images: right where ``correct``, else the next class."""
    n, k = N_TEST[task], CLASSES[task]
    labels = np.arange(n) % k
    pred = np.where(correct, labels, (labels + 1) % k)
    ranked = [[int(p)] + [int(c) for c in range(k) if c != p][:4] for p in pred]
    parts = [("test", [f"{task}-{i:04d}" for i in range(n)], labels, pred, ranked)]
    if extra_split:  # a val split that aggregate must ignore
        parts.append(("val", [f"v{i}" for i in range(5)], np.zeros(5, int), np.ones(5, int), [[1, 0]] * 5))
    tables = [pa.table({"evaluation": ["classifier"] * len(keys), "split": [split] * len(keys), "key": keys,
                        "label": np.asarray(y, np.int32), "pred": np.asarray(p, np.int32), "ranked": r},
                       schema=PREDICTION_SCHEMA) for split, keys, y, p, r in parts]
    return pa.concat_tables(tables)


def _accuracy(cell) -> float:
    task, source, scale, seed = cell
    base = {"zeroshot": 0.30, "synthetic": 0.25, "retrieved": 0.45}[source]
    return round(base + 0.0002 * scale + 0.02 * seed, 3)


def _correct(cell) -> np.ndarray:
    """Right on the first round(accuracy * n) images of a fixed shuffle of the task's images."""
    n = N_TEST[cell[0]]
    order = np.random.default_rng(len(cell[0])).permutation(n)
    correct = np.zeros(n, bool)
    correct[order[: int(round(_accuracy(cell) * n))]] = True
    return correct


def _write_grid(tmp_path: Path, cells=CELLS, metrics_of=None) -> tuple[list[Path], dict]:
    metric_paths, prediction_paths = [], {}
    for i, cell in enumerate(cells):
        folder = tmp_path / f"cell{i}"
        folder.mkdir(parents=True, exist_ok=True)
        correct = _correct(cell)
        m = (metrics_of or {}).get(cell) or _metrics(*cell, top1=float(correct.mean()),
                                                   n_train=0 if cell[1] == "zeroshot" else cell[2])
        (folder / "metrics.json").write_text(json.dumps({**m, "per_class": [0.1, 0.2]}))  # extra keys are ignored
        pq.write_table(_prediction_table(cell[0], correct), folder / "predictions.parquet")
        metric_paths.append(folder / "metrics.json")
        prediction_paths[cell] = folder / "predictions.parquet"
    return metric_paths, prediction_paths


@pytest.fixture
def grid(tmp_path):
    metric_paths, prediction_paths = _write_grid(tmp_path)
    table = collect(metric_paths, expected=CELLS)
    preds = Predictions(prediction_paths, CLASSES)
    table = with_cell_intervals(table, preds, BOOT)
    return table, preds


# ---------------------------------------------------------------- the per-cell table


def test_collect_columns_order_and_intervals(grid):
    table, _ = grid
    assert list(table.columns) == TABLE_COLUMNS
    keys = list(zip(table["task"], table["source"], table["scale"], table["seed"]))
    assert keys == sorted(CELLS)
    assert len(table) == len(CELLS) == 2 * 2 * 2 * 2 + 2
    assert (table["top1_lo"] <= table["top1"]).all() and (table["top1"] <= table["top1_hi"]).all()
    assert (table["top1_hi"] - table["top1_lo"] > 0.05).all()  # 120-200 test images: several points wide
    assert (table["n_test"] == table["task"].map(N_TEST)).all()
    assert not table["short"].any()


def test_collect_values(grid):
    table, _ = grid
    zero = table[(table["task"] == "shapes") & (table["source"] == "zeroshot")].iloc[0]
    assert zero["scale"] == 0 and zero["top1"] == pytest.approx(0.30) and zero["n_train"] == 0
    cell = table[(table["task"] == "colors") & (table["source"] == "retrieved") & (table["scale"] == 250)
                 & (table["seed"] == 1)].iloc[0]
    assert cell["top1"] == pytest.approx(round(_accuracy(("colors", "retrieved", 250, 1)) * 120) / 120)
    assert cell["steps"] == 2500


def test_grid_check_names_missing_duplicated_and_foreign_cells(tmp_path):
    metric_paths, _ = _write_grid(tmp_path)
    with pytest.raises(ValueError, match=r"missing cells colors/retrieved/n250/seed1\b"):
        collect([p for p, c in zip(metric_paths, CELLS) if c != ("colors", "retrieved", 250, 1)], expected=CELLS)
    with pytest.raises(ValueError, match=r"duplicated cells shapes/synthetic/n60/seed0"):
        collect(metric_paths + [metric_paths[0]], expected=CELLS)
    with pytest.raises(ValueError, match=r"missing cells shapes/zeroshot\b"):
        collect([p for p, c in zip(metric_paths, CELLS) if c != ("shapes", "zeroshot", 0, 0)], expected=CELLS)
    with pytest.raises(ValueError, match=r"outside the configured grid shapes/synthetic/n60/seed0"):
        collect(metric_paths, expected=[c for c in CELLS if c != ("shapes", "synthetic", 60, 0)])


def test_collect_short_cells(tmp_path):
    short_cell = ("colors", "synthetic", 250, 0)
    metrics = {short_cell: _metrics(*short_cell, top1=float(_correct(short_cell).mean()), n_train=180)}
    metric_paths, prediction_paths = _write_grid(tmp_path, metrics_of=metrics)
    table = collect(metric_paths, expected=CELLS)
    assert table.loc[table["short"], ["task", "source", "scale", "seed"]].values.tolist() == [list(short_cell)]
    summary = summarize(with_cell_intervals(table, Predictions(prediction_paths, CLASSES), BOOT),
                        Predictions(prediction_paths, CLASSES), BOOT)
    row = summary[(summary["task"] == "colors") & (summary["source"] == "synthetic") & (summary["scale"] == 250)].iloc[0]
    assert bool(row["short"]) and row["n_train"] == pytest.approx((180 + 250) / 2)


def test_collect_linear_probe_columns_only_when_present(tmp_path):
    cells = [("a", "zeroshot", 0, 0), ("a", "synthetic", 10, 0)]
    paths = []
    for i, (cell, extra) in enumerate(zip(cells, [{"lp_top1": 0.6, "lp_mean_per_class": 0.55}, {}])):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(_metrics(*cell, top1=0.5, **extra)))
        paths.append(path)
    df = collect(paths)
    assert list(df.columns) == TABLE_COLUMNS + ["lp_top1", "lp_mean_per_class"]
    assert df.loc[df["source"] == "zeroshot", "lp_top1"].item() == pytest.approx(0.6)
    assert pd.isna(df.loc[df["source"] == "synthetic", "lp_top1"].item())


@pytest.mark.parametrize("column, value", [("top1", 1.2), ("top1", -0.01), ("mean_per_class", 63.0)])
def test_collect_accuracy_out_of_range(tmp_path, column, value):
    bad = _metrics("shapes", "retrieved", 125, 2, 0.5)
    bad[column] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError) as info:
        collect([path])
    message = str(info.value)
    assert column in message
    assert re.search(r"'source': 'retrieved', 'scale': 125, 'seed': 2", message), message


def test_predictions_must_cover_the_same_images(tmp_path):
    _, prediction_paths = _write_grid(tmp_path)
    odd = prediction_paths[CELLS[1]]
    table = pq.read_table(odd)
    pq.write_table(table.slice(1), odd)
    with pytest.raises(ValueError, match="test images differ"):
        Predictions(prediction_paths, CLASSES)


def test_read_predictions_keeps_the_classifier_test_split(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(_prediction_table("colors", np.ones(120, bool)), path)
    table = read_predictions(path)
    assert len(table) == 120 and set(table["split"]) == {"test"}


# ---------------------------------------------------------------- across seeds, paired


def test_summary_means_over_seeds(grid):
    table, preds = grid
    summary = summarize(table, preds, BOOT)
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert len(summary) == 2 * 2 * 2 + 2
    row = summary[(summary["task"] == "shapes") & (summary["source"] == "retrieved") & (summary["scale"] == 60)].iloc[0]
    cells = table[(table["task"] == "shapes") & (table["source"] == "retrieved") & (table["scale"] == 60)]
    assert row["seeds"] == 2 and row["top1"] == pytest.approx(cells["top1"].mean())
    assert row["top1_seed_sd"] == pytest.approx(cells["top1"].std(ddof=1))
    assert row["top1_lo"] < row["top1"] < row["top1_hi"]
    zero = summary[(summary["task"] == "shapes") & (summary["source"] == "zeroshot")].iloc[0]
    assert zero["seeds"] == 1 and pd.isna(zero["top1_seed_sd"])


def test_paired_comparisons(grid):
    table, preds = grid
    paired = compare(table, preds, GRID["sources"], BOOT)
    assert list(paired.columns) == PAIRED_COLUMNS
    # per task and scale: retrieved - synthetic, synthetic - zeroshot, retrieved - zeroshot; 2 seeds + all
    assert len(paired) == 2 * 2 * 3 * 3
    assert set(zip(paired["a"], paired["b"])) == {("retrieved", "synthetic"), ("synthetic", "zeroshot"),
                                                  ("retrieved", "zeroshot")}
    row = paired[(paired["task"] == "shapes") & (paired["scale"] == 250) & (paired["a"] == "retrieved")
                 & (paired["b"] == "synthetic") & (paired["seed"] == "0")].iloc[0]
    a, b = _correct(("shapes", "retrieved", 250, 0)), _correct(("shapes", "synthetic", 250, 0))
    assert row["diff_top1"] == pytest.approx(a.mean() - b.mean())
    assert (row["a_only"], row["b_only"]) == ((a & ~b).sum(), (~a & b).sum())
    assert row["diff_top1_lo"] > 0 and row["mcnemar_p"] < 1e-6  # 0.45 vs 0.25 on nested correct sets
    across = paired[(paired["task"] == "shapes") & (paired["scale"] == 250) & (paired["a"] == "retrieved")
                    & (paired["b"] == "synthetic") & (paired["seed"] == "all")].iloc[0]
    assert pd.isna(across["mcnemar_p"]) and across["diff_top1_lo"] < across["diff_top1"] < across["diff_top1_hi"]


def test_identical_sources_compare_to_zero(tmp_path):
    cells = expected_cells(["shapes"], ["synthetic", "retrieved"], [60], [0])
    same = {c: _metrics(*c, top1=0.3) for c in cells}
    metric_paths, prediction_paths = _write_grid(tmp_path, cells, same)
    for cell in cells:  # every cell predicts exactly what the zero-shot cell predicts
        pq.write_table(_prediction_table("shapes", _correct(("shapes", "zeroshot", 0, 0))), prediction_paths[cell])
    preds = Predictions(prediction_paths, CLASSES)
    table = with_cell_intervals(collect(metric_paths, expected=cells), preds, BOOT)
    paired = compare(table, preds, ["synthetic", "retrieved"], BOOT)
    assert (paired["diff_top1"] == 0).all() and (paired["diff_top1_lo"] == 0).all()
    assert (paired.loc[paired["seed"] != "all", "mcnemar_p"] == 1.0).all()


def test_written_tables_are_rounded(grid, tmp_path):
    table, preds = grid
    table.loc[0, "top1"] = 0.23499999999999996
    table.loc[0, "wall_seconds"] = 12.3456
    paired = compare(table, preds, GRID["sources"], BOOT)
    paired.loc[0, "mcnemar_p"] = 1.234567e-9
    for df, name in ((table, "all.csv"), (summarize(table, preds, BOOT), "summary.csv"), (paired, "paired.csv")):
        write_csv(df, tmp_path / name)
        text = (tmp_path / name).read_text()
        assert not re.search(r"\d\.\d{7,}", text), name  # no float noise such as 0.23499999999999996
    written = pd.read_csv(tmp_path / "all.csv")
    assert written.loc[0, "top1"] == 0.235 and written.loc[0, "wall_seconds"] == 12.3
    assert pd.read_csv(tmp_path / "paired.csv").loc[0, "mcnemar_p"] == 1.235e-9
    assert rounded(table)["n_test"].dtype == "Int64"


# ---------------------------------------------------------------- figures


def _assert_png(path: Path, min_size: tuple[int, int]) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width >= min_size[0] and height >= min_size[1]
    return width, height


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_plot_task_draws_both_sources_and_zero_shot(grid, tmp_path):
    table, preds = grid
    summary = summarize(table, preds, BOOT)
    path = tmp_path / "shapes.png"
    plot_task(summary, "shapes", path)
    width, height = _assert_png(path, (300, 200))
    assert (width, height) == (600, 432)  # figsize (5, 3.6) at 120 dpi
    pixels = _pixels(path)
    for colour in ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)):  # the two sources' line colours are on the figure
        assert (np.abs(pixels - colour).sum(axis=2) < 30).sum() > 50


def test_plot_marks_short_cells(tmp_path):
    short_cell = ("colors", "synthetic", 250, 0)
    metrics = {short_cell: _metrics(*short_cell, top1=float(_correct(short_cell).mean()), n_train=100)}
    metric_paths, prediction_paths = _write_grid(tmp_path, metrics_of=metrics)
    preds = Predictions(prediction_paths, CLASSES)
    summary = summarize(with_cell_intervals(collect(metric_paths, expected=CELLS), preds, BOOT), preds, BOOT)
    full = tmp_path / "full.png"
    plot_task(summary.assign(short=False), "colors", full)
    marked = tmp_path / "marked.png"
    plot_task(summary, "colors", marked)
    assert not np.array_equal(_pixels(full), _pixels(marked))


def test_plot_summary_and_paired(grid, tmp_path):
    table, preds = grid
    summary = summarize(table, preds, BOOT)
    path = tmp_path / "summary.png"
    plot_summary(summary, ["shapes", "colors"], path)
    width, height = _assert_png(path, (600, 300))
    assert width > height
    wide = tmp_path / "summary4.png"
    plot_summary(summary, ["shapes", "colors", "shapes", "colors"], wide)  # 2 rows x 3 columns
    width4, height4 = _assert_png(wide, (600, 300))
    assert width4 > width and height4 > height
    paired_path = tmp_path / "paired.png"
    plot_paired(compare(table, preds, GRID["sources"], BOOT), ["shapes", "colors"], paired_path, "retrieved", "synthetic")
    _assert_png(paired_path, (400, 300))


def test_source_table_reports_label_fidelity_next_to_zero_shot(grid, tmp_path):
    table, _ = grid
    summaries = {}
    for task in ("shapes", "colors"):
        for source, fidelity in (("synthetic", 0.31), ("retrieved", 0.52)):
            path = tmp_path / f"{task}-{source}.json"
            dropped = {"clip_score": 40} if source == "synthetic" else {"clip_score": 30, "download_failed": 7}
            leakage = ({"planted_copies": 8, "planted_copies_removed": 6, "planted_copies_kept": 1,
                        "planted_copy_recall": 0.75} if source == "retrieved" else
                       {"planted_copies": 0, "planted_copies_removed": 0, "planted_copies_kept": 0,
                        "planted_copy_recall": None})
            kept = 60 if task == "shapes" else 25
            path.write_text(json.dumps({"candidates": 100, "kept": kept, "dropped": dropped, "label_fidelity": fidelity,
                                        "label_fidelity_kept": fidelity + 0.1, "mean_clip_score_kept": 0.2, **leakage}))
            summaries[(task, source)] = path
    sources = source_table(summaries, table)
    assert list(sources.columns[:13]) == [
        "task", "source", "candidates", "kept", "largest_scale", "shortfall", "label_fidelity", "label_fidelity_kept",
        "zeroshot_test_top1", "mean_clip_score_kept", "planted_copies", "planted_copy_recall", "planted_copies_kept"]
    assert len(sources) == 4
    row = sources[(sources["task"] == "colors") & (sources["source"] == "synthetic")].iloc[0]
    assert row["label_fidelity"] == 0.31 and row["zeroshot_test_top1"] == pytest.approx(0.30)
    assert row["dropped_clip_score"] == 40 and row["dropped_download_failed"] == 0
    largest = max(GRID["scales"])
    assert row["largest_scale"] == largest and row["shortfall"] == max(0, largest - 25)
    assert row["planted_copies"] == 0 and pd.isna(row["planted_copy_recall"])
    leaky = sources[(sources["task"] == "shapes") & (sources["source"] == "retrieved")].iloc[0]
    assert (leaky["planted_copies"], leaky["planted_copy_recall"], leaky["planted_copies_kept"]) == (8, 0.75, 1)
    assert leaky["shortfall"] == max(0, largest - 60)


def test_exchange_rates_read_the_real_curve_backwards(tmp_path):
    """A point as good as the real source at 4 images a class is worth 4 real images a class; one above the
    real curve's best is worth more than it measured (inf); the table says what one image is worth."""
    from synret.aggregate import exchange_table

    n = N_TEST["shapes"]
    order = np.random.default_rng(0).permutation(n)

    def correct(accuracy, source):  # the real cells right on the same images, the others on their own
        c = np.zeros(n, bool)
        mine = order if source == "real" else np.random.default_rng(len(source)).permutation(n)
        c[mine[: int(round(accuracy * n))]] = True
        return c

    accuracy = {("real", 10): 0.3, ("real", 40): 0.5, ("real", 160): 0.7, ("synthetic", 100): 0.5,
                ("retrieved", 100): 0.9}
    cells, paths, files = [], [], []
    for (source, scale), acc in accuracy.items():
        for seed in (0, 1):
            cell = ("shapes", source, scale, seed)
            folder = tmp_path / f"{source}{scale}-{seed}"
            folder.mkdir()
            size = f"k{scale // 10}" if source == "real" else f"n{scale}"
            (folder / "metrics.json").write_text(json.dumps(_metrics(*cell, top1=acc, size=size)))
            pq.write_table(_prediction_table("shapes", correct(acc, source)), folder / "predictions.parquet")
            cells.append(f"shapes/{source}/{size}/seed{seed}")
            paths.append(folder / "metrics.json")
            files.append((cell, folder / "predictions.parquet"))
    table = collect(paths, expected=cells)
    assert set(table["size"]) == {"k1", "k4", "k16", "n100"}
    rates = exchange_table(table, Predictions(dict(files), CLASSES), ["real"], BOOT).set_index("source")
    assert list(rates.columns) == [c for c in EXCHANGE_COLUMNS if c != "source"]
    synthetic = rates.loc["synthetic"]
    assert synthetic["real_per_class"] == pytest.approx(4.0)
    assert synthetic["real_per_class_lo"] < 4.0 < synthetic["real_per_class_hi"]
    assert synthetic["real_images"] == pytest.approx(40) and synthetic["real_images_per_image"] == pytest.approx(0.4)
    assert rates.loc["retrieved", "real_per_class"] == np.inf and rates.loc["retrieved", "real_curve_max"] == 16


# ---------------------------------------------------------------- extra evaluation sets


def test_eval_sets_add_columns_summaries_and_figures(tmp_path):
    """The shapes task's cells also predicted on a set 'shifted' (its first 40 images, right on the first
    ``k`` of them): all.csv and summary.csv get its columns (empty for colors), and a figure per set."""
    from synret.aggregate import eval_set_tables, with_extra_columns
    from synret.stats import mean_per_class

    metric_paths, prediction_paths = _write_grid(tmp_path)
    expected = {}
    for cell, path in prediction_paths.items():
        if cell[0] != "shapes":
            continue
        k = {"zeroshot": 10, "synthetic": 20, "retrieved": 30}[cell[1]] + cell[3]
        labels = np.arange(40) % 4 * 2  # four of the task's classes
        pred = np.where(np.arange(40) < k, labels, (labels + 1) % 10)
        shifted = pa.table({"evaluation": ["classifier"] * 40, "split": ["shifted"] * 40,
                            "key": [f"shifted/{i:03d}" for i in range(40)], "label": labels.astype(np.int32),
                            "pred": pred.astype(np.int32), "ranked": [[int(p)] for p in pred]},
                           schema=PREDICTION_SCHEMA)
        pq.write_table(pa.concat_tables([pq.read_table(path), shifted]), path)
        expected[cell] = (k / 40, float(mean_per_class(np.arange(40) < k, labels, 10)))
    table = with_cell_intervals(collect(metric_paths, expected=CELLS), Predictions(prediction_paths, CLASSES), BOOT)
    summary = summarize(table, Predictions(prediction_paths, CLASSES), BOOT)
    table, extra, summaries = eval_set_tables(table, prediction_paths, CLASSES, {"shapes": ["shifted"], "colors": []},
                                              BOOT)
    assert list(table.columns)[: len(TABLE_COLUMNS)] == TABLE_COLUMNS  # the contract's columns first, as before
    assert list(table.columns)[len(TABLE_COLUMNS):] == [
        "top1_shifted", "top1_shifted_lo", "top1_shifted_hi", "mean_per_class_shifted", "mean_per_class_shifted_lo",
        "mean_per_class_shifted_hi", "n_shifted"]
    for row in table.itertuples():
        cell = (row.task, row.source, row.scale, row.seed)
        if row.task == "colors":
            assert np.isnan(row.top1_shifted) and pd.isna(row.n_shifted)
            continue
        assert (row.top1_shifted, row.mean_per_class_shifted) == pytest.approx(expected[cell])
        assert row.top1_shifted_lo <= row.top1_shifted <= row.top1_shifted_hi and row.n_shifted == 40
    summary = with_extra_columns(summary, extra)
    assert list(summary.columns)[: len(SUMMARY_COLUMNS)] == SUMMARY_COLUMNS
    point = summary[(summary["task"] == "shapes") & (summary["source"] == "retrieved") & (summary["scale"] == 60)].iloc[0]
    assert point["top1_shifted"] == pytest.approx(np.mean([30 / 40, 31 / 40]))
    assert summary.loc[summary["task"] == "colors", "top1_shifted"].isna().all()
    written = tmp_path / "all.csv"
    write_csv(table, written)
    assert pd.read_csv(written)["n_shifted"].dropna().eq(40).all()
    assert "40.0" not in written.read_text().split("\n")[1]  # counts stay integers
    plot_task(summaries["shifted"], "shapes", tmp_path / "shifted.png", title="shapes: eval set shifted")
    _assert_png(tmp_path / "shifted.png", (300, 200))
    # no sets: the tables as they were
    same, none, _ = eval_set_tables(table[TABLE_COLUMNS], prediction_paths, CLASSES, {"shapes": [], "colors": []}, BOOT)
    assert list(same.columns) == TABLE_COLUMNS and with_extra_columns(summary[SUMMARY_COLUMNS], none).equals(
        summary[SUMMARY_COLUMNS])


def test_cells_are_written_as_clip_benchmark_results(tmp_path):
    from synret.aggregate import clip_benchmark_results

    cells = [("shapes", "zeroshot", 0, 0), ("shapes", "synthetic", 60, 1)]
    paths = []
    for i, cell in enumerate(cells):
        m = _metrics(*cell, top1=0.5, mpc=0.4, top5=0.9,
                     evaluation={"test": {"top1": 0.5, "top5": 0.9, "mean_per_class": 0.4, "n": 10}},
                     eval_sets={"shifted": {"top1": 0.25, "top5": None, "mean_per_class": 0.2, "n": 8}})
        paths.append(tmp_path / f"m{i}.json")
        paths[-1].write_text(json.dumps(m))
    out = tmp_path / "cb"
    (out).mkdir()
    (out / "stale.json").write_text("{}")
    written = clip_benchmark_results(paths, out, {"model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k"})
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written) == [
        "shapes_synthetic_n60_seed1_shifted.json", "shapes_synthetic_n60_seed1_test.json",
        "shapes_zeroshot_shifted.json", "shapes_zeroshot_test.json"]
    result = json.loads((out / "shapes_synthetic_n60_seed1_shifted.json").read_text())
    assert set(result) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert result["dataset"] == "shapes/shifted" and result["pretrained"] == "laion2b_s34b_b88k/synthetic/n60/seed1"
    assert result["task"] == "zeroshot_classification" and result["language"] == "en"
    assert result["metrics"]["acc1"] == 0.25 and np.isnan(result["metrics"]["acc5"])  # below 5 classes: NaN, as its own
    assert json.loads((out / "shapes_zeroshot_test.json").read_text())["metrics"] == {
        "acc1": 0.5, "acc5": 0.9, "mean_per_class_recall": 0.4}
