"""Downstream tasks: class names, prompt templates and split manifests, written once per task.

Every later stage reads a task through these files, whatever the dataset's own format was:
``task.json`` (class names in label order, templates, substring queries) and one parquet manifest per
split with columns ``key`` (unique), ``label`` (int) and ``path`` (an image file).

Dataset formats (config key ``task_settings.<task>.dataset.format``), each read from its real on-disk
layout, never downloaded:

- ``imagefolder``: ``{root}/{split}/{class folder}/*`` (the demo world writes these);
- ``dtd``, ``fgvc_aircraft``, ``stanford_cars``: torchvision's own dataset classes, ``download=False``,
  in torchvision's layout under ``root`` (Stanford Cars: a local copy, its download is disabled upstream);
- ``flowers102``: torchvision's layout (``flowers-102/{jpg, imagelabels.mat, setid.mat}``) and class
  names, read with scipy (torchvision's class also insists on the md5 of the original .mat files);
- ``imagenet``: ``{root}/{split}/{wnid}/*`` (val sorted into class folders) with class names from
  open_clip's zero-shot metadata (the OpenAI names the paper uses) or a ``<folder> <name>`` file;
- ``clip_benchmark``: CLIP_benchmark's webdataset layout (``{root}/{split}/N.tar`` of image + ``.cls``
  samples, ``classnames.txt``, ``zeroshot_classification_templates.txt``; see ``synret.clip_benchmark``),
  the hub copies ``clip-benchmark/wds_*``. Its images are unpacked under the task's output folder
  (``images/{split}/{shard}/{key}.{ext}``), so that the manifests name image files as for every other
  format. Where the task config gives no ``templates``, the dataset's template file provides them
  (and, through them, the retrieval and filter templates). A split without a folder is an error, except
  train, which is optional (written empty) unless val is carved out of it.

A split the dataset lacks (Cars and ImageNet have no official val) is carved out of its train split
with ``val_from_train`` ({size, seed}), by ``torch.utils.data.random_split`` as in the paper's code.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .clip_benchmark import CLASSNAMES, LayoutError, extract_split, iter_samples, read_classnames, read_templates


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


class TaskDataError(ValueError):
    """A dataset on disk does not look like the format the config says."""


def folder_of(classname: str) -> str:
    """The folder name an image-folder dataset uses for a class name."""
    return classname.replace(" ", "_").replace("/", "_")


def class_folders(classnames: Sequence[str]) -> list[str]:
    """Each label's folder: the name's folder, suffixed with the label where two classes share a name
    (ImageNet's class names have "missile" and "sunglasses" twice): classes are labels, not names."""
    seen = Counter(folder_of(name) for name in classnames)
    return [folder_of(name) if seen[folder_of(name)] == 1 else f"{folder_of(name)}_{label}"
            for label, name in enumerate(classnames)]


def imagefolder_classnames(root: Path, split_dir: Path) -> list[str]:
    """Class names in label order: ``classnames.txt`` if the dataset has one, else sorted folder names."""
    listing = root / "classnames.txt"
    if listing.is_file():
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    return [f.replace("_", " ") for f in folders]


def load_imagefolder_split(root: str | Path, split: str, folder: str | None = None) -> tuple[list[str], pa.Table]:
    """Read ``{root}/{folder}/{class folder}/*`` into (class names, manifest table)."""
    root = Path(root)
    split_dir = root / (folder or split)
    if not split_dir.is_dir():
        raise TaskDataError(f"dataset split folder {str(split_dir)!r} does not exist")
    classnames = imagefolder_classnames(root, split_dir)
    keys, labels, paths = [], [], []
    for label, (name, folder) in enumerate(zip(classnames, class_folders(classnames))):
        class_dir = split_dir / folder
        if not class_dir.is_dir():
            raise TaskDataError(f"class {label} ({name!r}) has no folder {str(class_dir)!r}")
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                keys.append(f"{split}/{folder}/{file.name}")
                labels.append(label)
                paths.append(str(file))
    if not keys:
        raise TaskDataError(f"dataset split folder {str(split_dir)!r} holds no images")
    table = pa.table({"key": keys, "label": pa.array(labels, pa.int32()), "path": paths})
    return classnames, table


# ---------------------------------------------------------------- the benchmark formats

# Where each format's files come from, for error messages and the preflight.
DOWNLOAD_HINTS = {
    "imagefolder": "a folder with one sub-folder per split and per class",
    "dtd": "torchvision.datasets.DTD(root, download=True), or extract "
           "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz into {root}/dtd/",
    "fgvc_aircraft": "torchvision.datasets.FGVCAircraft(root, download=True), or extract "
                     "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz into {root}/",
    "flowers102": "torchvision.datasets.Flowers102(root, download=True), or put 102flowers.tgz (extracted: jpg/), "
                  "imagelabels.mat and setid.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ "
                  "into {root}/flowers-102/",
    "stanford_cars": "torchvision cannot download it any more (pytorch/vision#7545): put a copy of the original "
                     "release in torchvision's layout, {root}/stanford_cars/{cars_train, cars_test, "
                     "cars_test_annos_withlabels.mat, devkit/cars_meta.mat, devkit/cars_train_annos.mat}; or unpack a "
                     "webdataset copy (clip-benchmark/wds_cars) with `python -m synret.tasks wds-to-imagefolder` "
                     "and use format imagefolder",
    "imagenet": "ILSVRC-2012 from https://image-net.org/download-images (or the gated hub dataset "
                "ILSVRC/imagenet-1k), as {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG (val sorted "
                "into class folders)",
    "clip_benchmark": "a dataset in CLIP_benchmark's webdataset layout, e.g. `hf download "
                      "clip-benchmark/wds_imagenetv2 --repo-type dataset --local-dir {root}`: {root}/classnames.txt, "
                      "{root}/zeroshot_classification_templates.txt and {root}/<split>/0.tar, 1.tar, ...",
}
FORMATS = tuple(DOWNLOAD_HINTS)
FLOWERS_SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}


