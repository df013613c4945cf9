"""The benchmark loaders of synret.tasks against tiny trees in each dataset's real on-disk layout.

Each fixture writes the files the real release ships (annotation text files, MATLAB .mat files written
with scipy, class folders) around a handful of 8 px JPEGs, so torchvision's own dataset classes read them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from synret.tasks import (
    FORMATS,
    TaskDataError,
    build_task,
    carve_val,
    load_benchmark_splits,
    read_task,
    required_paths,
)


def _jpg(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value % 256, np.uint8)).save(path, format="JPEG")


def _definition(dataset: dict) -> dict:
    return {"dataset": dataset, "templates": ["a photo of a {c}."], "retrieval_templates": ["a {c}"],
            "filter_templates": ["a {c}"], "queries": {}}


def _check_manifest(table, classnames):
    """Every row names an existing image and a valid label; keys are unique."""
    rows = table.to_pylist()
    assert len({r["key"] for r in rows}) == len(rows)
    for r in rows:
        assert 0 <= r["label"] < len(classnames)
        with Image.open(r["path"]) as img:
            assert img.size == (8, 8)


# ---------------------------------------------------------------- DTD


DTD_CLASSES = ["banded", "polka-dotted", "zigzagged"]


def make_dtd(root: Path, partition: int = 1) -> dict:
    """{root}/dtd/dtd/images/<class>/<class>_<i>.jpg and labels/{train,val,test}<partition>.txt."""
    data = root / "dtd" / "dtd"
    per_split = {"train": 2, "val": 1, "test": 3}
    (data / "labels").mkdir(parents=True)
    i = 0
    for split, n in per_split.items():
        lines = []
        for cls in DTD_CLASSES:
            for _ in range(n):
                name = f"{cls}_{i:04d}.jpg"
                _jpg(data / "images" / cls / name, i)
                lines.append(f"{cls}/{name}")
                i += 1
        (data / "labels" / f"{split}{partition}.txt").write_text("\n".join(lines) + "\n")
    return per_split


def test_dtd(tmp_path):
    per_split = make_dtd(tmp_path / "data")
    out = tmp_path / "task"
    task = build_task("dtd", _definition({"format": "dtd", "root": str(tmp_path / "data"), "partition": 1}), out)
    assert task["classnames"] == DTD_CLASSES
    assert task["split_sizes"] == {s: n * len(DTD_CLASSES) for s, n in per_split.items()}
    test = pq.read_table(out / "test.parquet")
    _check_manifest(test, DTD_CLASSES)
    for row in test.to_pylist():  # the label is the class folder the file sits in
        assert Path(row["path"]).parent.name == DTD_CLASSES[row["label"]]
    assert test.column("key")[0].as_py().startswith("test/dtd/dtd/images/")


def test_dtd_other_partition_reads_its_own_label_files(tmp_path):
    make_dtd(tmp_path / "data", partition=3)
    dataset = {"format": "dtd", "root": str(tmp_path / "data"), "partition": 3}
    classnames, tables = load_benchmark_splits(dataset)
    assert classnames == DTD_CLASSES and tables["val"].num_rows == 3
    with pytest.raises(TaskDataError, match="labels"):
        load_benchmark_splits({**dataset, "partition": 1})


# ---------------------------------------------------------------- FGVC-Aircraft


AIRCRAFT_VARIANTS = ["707-320", "A300B4", "F-16A/B", "Boeing 717"]


def make_aircraft(root: Path) -> dict:
    """{root}/fgvc-aircraft-2013b/data/{images/<id>.jpg, variants.txt, images_variant_<split>.txt}."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(AIRCRAFT_VARIANTS) + "\n")
    per_split, image_id = {"train": 1, "val": 2, "test": 2}, 1000000
    for split, n in per_split.items():
        lines = []
        for variant in AIRCRAFT_VARIANTS:
            for _ in range(n):
                _jpg(data / "images" / f"{image_id}.jpg", image_id)
                lines.append(f"{image_id} {variant}")
                image_id += 1
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return per_split


