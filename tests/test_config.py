"""Tests of synret.config against the real config.yaml, config.schema.yaml and configs/smoke.yaml."""

from __future__ import annotations

import copy
import json
import os
import pathlib
from pathlib import Path

import pytest
import yaml

from synret.config import (
    STAGES,
    ConfigError,
    canonical,
    check_config,
    deep_merge,
    shard_count,
    stage_settings,
    task_definition,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "config.schema.yaml")


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def shipped() -> dict:
    return _load(ROOT / "config.yaml")


@pytest.fixture
def config(shipped) -> dict:
    return copy.deepcopy(shipped)


@pytest.fixture(autouse=True)
def _fresh_checkout(tmp_path, monkeypatch):
    """Run in an empty folder, as on a fresh checkout: no results/world exists (the schema path is absolute)."""
    monkeypatch.chdir(tmp_path)


def _problems(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(config, SCHEMA)
    return str(info.value)


# ---------------------------------------------------------------- whole configurations


def test_shipped_config_is_valid_on_a_fresh_checkout(config):
    assert not os.path.exists("results")
    assert check_config(config, SCHEMA) is None


def test_smoke_overlay_merged_over_config_is_valid(config):
    smoke = _load(ROOT / "configs" / "smoke.yaml")
    merged = deep_merge(config, smoke)
    check_config(merged, SCHEMA)
    # the overlay took effect where it says, and left the rest of each block alone
    assert merged["tasks"] == smoke["tasks"]
    assert merged["prompts"]["images"] == smoke["prompts"]["images"]
    assert merged["prompts"]["templates"] == config["prompts"]["templates"]
    assert merged["retrieval"]["knn"] == {**config["retrieval"]["knn"], **smoke["retrieval"]["knn"]}
    assert merged["world"]["pool"]["nsfw_fraction"] == config["world"]["pool"]["nsfw_fraction"]


def test_deep_merge_leaves_inputs_untouched():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    override = {"a": {"b": 2}, "e": {"f": 3}}
    before_base, before_override = copy.deepcopy(base), copy.deepcopy(override)
    merged = deep_merge(base, override)
    assert merged == {"a": {"b": 2, "c": [1, 2]}, "d": 1, "e": {"f": 3}}
    merged["a"]["c"].append(3)
    merged["e"]["f"] = 4
    assert base == before_base and override == before_override
    assert deep_merge(base, None) == base


def test_deep_merge_null_replaces_a_block():
    assert deep_merge({"world": {"seed": 0}}, {"world": None}) == {"world": None}


# ---------------------------------------------------------------- schema errors name the key


def test_unknown_key_names_dotted_key_and_unknown_name(config):
    config["retrieval"]["knn"]["neighbours"] = 5
    message = _problems(config)
    assert "'retrieval.knn'" in message
    assert "'neighbours'" in message
    assert "allowed: deduplicate, enabled, k, modalities" in message


def test_unknown_top_level_key(config):
    config["taskz"] = ["shapes"]
    message = _problems(config)
    assert "'taskz'" in message
    assert "<top level>" in message


def test_unknown_key_in_task_override_names_the_task(config):
    config["task_settings"]["shapes"]["finetune"] = {"learning_rate": 0.1}
    message = _problems(config)
    assert "'task_settings.shapes.finetune'" in message
    assert "'learning_rate'" in message


def test_wrong_type_names_key(config):
    config["finetune"]["lr"] = "fast"
    message = _problems(config)
    assert "config key 'finetune.lr'" in message
    assert "number" in message


def test_wrong_type_in_task_override_names_full_key(config):
    config["task_settings"]["shapes"]["retrieval"] = {"knn": {"k": "many"}}
    message = _problems(config)
    assert "config key 'task_settings.shapes.retrieval.knn.k'" in message


def test_every_schema_problem_is_listed_in_one_message(config):
    config["finetune"]["lr"] = "fast"
    config["synthetic"]["scheduler"] = "heun"
    message = _problems(config)
    assert "'finetune.lr'" in message and "'synthetic.scheduler'" in message


def test_empty_tasks(config):
    config["tasks"] = []
    message = _problems(config)
    assert "config key 'tasks'" in message


def test_missing_required_key_is_named(config):
    del config["seeds"]
    message = _problems(config)
    assert "'seeds'" in message


def test_task_without_task_settings(config):
    config["tasks"].append("flowers")
    message = _problems(config)
    assert "'tasks'" in message
    assert "'flowers'" in message
    assert "task_settings" in message


# ---------------------------------------------------------------- semantic and path errors


def test_retrieval_without_any_method(config):
    config["task_settings"]["shapes"]["retrieval"] = {"knn": {"enabled": False}, "substring": {"enabled": False}}
    message = _problems(config)
    assert "config key 'retrieval' (task shapes)" in message
    # only the task whose override disables both is reported
    assert "colored_shapes" not in message


def test_serve_without_base_url_and_without_world(config):
    config["world"] = None
    message = _problems(config)
    assert "config key 'pool.serve.base_url'" in message


def test_local_clip_dir_missing_without_world(config):
    config["world"] = None
    config["pool"]["serve"] = None
    config["clip"]["model"] = "local-dir:/nonexistent"
    message = _problems(config)
    assert "config key 'clip.model'" in message
    assert "'/nonexistent'" in message
    # without a world, nothing under results/world will be made, so those are reported too
    assert "config key 'task_settings.shapes.dataset.root'" in message


def test_local_clip_dir_that_exists_passes(config, tmp_path):
    (tmp_path / "myclip").mkdir()
    config["clip"]["model"] = f"local-dir:{tmp_path / 'myclip'}"
    check_config(config, SCHEMA)


def test_local_clip_dir_missing_with_world(config):
    """A world only excuses paths it will produce."""
    config["clip"]["model"] = "local-dir:/nonexistent/clip"
    message = _problems(config)
    assert "config key 'clip.model'" in message and "'/nonexistent/clip'" in message


def test_generator_path_missing(config):
    config["generator"]["model"] = "/nonexistent/sd"
    message = _problems(config)
    assert "config key 'generator.model'" in message
    assert "'/nonexistent/sd'" in message


def test_generator_hub_id_is_not_a_path(config):
    config["generator"]["model"] = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    check_config(config, SCHEMA)


def test_generator_path_not_checked_without_synthetic_source(config):
    config["generator"]["model"] = "/nonexistent/sd"
    config["sources"] = ["retrieved"]
    check_config(config, SCHEMA)


@pytest.mark.parametrize("root", ["results/world_other/shapes", "results/world/datasets2/shapes", "results/shapes"])
def test_world_excuses_only_its_own_folders(config, root):
    config["task_settings"]["shapes"]["dataset"]["root"] = root
    message = _problems(config)
    assert "config key 'task_settings.shapes.dataset.root'" in message
    assert repr(root) in message


def test_world_excuses_normalised_paths_inside_its_folders(config):
    config["task_settings"]["shapes"]["dataset"]["root"] = "./results/world/datasets//shapes/"
    check_config(config, SCHEMA)


def test_knn_enabled_without_index(config):
    config["pool"]["knn_index"] = None
    message = _problems(config)
    assert "config key 'pool.knn_index'" in message


def test_knn_service_replaces_the_index(config):
    config["pool"]["knn_index"] = None
    config["pool"]["knn_service"] = {"url": "http://127.0.0.1:1234", "indice_name": "laion"}
    check_config(config, SCHEMA)


def test_knn_index_and_service_together(config):
    config["pool"]["knn_service"] = {"url": "http://127.0.0.1:1234"}
    message = _problems(config)
    assert "'pool.knn_index' and 'pool.knn_service'" in message


def test_knn_service_needs_an_http_url_and_known_keys(config):
    config["pool"]["knn_index"] = None
    config["pool"]["knn_service"] = {"url": "127.0.0.1:1234", "k": 3}
    message = _problems(config)
    assert "config key 'pool.knn_service.url'" in message
    assert "config key 'pool.knn_service': unknown key(s) 'k'" in message


def test_substring_rewrite_is_checked(config):
    config["task_settings"]["shapes"]["retrieval"] = {"substring": {"rewrite": "all_words"}}
    message = _problems(config)
    assert "config key 'task_settings.shapes.retrieval.substring.rewrite'" in message
    config["task_settings"]["shapes"]["retrieval"] = {"substring": {"templates": ["{c} texture", "texture"]}}
    assert "config key 'task_settings.shapes.retrieval.substring.templates.1'" in _problems(config)
    config["task_settings"]["shapes"]["retrieval"] = {"substring": {"rewrite": "all_tokens", "templates": ["{c} car"]}}
    check_config(config, SCHEMA)


def test_prompts_llm_block_is_validated(config):
    config["prompts"]["llm"] = {"model": "meta-llama/Llama-2-7b-hf", "weights": {"class": 0.44, "background": 0.45,
                                                                                "relation": 0.11}}
    config["task_settings"]["shapes"]["prompts"] = {"llm": {"class_template": "{c} shape"}}
    check_config(config, SCHEMA)
    config["task_settings"]["shapes"]["prompts"] = {"llm": {"weights": {"scene": 1}}}
    message = _problems(config)
    assert "config key 'task_settings.shapes.prompts.llm.weights': unknown key(s) 'scene'" in message
    config["task_settings"]["shapes"]["prompts"] = {}
    config["prompts"]["llm"] = {"shots": 3}
    assert "config key 'prompts.llm': 'model' is a required property" in _problems(config)


def test_caption_file_and_class_sampling_keys_are_validated_and_merged_per_task(config):
    config["prompts"]["llm"] = {"model": "meta-llama/Llama-2-7b-hf", "examples_file": "ref/utils.py"}
    config["prompts"]["class_sampling"] = "uniform"
    config["task_settings"]["shapes"]["prompts"] = {
        "class_sampling": "turns",
        "llm": {"backgrounds_file": {"path": "ref/ds_background_dict.json", "key": "cars"}, "min_naming_share": 0.5}}
    check_config(config, SCHEMA)  # the files' existence is the preflight's to check, with where to get them
    shapes = stage_settings(config, "prompts", "shapes")
    assert shapes["class_sampling"] == "turns" and shapes["llm"]["examples_file"] == "ref/utils.py"
    assert shapes["llm"]["backgrounds_file"] == {"key": "cars", "path": "ref/ds_background_dict.json"}
    assert stage_settings(config, "prompts", "colored_shapes")["llm"].get("backgrounds_file") is None
    config["task_settings"]["shapes"]["prompts"] = {
        "class_sampling": "random", "llm": {"backgrounds_file": {"key": "cars"}, "min_naming_share": 80}}
    message = _problems(config)
    assert "config key 'task_settings.shapes.prompts.class_sampling'" in message
    assert "config key 'task_settings.shapes.prompts.llm.backgrounds_file': 'path' is a required property" in message
    assert "config key 'task_settings.shapes.prompts.llm.min_naming_share'" in message


def test_linear_probe_options_are_validated(config):
    config["evaluate"]["linear_probe"] = {}
    config["task_settings"]["shapes"]["evaluate"] = {"linear_probe": {"lr": 1.0e-3, "epochs": 40, "weight_decay": 0}}
    config["finetune"]["mode"] = "linear_probe"
    check_config(config, SCHEMA)
    config["evaluate"]["linear_probe"] = {"train_splits": ["test"]}
    config["finetune"]["mode"] = "head"
    message = _problems(config)
    assert "config key 'evaluate.linear_probe.train_splits.0'" in message
    assert "config key 'finetune.mode'" in message


def test_knn_index_not_needed_when_knn_disabled(config):
    config["pool"]["knn_index"] = None
    config["retrieval"]["knn"]["enabled"] = False
    check_config(config, SCHEMA)


def test_pool_metadata_glob_without_files(config, tmp_path):
    config["pool"]["metadata"] = str(tmp_path / "pool" / "*.parquet")
    message = _problems(config)
    assert "config key 'pool.metadata'" in message
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "part-0.parquet").write_bytes(b"")
    check_config(config, SCHEMA)


