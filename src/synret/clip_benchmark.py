"""CLIP_benchmark's webdataset layout and its result JSON: read, written, and nothing else.

The layout (LAION-AI/CLIP_benchmark, ``build_wds_dataset``; the hub copies ``clip-benchmark/wds_<name>``
of ImageNet-V2, -Sketch, -R, -A, ObjectNet, Stanford Cars, ... are in it)::

    {root}/classnames.txt                              one class name a line, in label order
    {root}/zeroshot_classification_templates.txt       one template a line, the class name as {c}
    {root}/{split}/nshards.txt                         the shard count (clip_benchmark requires it)
    {root}/{split}/0.tar, 1.tar, ...                   samples: an image (.webp/.png/.jpg/.jpeg) + .cls

A sample's key is its member's path up to the first dot of the file name, as webdataset reads it.

``clip_benchmark eval`` writes one JSON per (model, dataset) with the keys of :func:`result_json`;
``clip_benchmark build`` flattens a set of them into one CSV.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
NSHARDS = "nshards.txt"
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's order of preference


class LayoutError(ValueError):
    """A folder does not hold a readable dataset in CLIP_benchmark's webdataset layout."""


def _lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LayoutError(f"{what} {str(path)!r} is not readable ({e.strerror or e})") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise LayoutError(f"{what} {str(path)!r} is empty")
    if "" in lines:
        raise LayoutError(f"{what} {str(path)!r} has a blank line {lines.index('') + 1} (one entry a line)")
    return lines


def read_classnames(root: str | Path) -> list[str]:
    """Class names in label order, from ``{root}/classnames.txt``."""
    return _lines(Path(root) / CLASSNAMES, "class-name file")


def read_templates(root: str | Path) -> list[str]:
    """Zero-shot templates from ``{root}/zeroshot_classification_templates.txt``; each must hold ``{c}``."""
    path = Path(root) / TEMPLATES
    templates = _lines(path, "template file")
    lacking = [t for t in templates if "{c}" not in t]
    if lacking:
        raise LayoutError(f"template file {str(path)!r}: template(s) without {{c}}: {lacking[:3]}")
    return templates


def _shard_order(path: Path) -> tuple:
    stem = path.name[: -len(".tar")]
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def split_shards(root: str | Path, split: str) -> list[Path]:
    """The tar shards of one split, in shard-number order (``{root}/{split}/*.tar``)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise LayoutError(f"no split folder {str(folder)!r}")
    shards = sorted(folder.glob("*.tar"), key=_shard_order)
    if not shards:
        raise LayoutError(f"split folder {str(folder)!r} holds no .tar shards")
    return shards


def _member_key(name: str) -> tuple[str, str]:
    """webdataset's split of a member name: key = path up to the file name's first dot, then the extension."""
    head, base = os.path.split(name[2:] if name.startswith("./") else name)
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def iter_samples(shard: str | Path, n_classes: int) -> Iterator[tuple[str, str, bytes, int]]:
    """(key, image extension, image bytes, label) of every sample of a shard, in tar order.

    Raises LayoutError naming the shard and the sample where one lacks an image or a ``.cls`` label,
    or has a label that is not an integer in [0, n_classes)."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile():
                    segments = member.name.replace("\\", "/").split("/")
                    if member.name.startswith("/") or ".." in segments or "\0" in member.name:
                        # its key would name a path outside the folder the samples are unpacked into
                        raise LayoutError(f"shard {str(shard)!r} has a member named {member.name!r}, an absolute "
                                          "or parent-relative path; not a webdataset shard to unpack")
                    key, ext = _member_key(member.name)
                    samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as e:
        raise LayoutError(f"shard {str(shard)!r} is not a readable tar file ({e})") from None
    for key, parts in samples.items():
        ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        if ext is None or "cls" not in parts:
            lacking = " and ".join(w for w, ok in (("an image", ext), ("a .cls label", "cls" in parts)) if not ok)
            raise LayoutError(f"shard {str(shard)!r}: sample {key!r} lacks {lacking} (it has {sorted(parts)})")
        text = parts["cls"].decode("utf-8", "replace").strip()
        if not re.fullmatch(r"-?\d+", text):
            raise LayoutError(f"shard {str(shard)!r}: sample {key!r} has label {text!r}, not an integer")
        if not 0 <= int(text) < n_classes:
            raise LayoutError(f"shard {str(shard)!r}: sample {key!r} has label {text}, beyond {CLASSNAMES} "
                              f"({n_classes} classes)")
        yield key, ext, parts[ext], int(text)


