"""synret.sources: a source is one definition; the workflow asks it, never branches on its name."""

from __future__ import annotations

import copy
import dataclasses
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from synret import sources
from synret.config import ConfigError, check_config
from synret.curate import per_class_subset, select_training
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
        assert s.stage in ("synthetic", "img2img", "retrieval", "random", "tasks", "finetune") and s.label and s.color.startswith("#")
    check_config(config, SCHEMA)  # the default grid runs every kind


def test_an_unknown_source_is_a_config_error_naming_the_known_ones(config):
    with pytest.raises(ConfigError, match=r"unknown source 'generated'; known sources: synthetic, retrieved, mixed, "
                                          r"real, random"):
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
    cells = [cell.id for cell in sources.grid(config)]
    assert f"shapes/retrieved_again/n{config['scales'][0]}/seed{config['seeds'][0]}" in cells
    assert sources.source("retrieved_again").images(config, "shapes")["shards"] == "results/retrieval/shapes/download"
    assert sources.source_style("retrieved_again") == {"color": "#2ca02c", "marker": "^", "label": "retrieved again"}
    spec = preflight_spec({**config, "world": None})
    assert "pool" in spec and list(spec["generators"]) == ["synthetic"]
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


def test_the_default_grid_has_every_kind_of_cell(config):
    """Each source adds its own cells: scales for most, k per class for real, one source per mix share."""
    ids = {cell.id for cell in sources.grid(config)}
    assert "shapes/synthetic_early/n50/seed1" in ids and "shapes/random/n200/seed0" in ids
    # the main arms on three seeds, the other sources on their own two
    assert "shapes/synthetic/n50/seed2" in ids and "shapes/synthetic_early/n50/seed2" not in ids
    assert not any(i.endswith("seed2") for i in ids if i.split("/")[1] in ("random", "real", "mixed-50"))
    assert {f"shapes/real/k{k}/seed0" for k in (1, 2, 4, "all")} <= ids
    assert {f"shapes/mixed-{p}/n200/seed1" for p in (25, 50, 75)} <= ids and "shapes/mixed-25/n50/seed0" not in ids
    assert "shapes/zeroshot" in ids and len(ids) == len(sources.grid(config))
    assert list(sources.cell_sources(config)) == ["synthetic", "synthetic_early", "retrieved", "mixed-25", "mixed-50",
                                                  "mixed-75", "real", "random"]
    # the curated sets it needs, and which source each mixes
    assert [s.name for s in sources.curated_sources_of(config)] == ["synthetic", "synthetic_early", "retrieved",
                                                                    "real", "random"]
    mixed = sources.source("mixed", config)
    assert mixed.curated_sources(config) == ("synthetic", "retrieved")
    assert mixed.selection(config, "mixed-25", "n200") == {"how": "mix", "ratio": 0.25,
                                                          "parts": {"synthetic": 150, "retrieved": 50}}
    assert sources.source("real", config).selection(config, "real", "kall") == {
        "how": "per_class", "per_class": None, "source": "real"}


def test_a_second_generator_is_a_synthetic_source_with_its_own_shards(config):
    early = sources.source("synthetic_early", config)
    assert early.kind == "synthetic" and early.label == "synthetic (early generator)"
    assert early.images(config, "shapes")["shards"][0] == "results/synthetic_early/shapes/shard-00000.tar"
    assert sources.generator_settings(early, config)["model"] == "results/world/generator_early"
    assert sources.generator_settings(sources.SYNTHETIC, config)["model"] == config["generator"]["model"]
    config["source_settings"]["synthetic_early"]["synthetic"] = {"steps": 2, "guidance_scale": 1.5}
    sampling = sources.sampling_settings(early, config, "shapes")
    assert (sampling["steps"], sampling["guidance_scale"], sampling["scheduler"]) == (2, 1.5, "ddim")
    spec = preflight_spec({**config, "world": None})
    assert set(spec["generators"]) == {"synthetic", "synthetic_early"}
    config["source_settings"]["synthetic_early"]["generator"]["model"] = "./no/such/generator"
    with pytest.raises(ConfigError, match=r"source_settings.synthetic_early.generator.model': generator directory"):
        check_config(config, SCHEMA)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["source_settings"].update(Results={"kind": "synthetic"}), "a source name is lower case"),
    (lambda c: c["source_settings"].update(cells={"kind": "synthetic"}), "a source name is lower case"),
    (lambda c: c["source_settings"].update(real={"kind": "random"}), "is a built-in source of kind 'real'"),
    (lambda c: c["source_settings"].update(again={"kind": "retrieval"}), "source_settings.again.kind"),
    (lambda c: c["source_settings"]["mixed"].update(of=["synthetic", "nothing"]), "unknown source 'nothing'"),
    (lambda c: c["source_settings"]["mixed"].update(of=["synthetic", "synthetic"]), "two different sources"),
    (lambda c: c["source_settings"]["mixed"].update(ratios=[0.5, 1.0]), "source_settings.mixed.ratios"),
    (lambda c: c["source_settings"]["real"].update(per_class=[0, "all"]), "source_settings.real.per_class"),
    (lambda c: c["source_settings"]["synthetic_early"].update(synthetic={"shard_size": 10}), "every generator shares"),
])
def test_bad_source_settings_are_config_errors_naming_the_key(config, change, message):
    change(config)
    with pytest.raises(ConfigError) as info:
        check_config(config, SCHEMA)
    assert message in str(info.value) and "Traceback" not in str(info.value)


