"""The report of the smoke run, as a reader sees it: built with `snakemake --report`, opened offline in
headless Chromium, every category and result opened; nothing fails to load, and the pixels show content."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from report_walk import walk_report
from smoke_support import snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(smoke_run, tmp_path_factory):
    workdir, _ = smoke_run
    html = workdir / "report.html"
    proc = snakemake(workdir, "--report", str(html))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return html


@pytest.fixture(scope="module")
def walk(report, tmp_path_factory):
    return walk_report(report, tmp_path_factory.mktemp("report_shots"))


def test_report_is_one_self_contained_file(report):
    text = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000
    assert "results/report/shapes/samples.png" in text or "samples.png" in text
    assert 'src="http' not in text and "src='http" not in text  # nothing to fetch from elsewhere


def test_every_result_opens_without_a_failed_request_or_error(walk):
    assert walk.problems == []  # no failed/external requests, JS or console errors, broken images
    assert walk.categories == ["1. Results", "2. Data quality", "3. Training images", "4. Compute"]
    assert not walk.home_stats["blank"]
    names = {(o.category, o.subcategory, o.name): o for o in walk.opened}
    expected = {
        ("1. Results", None, "accuracy against training images, all tasks"): "image",
        ("1. Results", None, "paired differences, per task and scale"): "image",
        ("1. Results", None, "every cell (CSV)"): "download",
        ("1. Results", None, "tables: accuracy per point, paired differences"): "html",
        ("2. Data quality", None, "data quality against accuracy"): "image",
        ("2. Data quality", None, "tables: the data-quality panel, curation per source"): "html",
        ("3. Training images", "shapes", "sample images of every source"): "image",
        ("3. Training images", "colored_shapes", "sample images of every source"): "image",
        ("4. Compute", None, "accuracy against compute"): "image",
        ("4. Compute", None, "tables: compute per source and stage, per point"): "html",
    }
    for key, kind in expected.items():
        assert key in names, f"{key} not in the report: {sorted(names)}"
        assert names[key].kind == kind


def test_figures_and_sample_grids_show_content_by_their_pixels(walk):
    images = [o for o in walk.opened if o.kind == "image"]
    assert len(images) >= 6
    for o in images:
        assert o.natural_size[0] > 300 and not o.stats["blank"], o
        assert o.stats["content_fraction"] > 0.02, o  # more than a frame and a few labels
    grids = [o for o in images if o.category == "3. Training images"]
    for o in grids:  # rows of coloured sample images, not only text: many distinct colours
        assert o.stats["distinct_colors"] > 5000, o


def test_table_pages_show_the_panel_and_the_compute(walk, smoke_run):
    workdir, _ = smoke_run
    pages = {o.name: o.text for o in walk.opened if o.kind == "html"}
    quality = pages["tables: the data-quality panel, curation per source"]
    table = pd.read_csv(workdir / "results" / "tables" / "quality.csv")
    for column in ("label_fidelity_zeroshot", "label_fidelity_truth", "within_class_similarity", "vendi_per_class",
                   "frechet_to_test", "dropped_clip_score"):
        assert column in quality and column in table
    for source in ("synthetic", "retrieved", "random", "real"):
        assert source in quality
    assert "total_cpu_s" in pages["tables: compute per source and stage, per point"]


def test_quality_panel_on_the_smoke_run(smoke_run):
    workdir, _ = smoke_run
    table = pd.read_csv(workdir / "results" / "tables" / "quality.csv").set_index(["task", "source"])
    # the world knows the true class of every pool image: retrieved images mostly are their class, the
    # random source's zero-shot labels mostly are not; generated images have no ground truth
    for task in ("shapes", "colored_shapes"):
        assert table.loc[(task, "retrieved"), "label_fidelity_truth"] > 0.5
        assert table.loc[(task, "random"), "label_fidelity_truth"] < table.loc[(task, "retrieved"), "label_fidelity_truth"]
        assert pd.isna(table.loc[(task, "synthetic"), "label_fidelity_truth"])
        assert pd.isna(table.loc[(task, "random"), "label_fidelity_zeroshot"])  # its labels are the zero-shot's own
        assert table.loc[(task, "real"), "label_fidelity_truth"] == 1.0
        assert 0 <= table.loc[(task, "retrieved"), "within_class_similarity"] <= 1
        assert table.loc[(task, "synthetic"), "frechet_to_test"] >= 0
    q = json.loads((workdir / "results" / "quality" / "shapes" / "retrieved" / "quality.json").read_text())
    summary = json.loads((workdir / "results" / "curated" / "shapes" / "retrieved" / "summary.json").read_text())
    assert q["kept"] == summary["kept"] and q["dropped"] == summary["dropped"]


def test_compute_tables_add_up(smoke_run):
    workdir, _ = smoke_run
    data = pd.read_csv(workdir / "results" / "tables" / "compute_data.csv")
    cells = pd.read_csv(workdir / "results" / "tables" / "compute.csv")
    assert set(data.groupby("source")["stage"].apply(frozenset)["retrieved"]) == {"retrieval", "download", "curation"}
    assert set(data[data["source"] == "synthetic"]["stage"]) == {"generation", "curation"}
    assert (data["wall_s"] > 0).all() and (data["cpu_s"] >= 0).all() and (data["gpu_s"] == 0).all()  # CPU run
    all_cells = pd.read_csv(workdir / "results" / "tables" / "all.csv")
    assert len(cells) == (all_cells["source"] != "zeroshot").sum()
    assert (cells["total_cpu_s"] >= cells["train_cpu_s"]).all()
    assert (cells.loc[cells["source"] == "real", "data_cpu_s"] == 0).all()
    assert (cells.loc[cells["source"] == "synthetic", "data_cpu_s"] > 0).all()