def required_paths(dataset: dict) -> list[str]:
    """The files and folders a dataset of this format must have (what the preflight checks)."""
    root, fmt = Path(dataset["root"]), dataset["format"]
    splits = dataset.get("splits", {})
    if fmt == "dtd":
        labels = root / "dtd" / "dtd" / "labels"
        part = dataset.get("partition", 1)
        return [str(root / "dtd" / "dtd" / "images")] + [str(labels / f"{s}{part}.txt") for s in _native_splits(dataset)]
    if fmt == "fgvc_aircraft":
        data = root / "fgvc-aircraft-2013b" / "data"
        level = dataset.get("annotation_level", "variant")
        return [str(data / "images"), str(data / f"{level}s.txt")] + [
            str(data / f"images_{level}_{s}.txt") for s in _native_splits(dataset)]
    if fmt == "flowers102":
        base = root / "flowers-102"
        return [str(base / "jpg"), str(base / "imagelabels.mat"), str(base / "setid.mat")]
    if fmt == "stanford_cars":
        base = root / "stanford_cars"
        out = [str(base / "devkit" / "cars_meta.mat")]
        for s in _native_splits(dataset):
            out += ([str(base / "devkit" / "cars_train_annos.mat"), str(base / "cars_train")] if s == "train"
                    else [str(base / "cars_test_annos_withlabels.mat"), str(base / "cars_test")])
        return out
    if fmt == "imagenet":
        out = [str(root / s) for s in _native_splits(dataset)]
        names = dataset.get("classnames", "open_clip")
        return out + ([] if names == "open_clip" else [names])
    if fmt == "clip_benchmark":  # train is optional unless val is carved out of it
        needed = ("train", "test") if dataset.get("val_from_train") else ("val", "test")
        return [str(root / CLASSNAMES)] + [str(root / s) for s in sorted({splits.get(s, s) for s in needed})]
    needed = ("train", "test") if dataset.get("val_from_train") else ("val", "test")  # else train is optional
    return [str(root / splits.get(s, s)) for s in needed]