def test_fgvc_aircraft(tmp_path):
    per_split = make_aircraft(tmp_path / "data")
    out = tmp_path / "task"
    dataset = {"format": "fgvc_aircraft", "root": str(tmp_path / "data"), "annotation_level": "variant"}
    task = build_task("aircraft", _definition(dataset), out)
    assert task["classnames"] == AIRCRAFT_VARIANTS  # variants.txt order; names with '/' and spaces intact
    assert task["split_sizes"] == {s: n * len(AIRCRAFT_VARIANTS) for s, n in per_split.items()}
    val = pq.read_table(out / "val.parquet").to_pylist()
    _check_manifest(pq.read_table(out / "val.parquet"), AIRCRAFT_VARIANTS)
    assert [r["label"] for r in val] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_fgvc_aircraft_trainval_split_name(tmp_path):
    make_aircraft(tmp_path / "data")
    data = tmp_path / "data" / "fgvc-aircraft-2013b" / "data"
    trainval = (data / "images_variant_train.txt").read_text() + (data / "images_variant_val.txt").read_text()
    (data / "images_variant_trainval.txt").write_text(trainval)
    dataset = {"format": "fgvc_aircraft", "root": str(tmp_path / "data"), "splits": {"train": "trainval"}}
    _, tables = load_benchmark_splits(dataset)
    assert tables["train"].num_rows == 3 * len(AIRCRAFT_VARIANTS)


# ---------------------------------------------------------------- Flowers102


def make_flowers(root: Path) -> dict:
    """{root}/flowers-102/{jpg/image_<id>.jpg, imagelabels.mat, setid.mat}, labels 1-based as released."""
    base = root / "flowers-102"
    labels = np.array([1, 1, 2, 2, 102, 102, 1, 2, 102, 5], np.uint8)  # image i+1 has labels[i]
    for i in range(len(labels)):
        _jpg(base / "jpg" / f"image_{i + 1:05d}.jpg", i)
    savemat(base / "imagelabels.mat", {"labels": labels[None, :]})
    ids = {"trnid": [1, 3, 5], "valid": [2, 4, 6], "tstid": [7, 8, 9, 10]}
    savemat(base / "setid.mat", {k: np.array(v, np.uint16)[None, :] for k, v in ids.items()})
    return {"labels": labels, "ids": ids}


def test_flowers102(tmp_path):
    made = make_flowers(tmp_path / "data")
    out = tmp_path / "task"
    dataset = {"format": "flowers102", "root": str(tmp_path / "data"),
               "renames": {"globe-flower": "globe flower", "ball moss": "air plant"}}
    task = build_task("flowers", _definition(dataset), out)
    assert len(task["classnames"]) == 102
    assert task["classnames"][:2] == ["pink primrose", "hard-leaved pocket orchid"]
    assert task["classnames"][15] == "globe flower" and "air plant" in task["classnames"]
    assert task["split_sizes"] == {"train": 3, "val": 3, "test": 4}
    test = pq.read_table(out / "test.parquet")
    _check_manifest(test, task["classnames"])
    expected = [int(made["labels"][i - 1]) - 1 for i in made["ids"]["tstid"]]
    assert test.column("label").to_pylist() == expected == [0, 1, 101, 4]
    assert [Path(p).name for p in test.column("path").to_pylist()] == [
        "image_00007.jpg", "image_00008.jpg", "image_00009.jpg", "image_00010.jpg"]


def test_flowers102_rename_of_an_unknown_class_is_an_error(tmp_path):
    make_flowers(tmp_path / "data")
    with pytest.raises(TaskDataError, match="renames.*'no such flower'"):
        load_benchmark_splits({"format": "flowers102", "root": str(tmp_path / "data"),
                               "renames": {"no such flower": "x"}})


# ---------------------------------------------------------------- Stanford Cars


CAR_CLASSES = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", "smart fortwo Convertible 2012"]


def _annotations(fnames: list[str], classes: list[int]) -> np.ndarray:
    """A MATLAB struct array like the devkit's: bbox corners, 1-based class, file name."""
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    annos = np.zeros((1, len(fnames)), dtype=[(f, "O") for f in fields])
    for i, (fname, cls) in enumerate(zip(fnames, classes)):
        annos[0, i] = (np.uint8(0), np.uint8(0), np.uint8(7), np.uint8(7), np.uint8(cls), fname)
    return annos


