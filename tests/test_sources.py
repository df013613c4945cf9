"""synret.sources: a source is one definition; the workflow asks it, never branches on its name."""

from __future__ import annotations

import copy
import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from synret import sources
from synret.config import ConfigError, check_config, expected_cells
from synret.leakage import arm_storage
from synret.preflight import preflight_spec
from synret.resources import estimate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "config.schema.yaml")


@pytest.fixture
def config(tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # a fresh checkout: no results/world yet
    return copy.deepcopy(yaml.safe_load((ROOT / "config.yaml").read_text()))


@pytest.fixture
def sixth(monkeypatch):
    """A hypothetical further source, defined the way every source is: here, the pool's images under
    another name (as a second retrieval method would be), registered for the test only."""
    extra = dataclasses.replace(sources.RETRIEVED, name="retrieved_again", label="retrieved again",
                                color="#2ca02c", marker="^")
    monkeypatch.setitem(sources.SOURCES, extra.name, extra)
    return extra


def test_the_default_sources_are_defined(config):
    assert [s.name for s in sources.sources_of(config)] == config["sources"]
    for s in sources.SOURCES.values():
        assert s.stage in ("synthetic", "retrieval") and s.label and s.color.startswith("#")


def test_an_unknown_source_is_a_config_error_naming_the_known_ones(config):
    with pytest.raises(ConfigError, match=r"unknown source 'generated'; known sources: synthetic, retrieved"):
        sources.source("generated")
    config["sources"] = ["synthetic", "generated", "mixd"]
    with pytest.raises(ConfigError) as info:
        check_config(config, SCHEMA)
    message = str(info.value)
    assert "config key 'sources'" in message and "'generated', 'mixd'" in message and "Traceback" not in message


def test_each_source_names_its_images(config):
    synthetic = sources.SYNTHETIC.images(config, "shapes")
    assert synthetic["shards"][0] == "results/synthetic/shapes/shard-00000.tar"
    assert [p.replace(".tar", ".parquet") for p in synthetic["shards"]] == synthetic["manifests"]
    assert sources.RETRIEVED.images(config, "shapes") == {
        "shards": "results/retrieval/shapes/download", "manifests": "results/retrieval/shapes/download_manifest.parquet"}


def test_candidates_carry_the_source_and_one_row_per_image_and_label():
    generated = pd.DataFrame({"key": ["a", "b"], "label": [0, 1], "prompt": ["p", "q"], "shard": ["s", "s"],
                              "sha256": ["x", "y"]})
    rows = sources.SYNTHETIC.candidates(generated)
    assert list(rows["source"]) == ["synthetic"] * 2 and list(rows["origin"]) == ["p", "q"]
    downloaded = pd.DataFrame({"id": [7, 7], "label": [2, 3], "url": ["u", "u"], "query": ["c", "d"],
                               "methods": ["knn", "substring"], "shard": ["0", "0"], "key": ["k", "k"],
                               "sha256": ["z", "z"], "status": ["success"] * 2})
    rows = sources.RETRIEVED.candidates(downloaded)
    assert list(rows["key"]) == ["r7-c2", "r7-c3"] and rows["planted_from"].isna().all()


def test_a_sixth_source_is_one_definition(config, sixth):
    """Registered once, it passes the config check, joins the grid, the preflight and the plots' styles,
    names its images, sizes its jobs and stores planted copies, with no other change."""
    config["sources"] = ["synthetic", "retrieved_again"]
    check_config(config, SCHEMA)
    cells = expected_cells(config["tasks"], config["sources"], config["scales"], config["seeds"])
    assert ("shapes", "retrieved_again", config["scales"][0], config["seeds"][0]) in cells
    assert sources.source("retrieved_again").images(config, "shapes")["shards"] == "results/retrieval/shapes/download"
    assert sources.source_style("retrieved_again") == {"color": "#2ca02c", "marker": "^", "label": "retrieved again"}
    spec = preflight_spec({**config, "world": None})
    assert "pool" in spec and "generator" in spec
    wildcards = {"task": "shapes", "source": "retrieved_again", "scale": "100", "seed": "0"}
    assert estimate("curate", config, wildcards)["mem_mb"] > 0
    stored = arm_storage("retrieved_again", sixth.storage_settings(config, "shapes"))(
        Image.fromarray(np.zeros((40, 30, 3), np.uint8)))
    size = config["retrieval"]["download"]["image_size"]
    assert Image.open(io.BytesIO(stored)).size == (size, size)


def test_a_source_s_config_needs_are_checked_only_when_it_runs(config):
    """The retrieved source needs a retrieval method; a grid without it does not."""
    config["retrieval"]["knn"]["enabled"] = config["retrieval"]["substring"]["enabled"] = False
    for task in config["task_settings"].values():
        task.pop("retrieval", None)
    with pytest.raises(ConfigError, match="enable knn or substring retrieval"):
        check_config(config, SCHEMA)
    config["sources"] = ["synthetic"]
    check_config(config, SCHEMA)