def test_isc_dedup_needs_its_weights_file(config, tmp_path):
    config["curate"]["dedup"] = {"descriptor": "isc", "threshold": 0.604169, "splits": ["test"]}
    message = _problems(config)
    assert "config key 'curate.dedup.weights': required where curate.dedup.descriptor is isc" in message
    assert f"(tasks {', '.join(config['tasks'])})" in message
    config["curate"]["dedup"]["weights"] = str(tmp_path / "isc_ft_v107.pth.tar")
    message = _problems(config)
    assert "config key 'curate.dedup.weights': ISC copy-detection weights file" in message
    assert repr(str(tmp_path / "isc_ft_v107.pth.tar")) in message
    (tmp_path / "isc_ft_v107.pth.tar").write_bytes(b"")  # its contents are the preflight's to check
    check_config(config, SCHEMA)


def test_isc_dedup_in_one_task_override(config):
    config["task_settings"]["shapes"]["curate"] = {"dedup": {"descriptor": "isc"}}
    message = _problems(config)
    assert "config key 'curate.dedup.weights': required where curate.dedup.descriptor is isc (task shapes)" in message
    config["curate"]["dedup"]["weights"] = 3
    assert "config key 'curate.dedup.weights': 3 is not of type 'string', 'null'" in _problems(config)


