"""Tests of synret.tasks: image-folder datasets on disk turned into task.json and split manifests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synret.tasks import TaskDataError, build_task, folder_of, load_imagefolder_split, read_task

SPLITS = {"train": "train", "val": "val", "test": "test"}


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)


def _dataset(root: Path, layout: dict[str, dict[str, int]], classnames: list[str] | None = None) -> Path:
    """layout: split folder -> class folder -> image count."""
    for split, classes in layout.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for folder, count in classes.items():
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _png(root / split / folder / f"{i:03d}.png", i)
    if classnames is not None:
        (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    return root


def _definition(root: Path, **over) -> dict:
    definition = {
        "dataset": {"format": "imagefolder", "root": str(root), "splits": dict(SPLITS)},
        "templates": ["a photo of a {c}."],
        "retrieval_templates": ["a {c}"],
        "filter_templates": ["a photo of a {c}.", "a {c}"],
        "queries": {},
    }
    definition.update(over)
    return definition


LAYOUT = {
    "train": {"circle": 2, "red_star": 3, "square": 1},
    "val": {"circle": 1, "red_star": 1, "square": 2},
    "test": {"circle": 2, "red_star": 2, "square": 2},
}


def test_folder_of():
    assert folder_of("red star") == "red_star"
    assert folder_of("AC/DC") == "AC_DC"
    assert folder_of("circle") == "circle"


def test_build_task_without_classnames_txt(tmp_path):
    root = _dataset(tmp_path / "data", LAYOUT)
    out = tmp_path / "task"
    task = build_task("shapes", _definition(root), out)
    assert task["classnames"] == ["circle", "red star", "square"]
    assert task["split_sizes"] == {"train": 6, "val": 4, "test": 6}
    assert task["name"] == "shapes"
    assert task["templates"] == ["a photo of a {c}."]
    assert task["retrieval_templates"] == ["a {c}"]
    assert task["filter_templates"] == ["a photo of a {c}.", "a {c}"]
    assert task["queries"] == [[["circle"]], [["red", "star"]], [["square"]]]  # words in any order, as FTS5
    assert read_task(out / "task.json") == task
    assert json.loads((out / "task.json").read_text())["classnames"] == task["classnames"]

    train = pq.read_table(out / "train.parquet")
    assert train.schema == pa.schema([("key", pa.string()), ("label", pa.int32()), ("path", pa.string())])
    assert train.column("key").to_pylist() == [
        "train/circle/000.png", "train/circle/001.png",
        "train/red_star/000.png", "train/red_star/001.png", "train/red_star/002.png",
        "train/square/000.png",
    ]
    assert train.column("label").to_pylist() == [0, 0, 1, 1, 1, 2]
    assert train.column("path").to_pylist() == [str(root / "train" / k.split("/", 1)[1]) for k in
                                               train.column("key").to_pylist()]
    test = pq.read_table(out / "test.parquet")
    assert test.column("label").to_pylist() == [0, 0, 1, 1, 2, 2]
    val = pq.read_table(out / "val.parquet")
    assert val.column("key").to_pylist() == ["val/circle/000.png", "val/red_star/000.png",
                                             "val/square/000.png", "val/square/001.png"]
    # keys are unique across all splits, and every path is a real image
    keys = train.column("key").to_pylist() + val.column("key").to_pylist() + test.column("key").to_pylist()
    assert len(set(keys)) == len(keys)
    for path in test.column("path").to_pylist():
        assert Image.open(path).size == (4, 4)


def test_build_task_with_classnames_txt(tmp_path):
    # the listing fixes the label order; names with spaces live in folders with underscores
    root = _dataset(tmp_path / "data", LAYOUT, classnames=["square", "red star", "circle"])
    task = build_task("shapes", _definition(root), tmp_path / "task")
    assert task["classnames"] == ["square", "red star", "circle"]
    train = pq.read_table(tmp_path / "task" / "train.parquet")
    rows = list(zip(train.column("key").to_pylist(), train.column("label").to_pylist()))
    assert rows == [
        ("train/square/000.png", 0),
        ("train/red_star/000.png", 1), ("train/red_star/001.png", 1), ("train/red_star/002.png", 1),
        ("train/circle/000.png", 2), ("train/circle/001.png", 2),
    ]


def test_classnames_txt_may_list_fewer_classes_than_folders(tmp_path):
    root = _dataset(tmp_path / "data", LAYOUT, classnames=["red star"])
    task = build_task("shapes", _definition(root), tmp_path / "task")
    assert task["classnames"] == ["red star"]
    assert task["split_sizes"] == {"train": 3, "val": 1, "test": 2}


def test_classes_that_share_a_name_stay_apart(tmp_path):
    """ImageNet names two classes "missile": classes are labels, each with its own folder."""
    from synret.tasks import class_folders

    assert class_folders(["circle", "red star", "circle"]) == ["circle_0", "red_star", "circle_2"]
    root = tmp_path / "data"
    for split in ("train", "val", "test"):
        for label, folder in enumerate(class_folders(["circle", "square", "circle"])):
            (root / split / folder).mkdir(parents=True)
            for i in range(label + 1):
                Image.new("RGB", (8, 8), (label, i, 0)).save(root / split / folder / f"{i}.png")
    (root / "classnames.txt").write_text("circle\nsquare\ncircle\n")
    task = build_task("shapes", _definition(root), tmp_path / "task")
    assert task["classnames"] == ["circle", "square", "circle"]
    assert task["queries"] == [[["circle"]], [["square"]], [["circle"]]]  # one per label, shared text
    train = pq.read_table(tmp_path / "task" / "train.parquet").to_pylist()
    assert [(r["key"], r["label"]) for r in train] == [
        ("train/circle_0/0.png", 0), ("train/square/0.png", 1), ("train/square/1.png", 1),
        ("train/circle_2/0.png", 2), ("train/circle_2/1.png", 2), ("train/circle_2/2.png", 2)]


def test_missing_train_split_gives_empty_manifest(tmp_path):
    layout = {k: v for k, v in LAYOUT.items() if k != "train"}
    root = _dataset(tmp_path / "data", layout)
    task = build_task("shapes", _definition(root), tmp_path / "task")
    assert task["split_sizes"] == {"train": 0, "val": 4, "test": 6}
    assert task["classnames"] == ["circle", "red star", "square"]
    train = pq.read_table(tmp_path / "task" / "train.parquet")
    assert train.num_rows == 0
    assert train.schema == pa.schema([("key", pa.string()), ("label", pa.int32()), ("path", pa.string())])


def test_missing_val_split_names_path(tmp_path):
    layout = {k: v for k, v in LAYOUT.items() if k != "val"}
    root = _dataset(tmp_path / "data", layout)
    with pytest.raises(TaskDataError, match=re.escape(str(root / "val"))):
        build_task("shapes", _definition(root), tmp_path / "task")


def test_missing_class_folder_names_class_and_path(tmp_path):
    root = _dataset(tmp_path / "data", LAYOUT, classnames=["circle", "hexagon"])
    with pytest.raises(TaskDataError) as info:
        build_task("shapes", _definition(root), tmp_path / "task")
    assert "'hexagon'" in str(info.value)
    assert str(root / "train" / "hexagon") in str(info.value)


def test_empty_split_names_path(tmp_path):
    layout = dict(LAYOUT, test={"circle": 0, "red_star": 0, "square": 0})
    root = _dataset(tmp_path / "data", layout)
    (root / "test" / "circle" / "notes.txt").write_text("not an image")
    with pytest.raises(TaskDataError, match=re.escape(str(root / "test"))) as info:
        build_task("shapes", _definition(root), tmp_path / "task")
    assert "no images" in str(info.value)


def test_inconsistent_classes_across_splits(tmp_path):
    layout = dict(LAYOUT, test={**LAYOUT["test"], "triangle": 1})
    root = _dataset(tmp_path / "data", layout)
    with pytest.raises(TaskDataError) as info:
        build_task("shapes", _definition(root), tmp_path / "task")
    assert "'test'" in str(info.value)
    assert str(root) in str(info.value)


def test_custom_split_folders(tmp_path):
    layout = {"train": LAYOUT["train"], "valid": LAYOUT["val"], "test": LAYOUT["test"]}
    root = _dataset(tmp_path / "data", layout)
    definition = _definition(root)
    definition["dataset"]["splits"] = {"train": "train", "val": "valid", "test": "test"}
    task = build_task("shapes", definition, tmp_path / "task")
    assert task["split_sizes"]["val"] == 4
    val = pq.read_table(tmp_path / "task" / "val.parquet")
    assert val.column("key").to_pylist()[0] == "val/circle/000.png"
    assert val.column("path").to_pylist()[0] == str(root / "valid" / "circle" / "000.png")


def test_only_image_files_are_listed(tmp_path):
    root = _dataset(tmp_path / "data", {"train": {"cat": 1}})
    _png(root / "train" / "cat" / "upper.PNG", 1)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "train" / "cat" / "photo.jpg")
    (root / "train" / "cat" / "labels.csv").write_text("x")
    (root / "train" / "cat" / ".hidden").write_text("x")
    names, table = load_imagefolder_split(root, "train")
    assert names == ["cat"]
    assert table.column("key").to_pylist() == ["train/cat/000.png", "train/cat/photo.jpg", "train/cat/upper.PNG"]


def test_configured_queries_are_kept(tmp_path):
    root = _dataset(tmp_path / "data", LAYOUT)
    queries = {"red star": [["red", "star"], ["crimson", "star"]]}
    task = build_task("shapes", _definition(root, queries=queries), tmp_path / "task")
    assert task["queries"] == [[["circle"]], queries["red star"], [["square"]]]


def test_queries_for_unknown_class(tmp_path):
    root = _dataset(tmp_path / "data", LAYOUT)
    with pytest.raises(TaskDataError, match="'hexagon'"):
        build_task("shapes", _definition(root, queries={"hexagon": [["hexagon"]]}), tmp_path / "task")


def test_unsupported_format(tmp_path):
    root = _dataset(tmp_path / "data", LAYOUT)
    definition = _definition(root)
    definition["dataset"]["format"] = "webdataset"
    with pytest.raises(TaskDataError, match="'webdataset'"):
        build_task("shapes", definition, tmp_path / "task")


def test_a_task_json_with_queries_by_name_reads_as_queries_by_label(tmp_path):
    """task.json files written before queries were kept per label still read (Snakemake does not rerun them)."""
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"classnames": ["circle", "red star"], "queries": {"red star": [["red", "star"]]}}))
    assert read_task(path)["queries"] == [[["circle"]], [["red", "star"]]]
