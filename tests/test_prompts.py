"""Tests of synret.prompts: the generator's prompt table and a task's retrieval queries."""

from __future__ import annotations

import collections
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from synret.prompts import (
    fill_prompt,
    generator_prompts,
    retrieval_queries,
    rewrite_alternatives,
    template_alternatives,
)
from synret.templates import fill_template

CLASSES = ["red star", "blue circle", "apple", "green square", "octagon"]


def _cfg(**over) -> dict:
    cfg = {
        "images": 53,
        "templates": ["a {c}", "a photo of a {c}", "a {c} on a {background} background", "a {c}, {attribute}"],
        "backgrounds": ["plain", "gradient", "noisy"],
        "attributes": ["small", "large", "slightly rotated"],
        "seed": 0,
    }
    cfg.update(over)
    return cfg


def test_deterministic_by_seed():
    a = generator_prompts(CLASSES, _cfg(), 10)
    b = generator_prompts(CLASSES, _cfg(), 10)
    assert a.equals(b)
    c = generator_prompts(CLASSES, _cfg(seed=1), 10)
    assert c.column("prompt").to_pylist() != a.column("prompt").to_pylist()
    # the seed changes only the phrasing, never which class an image is for
    assert c.column("label").equals(a.column("label"))


def test_table_layout():
    table = generator_prompts(CLASSES, _cfg(), 10)
    assert table.column_names == ["key", "label", "classname", "prompt", "shard"]
    assert table.schema.field("label").type == pa.int32()
    assert table.schema.field("shard").type == pa.int32()
    assert table.num_rows == 53
    keys = table.column("key").to_pylist()
    assert keys[0] == "s0000000" and keys[-1] == "s0000052"
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("images", [1, 4, 5, 53, 100])
def test_classes_take_turns_and_are_balanced(images):
    table = generator_prompts(CLASSES, _cfg(images=images), 7)
    labels = table.column("label").to_pylist()
    assert labels == [i % len(CLASSES) for i in range(images)]
    counts = collections.Counter(labels)
    if images >= len(CLASSES):
        assert set(counts) == set(range(len(CLASSES)))
    full = [counts.get(label, 0) for label in range(len(CLASSES))]
    assert max(full) - min(full) <= 1
    assert table.column("classname").to_pylist() == [CLASSES[label] for label in labels]


def test_uniform_class_sampling_draws_each_prompts_class_independently():
    """The reference's rule (synthesize_text.py): every caption's class is random.choice(classes)."""
    from scipy import stats

    images = 20000
    table = generator_prompts(CLASSES, _cfg(images=images, class_sampling="uniform"), 1000)
    labels = np.array(table.column("label").to_pylist())
    assert table.column("classname").to_pylist() == [CLASSES[label] for label in labels]
    assert generator_prompts(CLASSES, _cfg(images=images, class_sampling="uniform"), 1000).equals(table)  # seeded
    counts = np.bincount(labels, minlength=len(CLASSES))
    assert stats.chisquare(counts).pvalue > 0.001  # uniform over classes ...
    assert counts.max() - counts.min() > 1  # ... with multinomial spread, not exact balance
    pairs = np.zeros((len(CLASSES), len(CLASSES)), int)
    np.add.at(pairs, (labels[:-1], labels[1:]), 1)
    assert stats.chisquare(pairs.ravel()).pvalue > 0.001  # ... and independent of the previous prompt's class
    assert labels.tolist() != [i % len(CLASSES) for i in range(images)]


def test_uniform_class_sampling_keeps_the_phrasing_stream_and_the_shards():
    turns = generator_prompts(CLASSES, _cfg(images=200), 10).to_pylist()
    uniform = generator_prompts(CLASSES, _cfg(images=200, class_sampling="uniform"), 10).to_pylist()
    assert [r["shard"] for r in uniform] == [r["shard"] for r in turns]
    for a, b in zip(turns, uniform):  # the same template and phrases, another class name
        assert a["prompt"].replace(a["classname"], "{c}") == b["prompt"].replace(b["classname"], "{c}")
    assert generator_prompts(CLASSES, _cfg(class_sampling="turns"), 10).equals(generator_prompts(CLASSES, _cfg(), 10))
    with pytest.raises(ValueError, match=r"'prompts\.class_sampling'"):
        generator_prompts(CLASSES, _cfg(class_sampling="shuffle"), 10)