# ---------------------------------------------------------------- settings slices


def test_stage_settings_override_only_affects_its_task(config):
    original = copy.deepcopy(config)
    config["task_settings"]["shapes"]["finetune"] = {"lr": 0.5}
    check_config(config, SCHEMA)
    shapes = stage_settings(config, "finetune", "shapes")
    other = stage_settings(config, "finetune", "colored_shapes")
    assert shapes["lr"] == 0.5
    assert other["lr"] == original["finetune"]["lr"]
    # the rest of the block is the global one
    assert {k: v for k, v in shapes.items() if k != "lr"} == {
        k: canonical(v) for k, v in original["finetune"].items() if k != "lr"
    }
    assert other == canonical(original["finetune"])
    # the global block itself is untouched
    assert config["finetune"] == original["finetune"]


def test_stage_settings_merges_nested_overrides(config):
    config["task_settings"]["shapes"]["retrieval"] = {"knn": {"k": 5}}
    knn = stage_settings(config, "retrieval", "shapes")["knn"]
    assert knn == {"deduplicate": False, "enabled": True, "k": 5, "modalities": ["image", "text"], "nprobe": None}


def test_stage_settings_are_canonical(config):
    config["task_settings"]["shapes"]["finetune"] = {"betas": (0.8, 0.9)}
    settings = stage_settings(config, "finetune", "shapes")
    assert list(settings) == sorted(settings)
    assert settings["betas"] == [0.8, 0.9] and isinstance(settings["betas"], list)
    retrieval = stage_settings(config, "retrieval", "shapes")
    assert list(retrieval) == sorted(retrieval)
    assert list(retrieval["download"]) == sorted(retrieval["download"])
    # the repr is what Snakemake compares: it must not depend on the YAML's key order
    shuffled = copy.deepcopy(config)
    shuffled["retrieval"] = dict(reversed(list(shuffled["retrieval"].items())))
    shuffled["retrieval"]["download"] = dict(reversed(list(shuffled["retrieval"]["download"].items())))
    assert repr(stage_settings(shuffled, "retrieval", "shapes")) == repr(retrieval)