def _curated(prefix: str, n: int, classes: int) -> pd.DataFrame:
    return pd.DataFrame({"key": [f"{prefix}{i:03d}" for i in range(n)], "label": [i % classes for i in range(n)],
                         "kept": [i % 7 != 3 for i in range(n)]})


def test_mixes_nest_across_totals_and_their_ends_are_the_sources_own_cells():
    curated = {"synthetic": _curated("s", 300, 5), "retrieved": _curated("r", 300, 5)}
    mix = lambda total, ratio: select_training(curated, {"how": "mix", "ratio": ratio, "parts": dict(zip(  # noqa: E731
        ("synthetic", "retrieved"), sources.split_total(total, ratio)))}, seed=1)[0]
    small, large = mix(100, 0.25), mix(200, 0.25)
    assert (small["key"].str[0] == "r").sum() == 25 and (large["key"].str[0] == "r").sum() == 50
    assert set(small["key"]) <= set(large["key"])
    own = select_training(curated, {"how": "nested", "scale": 200, "source": "synthetic"}, seed=1)[0]
    assert list(mix(200, 0.0)["key"]) == list(own["key"])
    assert sources.split_total(30, 0.5) == (15, 15) and sources.ratio_name(0.125) == "12.5"


def test_k_per_class_nests_and_all_takes_every_kept_image():
    curated = _curated("t", 100, 4)
    one, four = per_class_subset(curated, 1, 0), per_class_subset(curated, 4, 0)
    assert one.groupby("label").size().tolist() == [1] * 4 and four.groupby("label").size().tolist() == [4] * 4
    assert set(one["key"]) <= set(four["key"])
    everything, wanted = select_training({"real": curated}, {"how": "per_class", "per_class": None, "source": "real"}, 0)
    assert len(everything) == curated["kept"].sum() and wanted is None
    assert select_training({"real": curated}, {"how": "per_class", "per_class": 4, "source": "real"}, 0)[1] == 16


def test_random_and_real_candidates():
    downloaded = pd.DataFrame({"id": [7, 9], "label": [-1, -1], "url": ["u", "v"], "query": [None, None],
                               "methods": ["random"] * 2, "shard": ["0", "0"], "key": ["k", "l"], "sha256": ["z", "y"],
                               "status": ["success"] * 2})
    rows = sources.RANDOM.candidates(downloaded)
    assert list(rows["key"]) == ["p7", "p9"] and (rows["label"] == -1).all() and set(rows["source"]) == {"random"}
    train = pd.DataFrame({"key": ["train/a.png"], "label": [3], "path": ["/data/a.png"]})
    rows = sources.REAL.candidates(train)
    assert rows.iloc[0]["member"] == "/data/a.png" and rows.iloc[0]["shard"] is None and rows.iloc[0]["label"] == 3


# ----------------------------------------------------------------------------- img2img


@pytest.fixture
def with_img2img(config) -> dict:
    config["sources"] = [*config["sources"], "img2img"]
    config["source_settings"]["img2img"] = {"images": 700, "seeds": [0]}
    return config


def test_img2img_transforms_a_curated_source_and_has_its_own_cells_and_curated_set(with_img2img):
    config = with_img2img
    check_config(config, SCHEMA)
    img2img = sources.source("img2img", config)
    assert img2img.kind == img2img.stage == "img2img" and img2img.curation == "clip"
    ids = {cell.id for cell in sources.grid(config)}
    assert {f"shapes/img2img/n{n}/seed0" for n in config["scales"]} <= ids and "shapes/img2img/n50/seed1" not in ids
    # 700 of retrieved's kept images, 360 a shard (the synthetic block's shard_size): two shards
    assert img2img.images(config, "shapes") == {
        "shards": [f"results/img2img/shapes/shard-0000{i}.tar" for i in (0, 1)],
        "manifests": [f"results/img2img/shapes/shard-0000{i}.parquet" for i in (0, 1)]}
    # its parent is an input of its stage, not of its cells: the parent is curated first, its cells read its own
    assert img2img.parents(config) == ("retrieved",) and img2img.curated_sources(config) == ("img2img",)
    assert [s.name for s in sources.curated_sources_of(config)][-1] == "img2img"
    settings = sources.img2img_settings(img2img, config, "shapes")
    assert (settings["of"], settings["strength"], settings["prompt"]) == ("retrieved", 0.5, "a photo of {a/an} {c}")
    assert sources.effective_steps(settings["steps"], settings["strength"]) == 3  # 6 steps at 0.5
    assert "img2img" in preflight_spec({**config, "world": None})["generators"]
    assert estimate("img2img_shard", config, {"task": "shapes", "source": "img2img", "shard": "00000"})["mem_mb"] > 0
    stored = sources.source("img2img").storage(img2img.storage_settings(config, "shapes"))(
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)))
    assert Image.open(io.BytesIO(stored)).size == (config["synthetic"]["save_size"],) * 2


