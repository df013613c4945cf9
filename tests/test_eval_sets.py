"""Extra evaluation sets (synret.eval_sets): class mapping, the set's manifest, and a cell evaluated on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from synret import clip_benchmark as cb
from synret.config import ConfigError, check_config, eval_sets_of, task_definition
from synret.eval_sets import build_eval_set, class_map, read_eval_set
from synret.tasks import TaskDataError

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ring", "heart", "crescent"]


# ---------------------------------------------------------------- class mapping


def test_classes_map_by_name_by_index_by_list_and_by_mapping():
    task = ["tench", "missile", "goldfish", "missile"]
    assert class_map(["goldfish", "tench"], task, "by_name", "k") == [2, 0]
    # a name the task has twice: occurrence by occurrence (ImageNet's two "missile" classes)
    assert class_map(["missile", "tench", "missile"], task, "by_name", "k") == [1, 0, 3]
    assert class_map(["a", "b"], task, "by_index", "k") == [0, 1]
    assert class_map(["a", "b", "c"], task, [3, None, 0], "k") == [3, None, 0]
    assert class_map(["fish", "rocket", "x"], task, {"fish": "tench", "rocket": 3}, "k") == [0, 3, None]


@pytest.mark.parametrize("set_names, classes, message", [
    (["tench", "shark"], "by_name", r"k: by_name: set class\(es\) \['shark'\] match no task class"),
    (["missile", "missile", "missile"], "by_name", r"\['missile'\] match no task class \(or more often"),
    (["a"] * 5, "by_index", "by_index needs at most the task's 4 classes, the set has 5"),
    (["a", "b"], [0], "the list has 1 entries, the set has 2 classes"),
    (["a"], [9], r"task label\(s\) \[9\] outside the task's 4 classes"),
    (["a"], {"zebra": "tench"}, r"set class\(es\) \['zebra'\] are not in the set's class names"),
    (["a"], {"a": "shark"}, r"k.a: task class 'shark' is not one of the task's"),
    (["a"], {"a": "missile"}, "names several task classes; give its label instead"),
])
def test_a_mapping_that_does_not_fit_is_an_error_naming_the_key(set_names, classes, message):
    with pytest.raises(TaskDataError, match=message):
        class_map(set_names, ["tench", "missile", "goldfish", "missile"], classes, "k")


# ---------------------------------------------------------------- the set's manifest


def _png(value: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value % 256, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_clip_benchmark_set_of_some_classes_is_written_in_the_tasks_label_space(tmp_path):
    root = tmp_path / "wds_r"
    cb.write_metadata(root, ["star", "circle", "ufo"], ["a {c}."])
    cb.write_split(root, "test", ((f"k{i}", _png(i), i % 3) for i in range(9)))
    task = {"classnames": SHAPES}
    definition = {"dataset": {"format": "clip_benchmark", "root": str(root)}, "split": "test",
                  "classes": {"star": "star", "circle": 0}}  # ufo: not evaluated
    out = tmp_path / "task" / "eval"
    info = build_eval_set("shapes", "r", definition, task, out / "r.parquet", out / "r.json")
    assert info["classes"] == [0, 5] and info["images"] == 6 and info["dropped_images"] == 3
    assert info["set_to_task"] == [5, 0, None]
    name, table, classes = read_eval_set(out / "r.parquet")
    assert name == "r" and classes == [0, 5]
    assert sorted(zip(table["set_label"], table["label"])) == [(0, 5)] * 3 + [(1, 0)] * 3
    assert table["key"].is_unique and all(k.startswith("r/test/0/") for k in table["key"])
    for path in table["path"]:  # unpacked beside the manifest
        assert Path(path).is_file() and Path(path).is_relative_to(out / "r_images")
    assert json.loads((out / "r.json").read_text())["set_classnames"] == ["star", "circle", "ufo"]


def test_an_imagefolder_set_and_its_errors(tmp_path):
    root = tmp_path / "sketch"
    for label, name in enumerate(SHAPES[:3]):
        for i in range(2):
            path = root / "test" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_png(label))
    definition = {"dataset": {"format": "imagefolder", "root": str(root)}, "split": "test", "classes": "by_name"}
    info = build_eval_set("shapes", "sketch", definition, {"classnames": SHAPES}, tmp_path / "s.parquet",
                          tmp_path / "s.json")
    assert info["classes"] == [0, 1, 2] and info["images"] == 6
    assert pq.read_table(tmp_path / "s.parquet").column("key").to_pylist()[0] == "sketch/test/circle/0.png"
    with pytest.raises(TaskDataError, match=r"task_settings.shapes.eval_sets.sketch: dataset split folder .*absent' does not exist"):
        build_eval_set("shapes", "sketch", {**definition, "split": "absent"}, {"classnames": SHAPES},
                       tmp_path / "s.parquet", tmp_path / "s.json")
    with pytest.raises(TaskDataError, match=r"eval_sets.sketch.classes: by_name: set class\(es\) \['circle'"):
        build_eval_set("shapes", "sketch", definition, {"classnames": SHAPES[1:]}, tmp_path / "s.parquet",
                       tmp_path / "s.json")


# ---------------------------------------------------------------- config


def _config(eval_sets) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["task_settings"]["shapes"]["eval_sets"] = eval_sets
    return config


def test_eval_sets_are_validated_defaulted_and_kept_out_of_the_task_definition(tmp_path):
    plain = yaml.safe_load((ROOT / "config.yaml").read_text())
    config = _config({"r": {"dataset": {"format": "clip_benchmark", "root": str(tmp_path)},
                            "classes": {"star": 5}}})
    check_config(config, str(ROOT / "config.schema.yaml"))
    assert eval_sets_of(config, "shapes") == {"r": {
        "classes": {"star": 5}, "split": "test",
        "dataset": {"format": "clip_benchmark", "root": str(tmp_path),
                    "splits": {"test": "test", "train": "train", "val": "val"}}}}
    # adding a set changes no task job's params (it would rerun the whole task)
    assert task_definition(config, "shapes") == task_definition(plain, "shapes")
    for bad, message in (({"test": {"dataset": {"format": "imagefolder", "root": "x"}}}, "eval_sets"),
                         ({"r": {"dataset": {"format": "imagefolder", "root": "x"}, "classes": "by_magic"}},
                          "eval_sets.r.classes"),
                         ({"r": {"dataset": {"format": "imagefolder", "root": str(tmp_path / "nowhere")}}},
                          "eval_sets.r.dataset.root': dataset root")):
        with pytest.raises(ConfigError, match=message):
            check_config(_config(bad), str(ROOT / "config.schema.yaml"))


# ---------------------------------------------------------------- a cell evaluated on a set


def test_a_cell_evaluates_each_set_with_predictions_restricted_to_its_classes(tiny_clip_dir, shape_images, tmp_path,
                                                                            one_thread):
    from synret.cells import run_cell
    from synret.clip import load_clip
    from synret.finetune import build_classifier

    images, labels = shape_images
    rows = []
    for i in range(len(labels)):
        path = tmp_path / f"{i}.png"
        Image.fromarray(images[i]).save(path)
        rows.append({"key": f"k{i}", "label": int(labels[i]), "path": str(path)})
    test = pd.DataFrame(rows)
    subset = test[test["label"].isin([1, 4, 7])].reset_index(drop=True)
    task = {"classnames": SHAPES, "templates": ["a {c}."]}
    clip_cfg = {"model": f"local-dir:{tiny_clip_dir}", "pretrained": None, "cache_dir": None, "precision": "fp32"}
    cell = {"task": "t", "source": "zeroshot", "scale": 0, "seed": 0}
    record, _, predictions = run_cell(task, cell, clip_cfg, {"test": test}, {"batch_size": 64, "splits": ["test"]},
                                      log=lambda m: None, eval_sets={"part": (subset, [1, 4, 7]), "all": (test, list(range(10)))})
    # the whole set with every class competing is the test split again
    assert record["eval_sets"]["all"] == record["evaluation"]["test"]
    part = record["eval_sets"]["part"]
    assert part["n"] == len(subset) and part["top5"] is None  # three classes compete: no top-5
    # by hand: the classifier's logits over the three mapped classes only
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    model = build_classifier(clip, SHAPES, ["a {c}."], "cpu").eval()
    x = torch.stack([clip.preprocess_val(Image.open(p).convert("RGB")) for p in subset["path"]])
    with torch.no_grad():
        logits = model(x)
    expected = np.array([1, 4, 7])[logits[:, [1, 4, 7]].argmax(1).numpy()]
    assert part["top1"] == pytest.approx(float((expected == subset["label"].to_numpy()).mean()))
    pred = predictions.to_pandas()
    rows = pred[pred["split"] == "part"]
    assert list(rows["key"]) == list(subset["key"]) and list(rows["pred"]) == expected.tolist()
    assert rows["ranked"].map(len).eq(3).all() and set(np.concatenate(rows["ranked"].to_list())) <= {1, 4, 7}
    plain, _, _ = run_cell(task, cell, clip_cfg, {"test": test}, {"batch_size": 64, "splits": ["test"]},
                           log=lambda m: None)
    assert plain["eval_sets"] == {} and plain["top1"] == record["top1"]
    # with the linear probe too: the sets' predictions are kept beside the probe's
    probe_cfg = {"batch_size": 64, "splits": ["test"], "linear_probe": {"epochs": 2, "batch_size": 32, "warmup_steps": 1}}
    tables = {"train": test.iloc[::2].reset_index(drop=True), "val": test.iloc[1::4].reset_index(drop=True),
              "test": test}
    probed, _, predictions = run_cell(task, cell, clip_cfg, {"test": test}, probe_cfg, log=lambda m: None,
                                      probe_tables=tables, eval_sets={"part": (subset, [1, 4, 7])})
    assert probed["eval_sets"]["part"] == part and "lp_top1" in probed
    splits = set(zip(*[predictions.column(c).to_pylist() for c in ("evaluation", "split")]))
    assert splits == {("classifier", "test"), ("classifier", "part"), ("linear_probe", "test")}


def test_the_preflight_checks_each_sets_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the model check is not this test's business
    from synret.preflight import preflight_problems, preflight_spec

    root = tmp_path / "wds_v2"
    root.mkdir()
    config = _config({"v2": {"dataset": {"format": "clip_benchmark", "root": str(root)}, "classes": "by_index"}})
    spec = preflight_spec(config)
    assert spec["eval_sets"]["shapes"] == {"v2": eval_sets_of(config, "shapes")["v2"]["dataset"]}
    plain = yaml.safe_load((ROOT / "config.yaml").read_text())
    for task in plain["task_settings"].values():
        task.pop("eval_sets", None)
    assert "eval_sets" not in preflight_spec(plain)  # a config without sets: the spec as before
    spec = {"clip": {"model": "RN50", "pretrained": None}, "datasets": {}, "eval_sets": {"shapes": spec["eval_sets"]["shapes"]}}
    problems = [p for p in preflight_problems(spec) if p.key.startswith("task_settings")]
    assert [p.key for p in problems] == ["task_settings.shapes.eval_sets.v2.dataset.root"]
    assert "classnames.txt" in problems[0].what and "test" in problems[0].what