def _native_splits(dataset: dict) -> list[str]:
    """The dataset's own split names that our train/val/test read (val comes from train when carved out)."""
    splits = {"train": "train", "val": "val", "test": "test", **dataset.get("splits", {})}
    ours = ["train", "test"] if dataset.get("val_from_train") else list(SPLITS)
    return sorted({splits[s] for s in ours})


def _missing(dataset: dict, split: str, error: Exception) -> TaskDataError:
    fmt = dataset["format"]
    hint = DOWNLOAD_HINTS[fmt].replace("{root}", str(dataset["root"]))
    return TaskDataError(
        f"{fmt} dataset under {str(dataset['root'])!r} (split {split!r}) is not readable: {error}. Expected: {hint}")


def _torchvision_rows(dataset: dict, split: str) -> tuple[list[str], list[str], list[int]]:
    """Class names, image paths and labels of one split through torchvision's dataset class."""
    from torchvision import datasets

    fmt, root = dataset["format"], dataset["root"]
    try:
        if fmt == "dtd":
            ds = datasets.DTD(root, split=split, partition=dataset.get("partition", 1), download=False)
            return list(ds.classes), [str(f) for f in ds._image_files], list(ds._labels)
        if fmt == "fgvc_aircraft":
            ds = datasets.FGVCAircraft(root, split=split, download=False,
                                       annotation_level=dataset.get("annotation_level", "variant"))
            return list(ds.classes), [str(f) for f in ds._image_files], list(ds._labels)
        ds = datasets.StanfordCars(root, split=split, download=False)
        return list(ds.classes), [str(f) for f, _ in ds._samples], [int(y) for _, y in ds._samples]
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise _missing(dataset, split, e) from None