def make_cars(root: Path, n_train: int = 20) -> None:
    """torchvision's layout: {root}/stanford_cars/{cars_train, cars_test, devkit/*.mat, cars_test_annos_withlabels.mat}."""
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.empty((1, len(CAR_CLASSES)), dtype=object)
    names[0, :] = CAR_CLASSES
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    train = [f"{i + 1:05d}.jpg" for i in range(n_train)]
    for i, f in enumerate(train):
        _jpg(base / "cars_train" / f, i)
    savemat(base / "devkit" / "cars_train_annos.mat",
            {"annotations": _annotations(train, [i % 3 + 1 for i in range(n_train)])})
    test = [f"{i + 1:05d}.jpg" for i in range(6)]
    for i, f in enumerate(test):
        _jpg(base / "cars_test" / f, i)
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": _annotations(test, [3, 2, 1, 3, 2, 1])})


CARS = {"format": "stanford_cars", "splits": {"train": "train", "test": "test"},
        "val_from_train": {"size": 0.2, "seed": 42}}


def test_stanford_cars_val_is_carved_from_train_as_in_the_paper(tmp_path):
    from torchvision.datasets import StanfordCars

    make_cars(tmp_path / "data")
    out = tmp_path / "task"
    task = build_task("cars", _definition({**CARS, "root": str(tmp_path / "data")}), out)
    assert task["classnames"] == CAR_CLASSES
    assert task["split_sizes"] == {"train": 16, "val": 4, "test": 6}
    train, val = (pq.read_table(out / f"{s}.parquet").to_pylist() for s in ("train", "val"))
    _check_manifest(pq.read_table(out / "test.parquet"), CAR_CLASSES)
    assert not {r["path"] for r in train} & {r["path"] for r in val}
    assert all(r["key"].startswith("val/stanford_cars/cars_train/") for r in val)
    # the same subsets as the paper's code: random_split(StanfordCars(train), [0.8, 0.2], seed 42)
    full = StanfordCars(str(tmp_path / "data"), split="train")
    ref_train, ref_val = torch.utils.data.random_split(full, [0.8, 0.2], generator=torch.Generator().manual_seed(42))
    assert [r["path"] for r in val] == [full._samples[i][0] for i in ref_val.indices]
    assert [r["label"] for r in train] == [full._samples[i][1] for i in ref_train.indices]
    test = pq.read_table(out / "test.parquet").column("label").to_pylist()
    assert test == [2, 1, 0, 2, 1, 0]


def test_carve_val_counts_and_fractions():
    train, val = carve_val(100, 10, 42)
    assert len(val) == 10 and sorted(train + val) == list(range(100))
    assert carve_val(100, 10, 42) == (train, val) and carve_val(100, 10, 0) != (train, val)
    assert len(carve_val(10, 0.2, 42)[1]) == 2
    with pytest.raises(TaskDataError, match="val_from_train.size"):
        carve_val(10, 10, 42)


# ---------------------------------------------------------------- ImageNet


def make_imagenet(root: Path, wnids: list[str], images: dict[str, int]) -> None:
    """{root}/{train,val}/<wnid>/*.JPEG; every folder exists, ``images`` says how many files a wnid holds."""
    for split in ("train", "val"):
        for wnid in wnids:
            (root / split / wnid).mkdir(parents=True)
            for i in range(images.get(wnid, 0)):
                _jpg(root / split / wnid / f"{wnid}_{split}_{i}.JPEG", i)