def test_stage_settings_every_stage_for_every_task(config):
    for task in config["tasks"]:
        for stage in STAGES:
            assert stage_settings(config, stage, task) == canonical(config[stage])


def test_stage_settings_share_nothing_with_the_config_or_each_other(config):
    config["task_settings"]["shapes"]["retrieval"] = {"knn": {"k": 5}}
    original = copy.deepcopy(config)
    first = stage_settings(config, "retrieval", "shapes")
    first["knn"]["k"] = 7
    first["download"]["processes"] = -1
    first["knn"]["modalities"].append("audio")
    assert config == original
    assert stage_settings(config, "retrieval", "shapes") == deep_merge(
        canonical(original["retrieval"]), {"knn": {"k": 5}})


def test_stage_settings_unknown_stage(config):
    with pytest.raises(KeyError, match="aggregate"):
        stage_settings(config, "aggregate", "shapes")


# ---------------------------------------------------------------- canonical


def test_canonical_sorts_nested_dict_keys():
    value = {"b": 1, "a": {"z": [{"y": 1, "x": 2}], "c": 3}}
    out = canonical(value)
    assert list(out) == ["a", "b"]
    assert list(out["a"]) == ["c", "z"]
    assert list(out["a"]["z"][0]) == ["x", "y"]
    assert json.dumps(out) == '{"a": {"c": 3, "z": [{"x": 2, "y": 1}]}, "b": 1}'