def _flowers_rows(dataset: dict, split: str) -> tuple[list[str], list[str], list[int]]:
    from scipy.io import loadmat
    from torchvision.datasets import Flowers102

    base = Path(dataset["root"]) / "flowers-102"
    if split not in FLOWERS_SPLITS:
        raise TaskDataError(f"flowers102 has no split {split!r} (it has {sorted(FLOWERS_SPLITS)})")
    try:
        ids = loadmat(str(base / "setid.mat"), squeeze_me=True)[FLOWERS_SPLITS[split]]
        labels = loadmat(str(base / "imagelabels.mat"), squeeze_me=True)["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise _missing(dataset, split, e) from None
    ids = [int(i) for i in np.atleast_1d(ids)]
    labels = np.atleast_1d(labels)
    paths = [str(base / "jpg" / f"image_{i:05d}.jpg") for i in ids]
    return list(Flowers102.classes), paths, [int(labels[i - 1]) - 1 for i in ids]


def imagenet_classnames(dataset: dict, folders: list[str]) -> list[str]:
    """ImageNet class names in folder (wnid) order: open_clip's OpenAI names, or a ``<folder> <name>`` file."""
    names = dataset.get("classnames", "open_clip")
    if names == "open_clip":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        if len(folders) != len(IMAGENET_CLASSNAMES):
            raise TaskDataError(
                f"imagenet dataset {str(dataset['root'])!r} has {len(folders)} class folders; open_clip's class names "
                f"fit the {len(IMAGENET_CLASSNAMES)} ILSVRC-2012 classes (set dataset.classnames to a mapping file)")
        return list(IMAGENET_CLASSNAMES)
    try:
        lines = [line.split(None, 1) for line in Path(names).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise TaskDataError(f"imagenet class-name file {names!r} is not readable: {e}") from None
    mapping = {parts[0]: parts[1].strip() for parts in lines if len(parts) == 2}
    unknown = [f for f in folders if f not in mapping]
    if unknown:
        raise TaskDataError(f"imagenet class-name file {names!r} has no name for folder(s) {unknown[:5]}")
    return [mapping[f] for f in folders]


def _imagenet_rows(dataset: dict, split: str) -> tuple[list[str], list[str], list[int]]:
    split_dir = Path(dataset["root"]) / split
    if not split_dir.is_dir():
        raise _missing(dataset, split, FileNotFoundError(f"no folder {str(split_dir)!r}"))
    folders = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    classnames = imagenet_classnames(dataset, folders)
    paths, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(e.name for e in os.scandir(split_dir / folder)
                       if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(split_dir / folder / f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise _missing(dataset, split, FileNotFoundError(f"no images under {str(split_dir)!r}"))
    return classnames, paths, labels


def _clip_benchmark_rows(dataset: dict, split: str, images_dir: Path | None) -> tuple[list[str], list[str], list[int]]:
    if images_dir is None:
        raise ValueError("a clip_benchmark dataset needs a folder to unpack its images into")
    try:
        classnames = read_classnames(dataset["root"])
        _, paths, labels = extract_split(dataset["root"], split, Path(images_dir) / split)
    except LayoutError as e:
        raise TaskDataError(f"clip_benchmark dataset {str(dataset['root'])!r} (split {split!r}): {e}. Expected: "
                            + DOWNLOAD_HINTS["clip_benchmark"].replace("{root}", str(dataset["root"]))) from None
    return classnames, paths, labels


def clear_unpacked(folder: Path, root: str | Path) -> None:
    """Remove a folder of images unpacked by an earlier run, never one that holds the dataset itself."""
    folder, root = Path(folder).resolve(), Path(root).resolve()
    if root == folder or folder in root.parents:
        raise TaskDataError(f"dataset root {str(root)!r} lies inside {str(folder)!r}, where its images would be "
                            "unpacked: move the dataset")
    if folder.exists():
        shutil.rmtree(folder)


def dataset_templates(dataset: dict) -> list[str]:
    """The zero-shot templates a dataset ships (clip_benchmark: its template file)."""
    if dataset["format"] != "clip_benchmark":
        raise TaskDataError(f"a {dataset['format']} dataset ships no templates: give the task's templates in the config")
    try:
        return read_templates(dataset["root"])
    except LayoutError as e:
        raise TaskDataError(f"{e}; give the task's templates in the config or add the file") from None


def native_split(dataset: dict, split: str, images_dir: Path | None = None) -> tuple[list[str], list[str], list[int]]:
    """(class names, image paths, labels) of one of the dataset's own splits, in the dataset's order.
    ``images_dir``: where a packed format (clip_benchmark) unpacks its images, one folder per split."""
    fmt = dataset["format"]
    if fmt == "clip_benchmark":
        return _clip_benchmark_rows(dataset, split, images_dir)
    if fmt in ("dtd", "fgvc_aircraft", "stanford_cars"):
        return _torchvision_rows(dataset, split)
    if fmt == "flowers102":
        return _flowers_rows(dataset, split)
    if fmt == "imagenet":
        return _imagenet_rows(dataset, split)
    if fmt == "imagefolder":
        names, table = load_imagefolder_split(dataset["root"], split, split)
        return names, table.column("path").to_pylist(), table.column("label").to_pylist()
    raise TaskDataError(f"unsupported dataset format {fmt!r} (supported: {', '.join(FORMATS)})")


def carve_val(n: int, size: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (train, val) when val is carved out of a train split of n items.

    ``size`` < 1 is a fraction, otherwise a count; the draw is ``torch.utils.data.random_split`` with a
    generator seeded by ``seed``, the paper's call (Cars: [0.8, 0.2], ImageNet: [n - 50000, 50000], seed 42).
    """
    import torch
    from torch.utils.data import random_split

    if size <= 0 or (size >= 1 and (size != int(size) or size >= n)):
        raise TaskDataError(f"val_from_train.size {size} must be a fraction in (0, 1) or a count below {n}")
    lengths = [1 - size, size] if size < 1 else [n - int(size), int(size)]
    train, val = random_split(range(n), lengths, generator=torch.Generator().manual_seed(seed))
    return list(train.indices), list(val.indices)


def _apply_renames(classnames: list[str], renames: dict[str, str], root: str) -> list[str]:
    unknown = sorted(set(renames) - set(classnames))
    if unknown:
        raise TaskDataError(f"dataset.renames names unknown class(es) {unknown} of dataset {root!r}")
    return [renames.get(c, c) for c in classnames]


def _manifest(keys: list[str], labels: list[int], paths: list[str]) -> pa.Table:
    return pa.table({"key": pa.array(keys, pa.string()), "label": pa.array(labels, pa.int32()),
                     "path": pa.array(paths, pa.string())})


def load_benchmark_splits(dataset: dict, images_dir: str | Path | None = None) -> tuple[list[str], dict[str, pa.Table]]:
    """Class names and the train/val/test manifests of a dataset in one of the benchmark formats
    (``images_dir``: where a clip_benchmark dataset's images are unpacked)."""
    splits = {"train": "train", "val": "val", "test": "test", **dataset.get("splits", {})}
    carve = dataset.get("val_from_train")
    packed = dataset["format"] == "clip_benchmark"
    rows, classnames = {}, None
    for ours in SPLITS:
        if ours == "val" and carve:
            continue
        if packed and ours == "train" and not carve and not (Path(dataset["root"]) / splits["train"]).is_dir():
            rows["train"] = ([], [])  # an evaluation-only dataset: the train split is optional
            continue
        names, paths, labels = native_split(dataset, splits[ours], images_dir)
        if classnames is not None and names != classnames:
            raise TaskDataError(f"split {splits[ours]!r} of {dataset['root']!r} has different classes than the others")
        classnames, rows[ours] = names, (paths, labels)
    if carve:
        paths, labels = rows["train"]
        train_idx, val_idx = carve_val(len(paths), carve["size"], carve["seed"])
        rows["train"] = ([paths[i] for i in train_idx], [labels[i] for i in train_idx])
        rows["val"] = ([paths[i] for i in val_idx], [labels[i] for i in val_idx])
    root = Path(images_dir) if packed else Path(dataset["root"])
    tables = {}
    for ours, (paths, labels) in rows.items():
        keys = [f"{ours}/{os.path.relpath(p, root)}" for p in paths]
        tables[ours] = _manifest(keys, labels, paths)
    return _apply_renames(classnames, dataset.get("renames") or {}, dataset["root"]), tables


def wds_to_imagefolder(wds_root: str | Path, out: str | Path, splits: tuple[str, ...] = ("train", "test")) -> dict:
    """Unpack a benchmark in CLIP-benchmark's webdataset layout into an image-folder dataset.

    Input: ``{wds_root}/classnames.txt`` (one class a line, in label order) and ``{wds_root}/{split}/*.tar``
    whose samples hold an image (``.jpg``/``.jpeg``/``.png``/``.webp``) and its label (``.cls``), as in the
    hub copies ``clip-benchmark/wds_<name>`` (e.g. Stanford Cars, whose original download is gone).
    Output: ``{out}/{split}/{class folder}/{key}.{ext}`` and ``{out}/classnames.txt``, the ``imagefolder``
    format. Splits without shards are skipped. Returns the image count per split.
    """
    root, out = Path(wds_root), Path(out)
    try:
        classnames = read_classnames(root)
    except LayoutError as e:
        raise TaskDataError(f"webdataset benchmark {str(root)!r} has no readable classnames.txt ({e})") from None
    counts, folders = {}, class_folders(classnames)
    for split in splits:
        shards = sorted((root / split).glob("*.tar"))
        if not shards:
            continue
        counts[split] = 0
        for shard in shards:
            try:
                for key, ext, data, label in iter_samples(shard, len(classnames)):
                    target = out / split / folders[label] / f"{key.replace('/', '_')}.{ext}"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    counts[split] += 1
            except LayoutError as e:
                raise TaskDataError(str(e)) from None
    if not counts:
        raise TaskDataError(f"webdataset benchmark {str(root)!r} has no {'/'.join(splits)}/*.tar shards")
    for split in counts:  # every class has a folder, also where a split has no image of it
        for folder in folders:
            (out / split / folder).mkdir(parents=True, exist_ok=True)
    (out / "classnames.txt").write_text("\n".join(classnames) + "\n")
    return counts


def default_queries(classnames: list[str], queries: dict[str, list[list[str]]]) -> list[list[list[str]]]:
    """Substring query alternatives per label: the ones configured for its name, or the name itself
    as the reference queries it (see :func:`synret.substring.name_query`; classes that share a name
    share its queries)."""
    unknown = sorted(set(queries) - set(classnames))
    if unknown:
        raise TaskDataError(f"queries given for unknown class name(s) {unknown}")
    from .substring import name_query  # not at import: the Snakefile imports this module to plan

    return [queries[name] if name in queries else name_query(name) for name in classnames]


def build_task(name: str, definition: dict[str, Any], out_dir: str | Path) -> dict:
    """Write ``task.json`` and the split manifests of one task; returns the task dict."""
    dataset = definition["dataset"]
    if dataset["format"] not in FORMATS:
        raise TaskDataError(f"unsupported dataset format {dataset['format']!r} (supported: {', '.join(FORMATS)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classnames, sizes = None, {}
    by_folders = dataset["format"] == "imagefolder" and not dataset.get("val_from_train")
    if not by_folders:
        images = out / "images"  # a clip_benchmark dataset's images, unpacked afresh on every run
        if dataset["format"] == "clip_benchmark":
            clear_unpacked(images, dataset["root"])
        classnames, tables = load_benchmark_splits(dataset, images)
        for split, table in tables.items():
            pq.write_table(table, out / f"{split}.parquet")
            sizes[split] = table.num_rows
    for split in SPLITS if by_folders else ():
        folder = dataset["splits"][split]
        split_dir = Path(dataset["root"]) / folder
        if split == "train" and not split_dir.is_dir():
            # a training split is optional (only evaluation splits are required): write it empty
            pq.write_table(pa.table({"key": pa.array([], pa.string()), "label": pa.array([], pa.int32()),
                                     "path": pa.array([], pa.string())}), out / "train.parquet")
            sizes[split] = 0
            continue
        names, table = load_imagefolder_split(dataset["root"], split, folder)
        if classnames is not None and names != classnames:
            raise TaskDataError(f"split {split!r} of {dataset['root']!r} has different classes than the others")
        classnames = names
        pq.write_table(table, out / f"{split}.parquet")
        sizes[split] = table.num_rows
    templates = definition.get("templates") or dataset_templates(dataset)
    task = {
        "name": name,
        "classnames": classnames,
        "templates": templates,
        "retrieval_templates": definition.get("retrieval_templates") or templates,
        "filter_templates": definition.get("filter_templates") or templates,
        "queries": default_queries(classnames, definition["queries"]),
        "split_sizes": sizes,
    }
    (out / "task.json").write_text(json.dumps(task, indent=2))
    return task


def read_task(path: str | Path) -> dict:
    task = json.loads(Path(path).read_text())
    if isinstance(task.get("queries"), dict):  # written before queries were kept per label
        from .substring import name_query

        task["queries"] = [task["queries"].get(name) or name_query(name) for name in task["classnames"]]
    return task


if __name__ == "__main__":  # python -m synret.tasks wds-to-imagefolder <wds_root> <out> [split ...]
    import sys

    if len(sys.argv) < 4 or sys.argv[1] != "wds-to-imagefolder":
        sys.exit("usage: python -m synret.tasks wds-to-imagefolder <wds_root> <out> [split ...]")
    try:
        print(wds_to_imagefolder(sys.argv[2], sys.argv[3], tuple(sys.argv[4:]) or ("train", "test")))
    except TaskDataError as e:
        sys.exit(f"error: {e}")