def test_every_shard_holds_every_class():
    table = generator_prompts(CLASSES, _cfg(images=50), 10)
    shards = table.column("shard").to_pylist()
    labels = table.column("label").to_pylist()
    for shard in set(shards):
        assert {label for s, label in zip(shards, labels) if s == shard} == set(range(len(CLASSES)))


@pytest.mark.parametrize("shard_size", [1, 7, 10, 53, 1000])
def test_shard_is_index_div_shard_size(shard_size):
    table = generator_prompts(CLASSES, _cfg(), shard_size)
    assert table.column("shard").to_pylist() == [i // shard_size for i in range(53)]


def test_every_prompt_contains_its_class_name():
    table = generator_prompts(CLASSES, _cfg(images=200), 50).to_pylist()
    for row in table:
        assert row["classname"] in row["prompt"]
        assert "{" not in row["prompt"] and "}" not in row["prompt"]


def test_all_templates_are_used():
    table = generator_prompts(CLASSES, _cfg(images=200), 50)
    prompts = table.column("prompt").to_pylist()
    assert any(p.startswith("a photo of a ") for p in prompts)
    assert any(" background" in p for p in prompts)
    assert any(", " in p for p in prompts)


def test_slots_filled_from_lists():
    cfg = _cfg(images=300, templates=["a {c} on a {background} background, {attribute}"])
    prompts = generator_prompts(CLASSES, cfg, 50).to_pylist()
    pattern = re.compile(r"^a (?P<c>.+) on a (?P<bg>\w+) background, (?P<attr>.+)$")
    seen_bg, seen_attr = set(), set()
    for row in prompts:
        m = pattern.match(row["prompt"])
        assert m, row["prompt"]
        assert m["c"] == row["classname"]
        assert m["bg"] in cfg["backgrounds"]
        assert m["attr"] in cfg["attributes"]
        seen_bg.add(m["bg"])
        seen_attr.add(m["attr"])
    # drawn at random: with 300 draws every phrase shows up
    assert seen_bg == set(cfg["backgrounds"])
    assert seen_attr == set(cfg["attributes"])


def test_relation_slot():
    cfg = _cfg(templates=["a {c} {relation}"], relations=["next to a tree"])
    prompts = generator_prompts(["dog"], cfg, 10).column("prompt").to_pylist()
    assert set(prompts) == {"a dog next to a tree"}


def test_article_placeholder():
    cfg = _cfg(templates=["{a/an} {c}"])
    prompts = generator_prompts(["apple", "star"], cfg, 10).column("prompt").to_pylist()
    assert prompts[:2] == ["an apple", "a star"]


@pytest.mark.parametrize("backgrounds", [[], None])
def test_empty_list_for_used_slot_raises(backgrounds):
    cfg = _cfg(templates=["a {c} on a {background} background"])
    if backgrounds is None:
        del cfg["backgrounds"]
    else:
        cfg["backgrounds"] = backgrounds
    with pytest.raises(ValueError, match=re.escape("prompts.backgrounds")):
        generator_prompts(CLASSES, cfg, 10)


def test_empty_list_for_unused_slot_is_fine():
    cfg = _cfg(templates=["a {c}", "a {c} on a {background} background"], attributes=[])
    table = generator_prompts(CLASSES, cfg, 10)
    assert table.num_rows == 53


def test_fill_prompt_names_the_attribute_slot():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=re.escape("prompts.attributes")):
        fill_prompt("a {c}, {attribute}", "cat", rng, {"attributes": []})


# ---------------------------------------------------------------- retrieval queries


def _task() -> dict:
    return {
        "classnames": ["apple", "red star"],
        "retrieval_templates": ["a photo of {a/an} {c}.", "{c}"],
        "queries": [[["apple"]], [["red", "star"], ["red star"], ["crimson", "star"]]],  # by label
    }


