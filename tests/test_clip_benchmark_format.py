"""The ``clip_benchmark`` task format: CLIP_benchmark's webdataset layout read into a task's manifests.

Fixtures are written by webdataset's own TarWriter (as CLIP_benchmark's exporter does), or by
``synret.clip_benchmark.write_split`` and then read back by webdataset's own reader.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from synret import clip_benchmark as cb
from synret.config import ConfigError, check_config, task_definition
from synret.tasks import FORMATS, TaskDataError, build_task, required_paths

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["red circle", "blue square", "tench"]
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}."]


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value % 256, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_cb(root: Path, n: dict[str, int], shards: int = 2, templates: bool = True) -> None:
    """A dataset in CLIP_benchmark's layout written with webdataset's TarWriter; sample i has label i % 3."""
    import webdataset as wds

    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    if templates:
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    for split, count in n.items():
        (root / split).mkdir()
        for shard in range(shards):
            with wds.TarWriter(str(root / split / f"{shard}.tar")) as sink:
                for i in range(shard, count, shards):
                    sink.write({"__key__": f"s{i:07d}", "png": _png(i), "cls": str(i % 3).encode()})
        (root / split / "nshards.txt").write_text(f"{shards}\n")


def _definition(dataset: dict, templates=None) -> dict:
    return {"dataset": dataset, "templates": templates, "retrieval_templates": None, "filter_templates": None,
            "queries": {}}


def _dataset(root: Path, **extra) -> dict:
    return {"format": "clip_benchmark", "root": str(root), "splits": {"train": "train", "val": "val", "test": "test"},
            **extra}


def test_a_clip_benchmark_task_unpacks_its_images_and_takes_the_datasets_templates(tmp_path):
    make_cb(tmp_path / "wds", {"train": 10, "test": 6})
    dataset = _dataset(tmp_path / "wds", val_from_train={"size": 0.2, "seed": 42})
    task = build_task("t", _definition(dataset), tmp_path / "task")
    assert task["classnames"] == CLASSES
    assert task["templates"] == task["retrieval_templates"] == task["filter_templates"] == TEMPLATES
    assert task["split_sizes"] == {"train": 8, "val": 2, "test": 6}
    test = pq.read_table(tmp_path / "task" / "test.parquet").to_pylist()
    assert len({r["key"] for r in test}) == 6
    for row in test:  # every row an unpacked image file under the task's folder, with its sample's label
        i = int(Path(row["path"]).stem[1:])
        assert Path(row["path"]).is_relative_to(tmp_path / "task" / "images" / "test")
        assert row["label"] == i % 3
        with Image.open(row["path"]) as img:
            assert np.asarray(img)[0, 0, 0] == i
    assert sorted(r["key"] for r in test)[0] == "test/test/0/s0000000.png"
    # the config's own templates win; a second run unpacks afresh (no stale files)
    (tmp_path / "wds" / "test" / "1.tar").unlink()
    (tmp_path / "wds" / "test" / "nshards.txt").write_text("1\n")
    task = build_task("t", _definition(dataset, ["{c}"]), tmp_path / "task")
    assert task["templates"] == ["{c}"] and task["split_sizes"]["test"] == 3
    assert len(list((tmp_path / "task" / "images" / "test").rglob("*.png"))) == 3


def test_an_evaluation_only_dataset_has_an_empty_train_split(tmp_path):
    make_cb(tmp_path / "wds", {"val": 3, "test": 3}, shards=1)
    task = build_task("t", _definition(_dataset(tmp_path / "wds")), tmp_path / "task")
    assert task["split_sizes"] == {"train": 0, "val": 3, "test": 3}
    assert required_paths(_dataset(tmp_path / "wds")) == [
        str(tmp_path / "wds" / "classnames.txt"), str(tmp_path / "wds" / "test"), str(tmp_path / "wds" / "val")]


def test_shards_are_read_in_numeric_order(tmp_path):
    root = tmp_path / "wds"
    cb.write_metadata(root, CLASSES, TEMPLATES)
    cb.write_split(root, "test", ((f"k{i:03d}", _png(i), i % 3) for i in range(12)), shard_size=1)
    assert [p.name for p in cb.split_shards(root, "test")][:3] == ["0.tar", "1.tar", "2.tar"]
    assert cb.split_shards(root, "test")[-1].name == "11.tar"
    keys, _, labels = cb.extract_split(root, "test", tmp_path / "out")
    assert keys == [f"{i}/k{i:03d}" for i in range(12)] and labels == [i % 3 for i in range(12)]


def test_written_splits_are_read_by_webdataset_as_clip_benchmark_reads_them(tmp_path):
    """CLIP_benchmark's reader: shards {0..n-1}.tar from nshards.txt, decoded with webdataset's ImageHandler."""
    import webdataset as wds

    root = tmp_path / "wds"
    cb.write_metadata(root, CLASSES, TEMPLATES)
    assert cb.write_split(root, "test", ((f"k{i}", _png(i), i % 3) for i in range(5)), shard_size=2) == 5
    n = int((root / "test" / "nshards.txt").read_text())
    assert n == 3
    pattern = str(root / "test" / f"{{0..{n - 1}}}.tar")
    ds = (wds.WebDataset(pattern, shardshuffle=False, nodesplitter=lambda s: s)
          .decode(wds.autodecode.ImageHandler("pil", extensions=["webp", "png", "jpg", "jpeg"]))
          .to_tuple(["webp", "png", "jpg", "jpeg"], "cls"))
    got = [(np.asarray(img)[0, 0, 0], label) for img, label in ds]
    assert got == [(i, i % 3) for i in range(5)]
    assert cb.read_templates(root) == TEMPLATES and cb.read_classnames(root) == CLASSES


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "classnames.txt").unlink(), r"classnames.txt' is not readable"),
    (lambda r: (r / "classnames.txt").write_text("a\n\nb\n"), r"classnames.txt' has a blank line 2"),
    (lambda r: [p.unlink() for p in (r / "test").glob("*.tar")], r"test' holds no .tar shards"),
    (lambda r: (r / "test" / "0.tar").write_bytes(b"not a tar"), r"0.tar' is not a readable tar file"),
    (lambda r: _rewrite(r / "test" / "0.tar", drop="cls"), r"0.tar': sample 's0000000' lacks a .cls label"),
    (lambda r: _rewrite(r / "test" / "0.tar", drop="png"), r"0.tar': sample 's0000000' lacks an image"),
    (lambda r: _rewrite(r / "test" / "0.tar", label=b"7"), r"0.tar': sample 's0000000' has label 7, beyond classnames"),
    (lambda r: _rewrite(r / "test" / "0.tar", label=b"x"), r"has label 'x', not an integer"),
])
def test_a_broken_dataset_is_an_error_naming_the_file(tmp_path, damage, message):
    make_cb(tmp_path / "wds", {"val": 3, "test": 3})
    damage(tmp_path / "wds")
    with pytest.raises(TaskDataError, match=message) as error:
        build_task("t", _definition(_dataset(tmp_path / "wds")), tmp_path / "task")
    assert "clip_benchmark dataset" in str(error.value)


def _rewrite(shard: Path, drop: str | None = None, label: bytes | None = None) -> None:
    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            members.append((m.name, tar.extractfile(m).read()))
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            if drop and name.endswith("." + drop):
                continue
            if label is not None and name.endswith(".cls"):
                data = label
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_templates_come_from_the_config_or_the_file_else_a_clear_error(tmp_path):
    make_cb(tmp_path / "wds", {"val": 3, "test": 3}, templates=False)
    with pytest.raises(TaskDataError, match="zeroshot_classification_templates.txt' is not readable.*give the task's"):
        build_task("t", _definition(_dataset(tmp_path / "wds")), tmp_path / "task")
    (tmp_path / "wds" / "zeroshot_classification_templates.txt").write_text("a photo of {}\n")
    with pytest.raises(TaskDataError, match=r"template\(s\) without \{c\}"):
        build_task("t", _definition(_dataset(tmp_path / "wds")), tmp_path / "task")
    assert build_task("t", _definition(_dataset(tmp_path / "wds"), ["a {c}"]), tmp_path / "task")["templates"] == ["a {c}"]


def _config_with(task: dict) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["task_settings"]["shapes"] = task
    return config


def test_the_schema_accepts_the_format_without_templates_and_the_preflight_checks_the_file(tmp_path):
    from synret.preflight import check_dataset, preflight_spec

    assert "clip_benchmark" in FORMATS
    make_cb(tmp_path / "wds", {"val": 3, "test": 3}, templates=False)
    config = _config_with({"dataset": {"format": "clip_benchmark", "root": str(tmp_path / "wds")}})
    check_config(config, str(ROOT / "config.schema.yaml"))
    assert task_definition(config, "shapes")["templates"] is None
    spec = preflight_spec(config)
    assert spec["dataset_templates"] == ["shapes"]
    problems = check_dataset("shapes", spec["datasets"]["shapes"], templates_file=True)
    assert [p.key for p in problems] == ["task_settings.shapes.dataset.root"]
    assert "zeroshot_classification_templates.txt" in problems[0].what
    assert "hf download clip-benchmark/wds_" in problems[0].how
    (tmp_path / "wds" / "zeroshot_classification_templates.txt").write_text("a {c}\n")
    assert check_dataset("shapes", spec["datasets"]["shapes"], templates_file=True) == []
    # other formats still need the config's templates
    with pytest.raises(ConfigError, match="task_settings.shapes': 'templates' is a required property"):
        check_config(_config_with({"dataset": {"format": "imagefolder", "root": str(tmp_path)}}),
                     str(ROOT / "config.schema.yaml"))
