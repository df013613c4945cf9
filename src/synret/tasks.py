"""Downstream tasks: class names, prompt templates and split manifests, written once per task.

Every later stage reads a task through these files, whatever the dataset's own format was:
``task.json`` (class names in label order, templates, substring queries) and one parquet manifest per
split with columns ``key`` (unique), ``label`` (int) and ``path`` (an image file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


class TaskDataError(ValueError):
    """A dataset on disk does not look like the format the config says."""


def folder_of(classname: str) -> str:
    """The folder name an image-folder dataset uses for a class name."""
    return classname.replace(" ", "_").replace("/", "_")


def imagefolder_classnames(root: Path, split_dir: Path) -> list[str]:
    """Class names in label order: ``classnames.txt`` if the dataset has one, else sorted folder names."""
    listing = root / "classnames.txt"
    if listing.is_file():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if len(set(names)) != len(names):
            raise TaskDataError(f"{listing}: class names are not unique")
        return names
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
    for label, name in enumerate(classnames):
        class_dir = split_dir / folder_of(name)
        if not class_dir.is_dir():
            raise TaskDataError(f"class {name!r} has no folder {str(class_dir)!r}")
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                keys.append(f"{split}/{folder_of(name)}/{file.name}")
                labels.append(label)
                paths.append(str(file))
    if not keys:
        raise TaskDataError(f"dataset split folder {str(split_dir)!r} holds no images")
    table = pa.table({"key": keys, "label": pa.array(labels, pa.int32()), "path": paths})
    return classnames, table


def default_queries(classnames: list[str], queries: dict[str, list[list[str]]]) -> dict[str, list[list[str]]]:
    """Substring query per class: the configured alternatives, or the class name itself."""
    unknown = sorted(set(queries) - set(classnames))
    if unknown:
        raise TaskDataError(f"queries given for unknown class name(s) {unknown}")
    return {name: queries.get(name, [[name]]) for name in classnames}


def build_task(name: str, definition: dict[str, Any], out_dir: str | Path) -> dict:
    """Write ``task.json`` and the split manifests of one task; returns the task dict."""
    dataset = definition["dataset"]
    if dataset["format"] != "imagefolder":
        raise TaskDataError(f"unsupported dataset format {dataset['format']!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classnames, sizes = None, {}
    for split in SPLITS:
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
    task = {
        "name": name,
        "classnames": classnames,
        "templates": definition["templates"],
        "retrieval_templates": definition["retrieval_templates"],
        "filter_templates": definition["filter_templates"],
        "queries": default_queries(classnames, definition["queries"]),
        "split_sizes": sizes,
    }
    (out / "task.json").write_text(json.dumps(task, indent=2))
    return task


def read_task(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
