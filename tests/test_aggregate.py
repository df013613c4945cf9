"""Tests of synret.aggregate: the results table and the accuracy-versus-scale figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from synret.aggregate import TABLE_COLUMNS, collect, plot_summary, plot_task

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cell(task, source, scale, seed, top1, mpc=None, **extra) -> dict:
    row = {
        "task": task, "source": source, "scale": scale, "seed": seed, "top1": top1,
        "mean_per_class": top1 if mpc is None else mpc, "n_train": scale, "wall_seconds": 1.5,
        "val_top1": top1, "val_mean_per_class": top1, "steps": 10 * scale,
    }
    row.update(extra)
    return row


CELLS = [
    _cell("shapes", "synthetic", 250, 0, 0.61),
    _cell("shapes", "retrieved", 60, 1, 0.52),
    _cell("shapes", "zeroshot", 0, 0, 0.35, n_train=0, steps=0),
    _cell("shapes", "retrieved", 60, 0, 0.50),
    _cell("colors", "synthetic", 60, 0, 0.40, 0.38),
    _cell("shapes", "synthetic", 60, 0, 0.45),
    _cell("shapes", "retrieved", 250, 0, 0.70),
    _cell("colors", "zeroshot", 0, 0, 0.25),
    _cell("colors", "retrieved", 60, 0, 1.0, 0.0),
    _cell("shapes", "synthetic", 60, 1, 0.47),
]


def _write(tmp_path: Path, cells: list[dict]) -> list[Path]:
    paths = []
    for i, cell in enumerate(cells):
        path = tmp_path / f"cell{i}" / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**cell, "per_class": [0.1, 0.2]}))  # extra keys are ignored
        paths.append(path)
    return paths


@pytest.fixture
def table(tmp_path) -> pd.DataFrame:
    return collect(_write(tmp_path, CELLS), expected_rows=len(CELLS))


def test_collect_columns_and_order(table):
    assert list(table.columns) == TABLE_COLUMNS
    assert list(table.index) == list(range(len(CELLS)))
    keys = list(zip(table["task"], table["source"], table["scale"], table["seed"]))
    assert keys == [
        ("colors", "retrieved", 60, 0),
        ("colors", "synthetic", 60, 0),
        ("colors", "zeroshot", 0, 0),
        ("shapes", "retrieved", 60, 0),
        ("shapes", "retrieved", 60, 1),
        ("shapes", "retrieved", 250, 0),
        ("shapes", "synthetic", 60, 0),
        ("shapes", "synthetic", 60, 1),
        ("shapes", "synthetic", 250, 0),
        ("shapes", "zeroshot", 0, 0),
    ]


def test_collect_values(table):
    zero = table[(table["task"] == "shapes") & (table["source"] == "zeroshot")].iloc[0]
    assert zero["scale"] == 0 and zero["top1"] == pytest.approx(0.35) and zero["n_train"] == 0
    colors = table[(table["task"] == "colors") & (table["source"] == "synthetic")].iloc[0]
    assert colors["mean_per_class"] == pytest.approx(0.38)
    assert colors["wall_seconds"] == pytest.approx(1.5)
    assert colors["steps"] == 600
    # the bounds 0 and 1 themselves are valid accuracies
    edge = table[(table["task"] == "colors") & (table["source"] == "retrieved")].iloc[0]
    assert (edge["top1"], edge["mean_per_class"]) == (1.0, 0.0)


def test_collect_missing_optional_columns_are_empty(tmp_path):
    cell = {k: v for k, v in _cell("a", "synthetic", 10, 0, 0.5).items() if k not in ("val_top1", "steps")}
    df = collect(_write(tmp_path, [cell]))
    assert list(df.columns) == TABLE_COLUMNS
    assert pd.isna(df.loc[0, "val_top1"]) and pd.isna(df.loc[0, "steps"])


def test_collect_linear_probe_columns_only_when_present(tmp_path):
    cells = [_cell("a", "zeroshot", 0, 0, 0.3, lp_top1=0.6, lp_mean_per_class=0.55), _cell("a", "synthetic", 10, 0, 0.5)]
    df = collect(_write(tmp_path, cells))
    assert list(df.columns) == TABLE_COLUMNS + ["lp_top1", "lp_mean_per_class"]
    assert df.loc[df["source"] == "zeroshot", "lp_top1"].item() == pytest.approx(0.6)
    assert pd.isna(df.loc[df["source"] == "synthetic", "lp_top1"].item())


def test_collect_wrong_row_count(tmp_path):
    paths = _write(tmp_path, CELLS[:3])
    with pytest.raises(ValueError, match="expected 4 result rows, found 3"):
        collect(paths, expected_rows=4)
    assert len(collect(paths)) == 3


@pytest.mark.parametrize("column, value", [("top1", 1.2), ("top1", -0.01), ("mean_per_class", 63.0)])
def test_collect_accuracy_out_of_range(tmp_path, column, value):
    bad = _cell("shapes", "retrieved", 125, 2, 0.5)
    bad[column] = value
    with pytest.raises(ValueError) as info:
        collect(_write(tmp_path, CELLS[:2] + [bad]))
    message = str(info.value)
    assert column in message
    assert re.search(r"'source': 'retrieved', 'scale': 125, 'seed': 2", message), message


def test_collect_no_files():
    df = collect([], expected_rows=0)
    assert list(df.columns) == TABLE_COLUMNS and len(df) == 0


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


def test_plot_task(table, tmp_path):
    path = tmp_path / "shapes.png"
    plot_task(table, "shapes", path)
    width, height = _assert_png(path, (300, 200))
    assert (width, height) == (600, 432)  # figsize (5, 3.6) at 120 dpi
    assert width > height


def test_plot_task_mean_per_class_and_single_source(table, tmp_path):
    path = tmp_path / "colors.png"
    plot_task(table[table["source"] != "synthetic"], "colors", path, metric="mean_per_class")
    _assert_png(path, (300, 200))


def test_plot_summary(table, tmp_path):
    path = tmp_path / "summary.png"
    plot_summary(table, ["shapes", "colors"], path)
    width, height = _assert_png(path, (600, 300))
    assert width > height
    wide = tmp_path / "summary4.png"
    plot_summary(table, ["shapes", "colors", "shapes", "colors"], wide)  # 2 rows x 3 columns
    width4, height4 = _assert_png(wide, (600, 300))
    assert width4 > width and height4 > height