def test_retrieval_queries_rows():
    table = retrieval_queries(_task())
    assert table.schema.field("label").type == pa.int32()
    assert table.schema.field("terms").type == pa.list_(pa.string())
    rows = [(r["label"], r["kind"], r["query"], r["terms"]) for r in table.to_pylist()]
    assert rows == [
        (0, "knn", "a photo of an apple.", None),
        (0, "knn", "apple", None),
        (0, "substring", "apple", ["apple"]),
        (1, "knn", "a photo of a red star.", None),
        (1, "knn", "red star", None),
        (1, "substring", "red AND star", ["red", "star"]),
        (1, "substring", "red star", ["red star"]),
        (1, "substring", "crimson AND star", ["crimson", "star"]),
    ]


def test_retrieval_queries_knn_is_templates_times_classes():
    task = _task()
    task["classnames"] = ["a", "b", "c"]
    task["retrieval_templates"] = ["t1 {c}", "t2 {c}", "t3 {c}", "t4 {c}"]
    task["queries"] = [[[name]] for name in task["classnames"]]
    table = retrieval_queries(task).to_pylist()
    knn = [r for r in table if r["kind"] == "knn"]
    assert len(knn) == 12
    assert {(r["label"], r["query"]) for r in knn} == {
        (label, f"{t} {name}") for label, name in enumerate("abc") for t in ("t1", "t2", "t3", "t4")
    }


def test_retrieval_queries_empty_task():
    table = retrieval_queries({"classnames": [], "retrieval_templates": ["{c}"], "queries": []})
    assert table.num_rows == 0
    assert table.column_names == ["label", "kind", "query", "terms"]


# ---------------------------------------------------------------- substring query rewrites

CARS = ["AM General Hummer SUV 2000", "Chevrolet Silverado 2500HD Regular Cab 2012", "Mercedes-Benz Sprinter Van 2012"]


def test_rewrite_none_keeps_the_terms():
    task = _task()
    assert retrieval_queries(task, "none").equals(retrieval_queries(task))


def test_rewrite_all_tokens_splits_names_like_the_reference_cars_queries():
    task = {"classnames": CARS, "retrieval_templates": ["a photo of a {c}."], "queries": [[[c]] for c in CARS]}
    rows = [r for r in retrieval_queries(task, "all_tokens").to_pylist() if r["kind"] == "substring"]
    assert [r["terms"] for r in rows] == [
        ["AM", "General", "Hummer", "SUV", "2000"],
        ["Chevrolet", "Silverado", "2500HD", "Regular", "Cab", "2012"],
        ["Mercedes-Benz", "Sprinter", "Van", "2012"],  # a phrase, as the reference's "Mercedes Benz"
    ]
    assert rows[0]["query"] == "AM AND General AND Hummer AND SUV AND 2000"
    # kNN queries are untouched
    knn = [r["query"] for r in retrieval_queries(task, "all_tokens").to_pylist() if r["kind"] == "knn"]
    assert knn == [f"a photo of a {c}." for c in CARS]


def test_rewrite_all_tokens_dedups_words_and_alternatives():
    assert rewrite_alternatives([["red star", "star"], ["star", "red"], ["a & b"]], "all_tokens") == [
        ["red", "star"], ["star", "red"], ["a", "b"]]
    assert rewrite_alternatives([["St. Bernard"], ["St.  Bernard"]], "all_tokens") == [["St.", "Bernard"]]


def test_rewrite_all_tokens_matches_words_in_any_order():
    from synret.substring import TermMatcher

    name = "AM General Hummer SUV 2000"
    caption = "2000 Hummer SUV for sale, AM General original paint"
    for rewrite, hits in (("none", 0), ("all_tokens", 1)):
        table = retrieval_queries({"classnames": [name], "retrieval_templates": [], "queries": [[[name]]]},
                                  rewrite).to_pylist()
        matcher = TermMatcher((r["label"], r["query"], r["terms"]) for r in table)
        assert len(matcher.match(caption)) == hits


def test_unknown_rewrite_names_the_config_key():
    with pytest.raises(ValueError, match=r"'retrieval\.substring\.rewrite'.*all_tokens"):
        retrieval_queries(_task(), "every_token")