def extract_split(root: str | Path, split: str, out: str | Path) -> tuple[list[str], list[str], list[int]]:
    """Unpack one split's images to ``{out}/{shard}/{key}.{ext}``; returns (keys, image paths, labels),
    keys as ``{shard}/{key}``, in shard and tar order."""
    n_classes = len(read_classnames(root))
    keys, paths, labels = [], [], []
    for shard in split_shards(root, split):
        stem = shard.name[: -len(".tar")]
        for key, ext, data, label in iter_samples(shard, n_classes):
            target = Path(out) / stem / f"{key}.{ext}"
            if not target.resolve().is_relative_to(Path(out).resolve()):  # iter_samples refuses such keys
                raise LayoutError(f"shard {str(shard)!r}: sample {key!r} would be written outside {str(out)!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            keys.append(f"{stem}/{key}")
            paths.append(str(target))
            labels.append(label)
    return keys, paths, labels


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0  # fixed: the same samples give the same bytes
    tar.addfile(info, io.BytesIO(data))


def write_split(root: str | Path, split: str, samples: Iterable[tuple[str, bytes, int]], ext: str = "png",
                shard_size: int = 10000) -> int:
    """Write (key, encoded image, label) samples as ``{root}/{split}/0.tar, 1.tar, ...`` and ``nshards.txt``;
    returns the sample count. Keys may not contain dots (webdataset reads the first as the extension)."""
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.tar"):
        old.unlink()
    count, shard, tar = 0, 0, None
    try:
        for key, data, label in samples:
            if "." in key or "/" in key:
                raise ValueError(f"sample key {key!r} contains '.' or '/'")
            if tar is None or count % shard_size == 0 and count:
                if tar is not None:
                    tar.close()
                    shard += 1
                tar = tarfile.open(folder / f"{shard}.tar", "w")
            _add(tar, f"{key}.{ext}", data)
            _add(tar, f"{key}.cls", f"{int(label)}\n".encode())
            count += 1
    finally:
        if tar is not None:
            tar.close()
    if not count:
        raise ValueError(f"no samples for split {split!r} of {str(root)!r}")
    (folder / NSHARDS).write_text(f"{shard + 1}\n")
    return count


def write_metadata(root: str | Path, classnames: Sequence[str], templates: Sequence[str]) -> None:
    """``classnames.txt`` and ``zeroshot_classification_templates.txt``; names and templates are one line each."""
    bad = [t for t in templates if "{c}" not in t or "\n" in t]
    if bad:
        raise ValueError(f"templates must be one line with {{c}} each: {bad[:3]}")
    if any("\n" in c or not c.strip() for c in classnames):
        raise ValueError("class names must be non-empty single lines")
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / CLASSNAMES).write_text("\n".join(classnames) + "\n")
    (Path(root) / TEMPLATES).write_text("\n".join(templates) + "\n")


# ---------------------------------------------------------------- results


def result_json(dataset: str, model: str, pretrained: str, metrics: dict, language: str = "en") -> dict:
    """A zero-shot classification result as ``clip_benchmark eval`` writes it (cli.py ``run``: the keys
    dataset, model, pretrained, task, metrics, language; metrics acc1, acc5 and mean_per_class_recall, with
    acc5 NaN below 5 classes). ``metrics``: synret's ``{top1, top5, mean_per_class}``."""
    top5 = metrics.get("top5")
    return {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "task": "zeroshot_classification",
        "metrics": {"acc1": metrics["top1"], "acc5": float("nan") if top5 is None else top5,
                    "mean_per_class_recall": metrics["mean_per_class"]},
        "language": language,
    }


def write_result(path: str | Path, result: dict) -> None:
    """Write a result as clip_benchmark does (``json.dump``: NaN as the bare token ``NaN``, which its
    ``build`` reads back with ``json.load``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result))