def test_canonical_converts_tuples_paths_and_keys():
    out = canonical({"t": (1, (2, 3)), "p": Path("/a/b"), "pp": pathlib.PurePosixPath("x/y"), 3: "int key"})
    assert out == {"3": "int key", "p": "/a/b", "pp": "x/y", "t": [1, [2, 3]]}
    assert type(out["t"]) is list and type(out["t"][1]) is list
    assert type(out["p"]) is str and type(out["pp"]) is str
    assert canonical([Path("q")]) == ["q"]


def test_canonical_keeps_scalars():
    assert canonical({"a": None, "b": 1.5, "c": True, "d": "s"}) == {"a": None, "b": 1.5, "c": True, "d": "s"}


@pytest.mark.parametrize("bad", [{1, 2}, frozenset({1}), {"a": [{"b": {3}}]}])
def test_canonical_rejects_sets(bad):
    with pytest.raises(TypeError, match="set"):
        canonical(bad)


# ---------------------------------------------------------------- task definitions and shards


def test_task_definition_fills_defaults(config):
    spec = task_definition(config, "shapes")
    templates = config["task_settings"]["shapes"]["templates"]
    assert spec["templates"] == templates
    assert spec["retrieval_templates"] == templates
    assert spec["filter_templates"] == templates
    assert spec["queries"] == {}
    assert spec["dataset"]["splits"] == {"test": "test", "train": "train", "val": "val"}
    assert spec["dataset"]["root"] == "results/world/datasets/shapes"


def test_task_definition_keeps_explicit_values_and_drops_stage_overrides(config):
    task = config["task_settings"]["patterned_shapes"]
    task["retrieval_templates"] = ["{c}"]
    task["dataset"]["splits"] = {"val": "valid"}
    task["finetune"] = {"lr": 0.5}
    spec = task_definition(config, "patterned_shapes")
    assert spec["retrieval_templates"] == ["{c}"]
    assert spec["filter_templates"] == task["templates"]
    assert spec["queries"] == {"plain circle": [["plain", "circle"], ["solid", "circle"], ["flat", "circle"]]}
    assert spec["dataset"]["splits"] == {"test": "test", "train": "train", "val": "valid"}
    assert not set(spec) & set(STAGES)
    assert list(spec) == sorted(spec)
    # the config is not modified
    assert "filter_templates" not in config["task_settings"]["patterned_shapes"]
    assert config["task_settings"]["patterned_shapes"]["dataset"]["splits"] == {"val": "valid"}


@pytest.mark.parametrize(
    "images, shard_size, expected",
    [(480, 240, 2), (481, 240, 3), (479, 240, 2), (1, 240, 1), (240, 240, 1), (0, 240, 1), (160, 80, 2)],
)
def test_shard_count(images, shard_size, expected):
    assert shard_count(images, shard_size) == expected


def test_knn_model_settings_keep_the_pretrained_tag_of_the_finetuned_clip():
    from synret.config import knn_model_settings

    config = {"clip": {"model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k", "cache_dir": "/c"}, "pool": {}}
    assert knn_model_settings(config) == {"model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k", "cache_dir": "/c"}
    config["pool"]["knn_model"] = "hf-hub:laion/CLIP-ViT-L-14-laion2B-s32B-b82K"
    assert knn_model_settings(config) == {
        "model": "hf-hub:laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "pretrained": None, "cache_dir": "/c"}