def test_img2img_candidates_name_the_parent_image():
    made = pd.DataFrame({"key": ["i0000000"], "label": [3], "prompt": ["a photo of a circle"], "shard": ["s"],
                         "sha256": ["x"], "source_key": ["r7-c3"]})
    rows = sources.IMG2IMG.candidates(made)
    assert rows.iloc[0]["origin"] == "r7-c3" and rows.iloc[0]["source"] == "img2img" and rows.iloc[0]["member"] == "i0000000"


def test_an_img2img_instance_of_another_source(with_img2img):
    """Another strength of another source, under its own name; a mix of it curates what it transforms."""
    config = with_img2img
    config["source_settings"]["probe"] = {"kind": "img2img", "of": "synthetic_early", "strength": 1.0, "images": 50,
                                          "scales": [50], "synthetic": {"shard_size": 20, "steps": 3}}
    config["sources"] = ["synthetic", "probe"]
    check_config(config, SCHEMA)
    probe = sources.source("probe", config)
    assert probe.kind == "img2img" and probe.label == "probe"
    assert probe.images(config, "shapes")["shards"][-1] == "results/probe/shapes/shard-00002.tar"  # 50 at 20 a shard
    assert [s.name for s in sources.curated_sources_of(config)] == ["synthetic", "synthetic_early", "probe"]
    config["source_settings"]["mixed"]["of"] = ["synthetic", "img2img"]
    config["sources"] = ["synthetic", "mixed"]
    check_config(config, SCHEMA)
    assert [s.name for s in sources.curated_sources_of(config)] == ["synthetic", "retrieved", "img2img"]
    assert sources.source("mixed", config).curated_sources(config) == ("synthetic", "img2img")


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("images"), "source_settings.img2img.images"),
    (lambda s: s.update(of="nothing"), "source_settings.img2img.of': unknown source 'nothing'"),
    (lambda s: s.update(of="mixed"), "'mixed' has no curated images of its own to transform"),
    (lambda s: s.update(of="img2img"), "source_settings.img2img.of': the sources transform each other in a circle"),
    (lambda s: s.update(of=["retrieved", "synthetic"]), "source_settings.img2img.of': name the one curated source"),
    (lambda s: s.update(strength=0), "source_settings.img2img.strength"),
    (lambda s: s.update(strength=1.5), "source_settings.img2img.strength"),
    (lambda s: s.update(strength=0.1), "source_settings.img2img.strength': 0.1 of 6 denoising steps"),
    (lambda s: s.update(generator={"model": "./no/such/generator"}), "source_settings.img2img.generator.model'"),
    (lambda s: s.update(kind="img2img", images=0), "source_settings.img2img"),
])
def test_bad_img2img_settings_are_config_errors_naming_the_key(with_img2img, change, message):
    change(with_img2img["source_settings"]["img2img"])
    with pytest.raises(ConfigError) as info:
        check_config(with_img2img, SCHEMA)
    assert message in str(info.value) and "Traceback" not in str(info.value)


def test_the_smoke_run_plans_img2img_shards_from_the_curated_retrieved_images(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(ROOT / "configs" / "smoke.yaml"), "--cores", "2", "results/tables/all.csv"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    assert "img2img" in smoke["sources"]
    jobs = re.findall(r"^rule img2img_shard:\n    input: (.*)\n    output: (.*)\n", proc.stdout, re.M)
    assert len(jobs) == len(smoke["tasks"])  # 60 images: one shard a task
    for task in smoke["tasks"]:
        inputs, outputs = next((i, o) for i, o in jobs if f"results/tasks/{task}/" in i)
        assert inputs.split(", ") == [f"results/curated/{task}/retrieved/manifest.parquet",
                                      f"results/retrieval/{task}/download", f"results/tasks/{task}/task.json",
                                      "results/world/generator"]
        assert outputs.split(", ") == [f"results/img2img/{task}/shard-00000.tar", f"results/img2img/{task}/shard-00000.parquet"]
    for task in smoke["tasks"]:  # and its curation reads the shards
        assert re.search(rf"^rule curate:\n    input: results/img2img/{task}/shard-00000.tar, "
                         rf"results/img2img/{task}/shard-00000.parquet,", proc.stdout, re.M)