def test_imagenet_with_a_class_name_file(tmp_path):
    wnids = ["n01440764", "n01443537", "n15075141"]
    make_imagenet(tmp_path / "imagenet", wnids, {w: 5 for w in wnids})
    mapping = tmp_path / "names.txt"
    mapping.write_text("n15075141 toilet paper\nn01440764 tench\nn01443537 goldfish\n")
    dataset = {"format": "imagenet", "root": str(tmp_path / "imagenet"), "classnames": str(mapping),
               "splits": {"train": "train", "test": "val"}, "val_from_train": {"size": 3, "seed": 42}}
    task = build_task("imagenet", _definition(dataset), tmp_path / "task")
    assert task["classnames"] == ["tench", "goldfish", "toilet paper"]  # sorted-wnid order
    assert task["split_sizes"] == {"train": 12, "val": 3, "test": 15}
    test = pq.read_table(tmp_path / "task" / "test.parquet")
    _check_manifest(test, task["classnames"])
    assert all("/val/" in p for p in test.column("path").to_pylist())
    assert test.column("label").to_pylist() == [0] * 5 + [1] * 5 + [2] * 5


def test_imagenet_open_clip_names_need_the_1000_classes(tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    wnids = [f"n{i:08d}" for i in range(1000)]
    make_imagenet(tmp_path / "imagenet", wnids, {wnids[0]: 2, wnids[999]: 1})
    dataset = {"format": "imagenet", "root": str(tmp_path / "imagenet"), "splits": {"train": "train", "test": "val"}}
    classnames, tables = load_benchmark_splits({**dataset, "splits": {"train": "train", "val": "val", "test": "val"}})
    assert classnames == list(IMAGENET_CLASSNAMES) and classnames[0] == "tench"
    assert tables["test"].column("label").to_pylist() == [0, 0, 999]
    (tmp_path / "imagenet" / "val" / wnids[500]).rmdir()
    with pytest.raises(TaskDataError, match="999 class folders"):
        load_benchmark_splits(dataset)


def test_imagenet_name_file_missing_a_folder(tmp_path):
    make_imagenet(tmp_path / "imagenet", ["n1", "n2"], {"n1": 1, "n2": 1})
    mapping = tmp_path / "names.txt"
    mapping.write_text("n1 one\n")
    with pytest.raises(TaskDataError, match=r"no name for folder\(s\) \['n2'\]"):
        load_benchmark_splits({"format": "imagenet", "root": str(tmp_path / "imagenet"), "classnames": str(mapping)})


# ---------------------------------------------------------------- missing data and the preflight's list


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "imagefolder"])
def test_missing_dataset_names_root_and_how_to_get_it(tmp_path, fmt):
    root = tmp_path / "nothing_here"
    with pytest.raises(TaskDataError) as info:
        build_task("t", _definition({"format": fmt, "root": str(root)}), tmp_path / "task")
    message = str(info.value)
    assert str(root) in message and "Expected:" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("fmt, make", [("dtd", make_dtd), ("fgvc_aircraft", make_aircraft),
                                       ("flowers102", make_flowers), ("stanford_cars", make_cars)])
def test_required_paths_exist_in_a_complete_tree_and_not_in_an_empty_one(tmp_path, fmt, make):
    make(tmp_path / "data")
    dataset = {"format": fmt, "root": str(tmp_path / "data")}
    if fmt == "stanford_cars":
        dataset = {**CARS, **dataset}
    paths = required_paths(dataset)
    assert paths and all(Path(p).exists() for p in paths)
    empty = {**dataset, "root": str(tmp_path / "empty")}
    assert not any(Path(p).exists() for p in required_paths(empty))


def test_unsupported_format(tmp_path):
    with pytest.raises(TaskDataError, match="unsupported dataset format 'coco'"):
        build_task("t", _definition({"format": "coco", "root": str(tmp_path)}), tmp_path / "task")


def test_task_json_round_trips(tmp_path):
    make_dtd(tmp_path / "data")
    task = build_task("dtd", _definition({"format": "dtd", "root": str(tmp_path / "data")}), tmp_path / "task")
    assert read_task(tmp_path / "task" / "task.json") == task


# ---------------------------------------------------------------- a webdataset copy (e.g. clip-benchmark/wds_cars)