def test_substring_templates_make_the_reference_dtd_queries():
    from synret.substring import TermMatcher

    templates = ["{c} texture", "{c} pattern", "{c} thing", "{c} object"]
    task = {"classnames": ["banded", "zigzagged"], "retrieval_templates": [],
            "queries": [[["banded"]], [["zigzagged"], ["zig-zag"]]]}
    rows = retrieval_queries(task, templates=templates).to_pylist()
    assert [r["terms"] for r in rows if r["label"] == 0] == [[f"banded {w}"] for w in ("texture", "pattern", "thing",
                                                                                      "object")]
    assert len([r for r in rows if r["label"] == 1]) == 8
    matcher = TermMatcher((r["label"], r["query"], r["terms"]) for r in rows)
    assert [a.label for a in matcher.match("A BANDED pattern on a silk scarf")] == [0]
    assert matcher.match("a banded mongoose") == []
    assert [a.label for a in matcher.match("zig zag object")] == [1]


def test_substring_templates_then_rewrite():
    alternatives = template_alternatives([["rose", "flower"], ["rose"]], ["{c}", "{c}"])
    # each alternative's words fill the template as one phrase; repeated templates add nothing
    assert alternatives == [["rose flower"], ["rose"]]
    task = {"classnames": ["St. Bernard"], "retrieval_templates": [], "queries": [[["St. Bernard"]]]}
    rows = retrieval_queries(task, "all_tokens", ["{c} dog"]).to_pylist()
    assert [r["terms"] for r in rows] == [["St.", "Bernard", "dog"]]
    assert retrieval_queries(task, "none", None).equals(retrieval_queries(task))


def test_paper_config_makes_the_reference_substring_queries():
    from pathlib import Path

    import yaml

    from synret.config import deep_merge, stage_settings, task_definition
    from synret.substring import name_query

    root = Path(__file__).resolve().parents[1]
    config = deep_merge(yaml.safe_load((root / "config.yaml").read_text()),
                        yaml.safe_load((root / "configs" / "paper.yaml").read_text()))

    def substring_rows(task, classnames):
        settings = stage_settings(config, "retrieval", task)["substring"]
        queries = [task_definition(config, task)["queries"].get(c) or name_query(c) for c in classnames]
        table = retrieval_queries({"classnames": classnames, "retrieval_templates": [], "queries": queries},
                                  settings.get("rewrite", "none"), settings.get("templates"))
        return [r["query"] for r in table.to_pylist()]

    assert substring_rows("stanford_cars", ["AM General Hummer SUV 2000"]) == [
        "AM AND General AND Hummer AND SUV AND 2000"]
    assert substring_rows("dtd", ["banded"]) == ["banded texture", "banded pattern", "banded thing", "banded object"]
    assert substring_rows("flowers102", ["rose", "colt's foot", "daffodil"]) == [
        "rose AND flower", "colt's foot", "coltsfoot", "daffodil"]
    assert substring_rows("fgvc_aircraft", ["737-800"]) == ["737-800"]
    assert substring_rows("imagenet", ["ram (adult male sheep)", "tench"]) == ["ram", "adult male sheep", "tench"]
    assert substring_rows("imagenet", ["golden retriever", "St. Bernard"]) == [
        "golden AND retriever", "St. Bernard", "St Bernard", "Saint Bernard"]
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert set(task_definition(config, "imagenet")["queries"]) <= set(IMAGENET_CLASSNAMES)
    # captions: the reference's class suffixes and DTD's texture prompts
    assert stage_settings(config, "prompts", "stanford_cars")["llm"]["class_template"] == "{c} car"
    assert stage_settings(config, "prompts", "fgvc_aircraft")["llm"]["class_template"] == "{c} aircraft"
    weights = stage_settings(config, "prompts", "dtd")["llm"]["weights"]
    assert {k for k, w in weights.items() if w > 0} == {"texture"}


def test_fill_template_articles():
    assert fill_template("a photo of {a/an} {c}.", "apple") == "a photo of an apple."
    assert fill_template("a photo of {a/an} {c}.", "pear") == "a photo of a pear."
    assert fill_template("itap of a {}.", "dog") == "itap of a dog."


def test_prompt_jobs_do_not_import_torch():
    # the prompt and query jobs run next to the CLIP jobs; torch would cost them seconds of CPU at start
    code = "import sys, synret.prompts, synret.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
