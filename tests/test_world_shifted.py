"""The demo world's shifted test sets: rendered in their own style, written in CLIP_benchmark's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from synret import clip_benchmark as cb
from synret.config import shifted_params
from synret.eval_sets import build_eval_set
from synret.world.build import DatasetSpec, build_shifted_set

ROOT = Path(__file__).resolve().parents[1]


def _world() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())["world"]


def test_a_shifted_set_is_a_clip_benchmark_dataset_of_the_same_classes(tmp_path):
    world = _world()
    summary = build_shifted_set(world, "shapes", tmp_path / "shapes")
    names = DatasetSpec.from_config("shapes", world["datasets"]["shapes"]).classnames()
    assert summary == {"dataset": "shapes", "images": 10 * len(names), "classes": len(names)}
    assert cb.read_classnames(tmp_path / "shapes") == names
    assert cb.read_templates(tmp_path / "shapes") == world["shifted"]["templates"]
    assert (tmp_path / "shapes" / "test" / "nshards.txt").read_text() == "1\n"
    keys, paths, labels = cb.extract_split(tmp_path / "shapes", "test", tmp_path / "out")
    assert np.bincount(labels).tolist() == [10] * len(names)
    with Image.open(paths[0]) as img:
        assert img.size == (world["image_size"],) * 2 and img.format == "PNG"
    # the same config renders the same bytes; another dataset's set draws from its own stream
    build_shifted_set(world, "shapes", tmp_path / "again")
    assert (tmp_path / "again" / "test" / "0.tar").read_bytes() == (tmp_path / "shapes" / "test" / "0.tar").read_bytes()
    # a task reads it as an eval set, every class mapped by name
    info = build_eval_set("shapes", "shifted", {"dataset": {"format": "clip_benchmark", "root": str(tmp_path / "shapes")},
                                                "split": "test", "classes": "by_name"},
                          {"classnames": names}, tmp_path / "eval" / "shifted.parquet", tmp_path / "eval" / "shifted.json")
    assert info["classes"] == list(range(len(names))) and info["dropped_images"] == 0


def test_shifted_images_differ_in_style_from_the_benchmarks(tmp_path):
    """Noisy backgrounds: the shifted images' pixels vary far more around the object than the benchmark's."""
    world = _world()
    build_shifted_set(world, "shapes", tmp_path / "shifted")
    _, paths, _ = cb.extract_split(tmp_path / "shifted", "test", tmp_path / "out")

    def corner_sd(path) -> float:  # the top-left 4x4 corner: background nearly always
        with Image.open(path) as img:
            return float(np.asarray(img.convert("RGB"), float)[:4, :4].std())

    shifted = np.median([corner_sd(p) for p in paths])
    from synret.world.build import style_from_config
    from synret.world.render import render, sample_attributes

    rng = np.random.default_rng(0)
    style = style_from_config(world["benchmark_style"])
    attrs = sample_attributes(rng, 100, style, fixed={"shape": np.repeat(np.arange(10), 10)})
    bench = np.median([float(img[:4, :4].astype(float).std()) for img in render(attrs, 32, rng, style)])
    assert shifted > 2 * bench  # measured: 27 against 11


def test_the_shifted_rule_depends_on_its_own_slice_of_the_world_config():
    world = _world()
    base = shifted_params(world, "shapes")
    other = {**world, "datasets": {**world["datasets"], "colored_shapes": {"factors": ["color"], "per_class":
                                                                           {"train": 1, "val": 1, "test": 1}}},
             "shifted": {**world["shifted"], "per_class": {**world["shifted"]["per_class"], "colored_shapes": 9}}}
    assert shifted_params(other, "shapes") == base  # another dataset's edit reruns nothing here
    more = {**world, "shifted": {**world["shifted"], "per_class": {"shapes": 11}}}
    assert shifted_params(more, "shapes") != base


def test_an_eval_set_of_a_shifted_set_the_world_does_not_render_is_a_config_error():
    import pytest

    from synret.config import ConfigError, check_config

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    check_config(config, str(ROOT / "config.schema.yaml"))
    del config["world"]["shifted"]["per_class"]["patterned_shapes"]
    with pytest.raises(ConfigError, match=r"task_settings.patterned_shapes.eval_sets.shifted.dataset.root': the world "
                                          r"renders no shifted set of 'patterned_shapes'"):
        check_config(config, str(ROOT / "config.schema.yaml"))