def make_wds(root: Path, n: dict[str, int], classnames: list[str] = CAR_CLASSES) -> None:
    """CLIP-benchmark's layout, written with webdataset's own TarWriter: classnames.txt + {split}/*.tar."""
    import io

    import webdataset as wds

    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    for split, count in n.items():
        (root / split).mkdir()
        for shard in range(2):
            with wds.TarWriter(str(root / split / f"{shard}.tar")) as sink:
                for i in range(shard, count, 2):
                    buf = io.BytesIO()
                    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(buf, format="WEBP")
                    sink.write({"__key__": f"s{i:07d}", "webp": buf.getvalue(), "cls": str(i % 3).encode()})


def test_webdataset_copy_unpacks_into_an_imagefolder_with_val_carved_from_train(tmp_path):
    from synret.tasks import wds_to_imagefolder

    make_wds(tmp_path / "wds", {"train": 10, "test": 6})
    counts = wds_to_imagefolder(tmp_path / "wds", tmp_path / "cars", ("train", "val", "test"))
    assert counts == {"train": 10, "test": 6}  # no val shards: skipped
    dataset = {"format": "imagefolder", "root": str(tmp_path / "cars"), "splits": {"train": "train", "test": "test"},
               "val_from_train": {"size": 0.2, "seed": 42}}
    task = build_task("cars", _definition(dataset), tmp_path / "task")
    assert task["classnames"] == CAR_CLASSES  # from classnames.txt, '/' kept in the name
    assert task["split_sizes"] == {"train": 8, "val": 2, "test": 6}
    test = pq.read_table(tmp_path / "task" / "test.parquet").to_pylist()
    assert sorted((Path(r["path"]).name, r["label"]) for r in test) == [(f"s{i:07d}.webp", i % 3) for i in range(6)]
    assert (tmp_path / "cars" / "test" / "Ram_C_V_Cargo_Van_Minivan_2012").is_dir()
    assert required_paths(dataset) == [str(tmp_path / "cars" / "train"), str(tmp_path / "cars" / "test")]


def test_webdataset_classes_that_share_a_name_keep_their_own_images(tmp_path):
    """ImageNet's copy names two classes "missile": unpacked, each label keeps its own folder and images."""
    from synret.tasks import wds_to_imagefolder

    make_wds(tmp_path / "wds", {"train": 6, "test": 6}, classnames=["missile", "tench", "missile"])
    wds_to_imagefolder(tmp_path / "wds", tmp_path / "inet")
    assert sorted(p.name for p in (tmp_path / "inet" / "test").iterdir()) == ["missile_0", "missile_2", "tench"]
    dataset = {"format": "imagefolder", "root": str(tmp_path / "inet"), "splits": {"train": "train", "test": "test"},
               "val_from_train": {"size": 0.5, "seed": 0}}
    build_task("inet", _definition(dataset), tmp_path / "task")
    test = pq.read_table(tmp_path / "task" / "test.parquet").to_pylist()
    assert sorted((Path(r["path"]).name, r["label"]) for r in test) == [(f"s{i:07d}.webp", i % 3) for i in range(6)]


def test_webdataset_converter_errors_name_the_problem(tmp_path):
    from synret.tasks import wds_to_imagefolder

    with pytest.raises(TaskDataError, match="no readable classnames.txt"):
        wds_to_imagefolder(tmp_path / "absent", tmp_path / "out")
    make_wds(tmp_path / "wds", {"test": 2})
    (tmp_path / "wds" / "classnames.txt").write_text("only one class\n")
    with pytest.raises(TaskDataError, match="label 1, beyond classnames.txt"):
        wds_to_imagefolder(tmp_path / "wds", tmp_path / "out")


def test_task_jobs_track_a_benchmarks_own_files_not_the_shared_root(tmp_path):
    from synret.config import dataset_inputs

    make_dtd(tmp_path / "data")
    dtd = {"format": "dtd", "root": str(tmp_path / "data")}
    assert dataset_inputs(dtd) == required_paths(dtd) and str(tmp_path / "data") not in dataset_inputs(dtd)
    assert dataset_inputs({"format": "flowers102", "root": str(tmp_path / "data")}) == []  # missing: preflight's job
    assert dataset_inputs({"format": "imagefolder", "root": "results/world/datasets/x"}) == ["results/world/datasets/x"]
