"""Extra evaluation sets of a task: other test sets of the same classes, e.g. under distribution shift.

A task names them in ``task_settings.<task>.eval_sets`` (``synret.config.eval_sets_of``): each a dataset in
any task format (``synret.tasks``; ImageNet's shifted sets are usually CLIP_benchmark webdataset copies),
the dataset's split to read, and how its classes map onto the task's (``classes``):

- ``by_name`` (default): a set class is the task class of the same name; a name the task has several times
  (ImageNet's two "missile" classes) is matched occurrence by occurrence, in label order;
- ``by_index``: set label i is task label i;
- a list: the task label of each set label (null: that set class is not evaluated);
- a mapping ``{set class name: task class name or task label}``: only the listed set classes are evaluated.

A set may cover a subset of the task's classes (ImageNet-R and -A cover 200 of ImageNet's 1000). Images
of set classes that map nowhere do not count, and a cell's predictions on the set are restricted to the
task classes the set maps onto: the convention of ImageNet-R/-A and CLIP_benchmark, where a set of 200
classes is a 200-way problem. Accuracy is then comparable across models, not to the task's own
1000-way test accuracy.

The task's job for a set writes ``eval/<name>.parquet`` (key, label in the task's label space, path,
set_label) and ``eval/<name>.json`` (the task labels predictions are restricted to, and what was dropped);
a clip_benchmark set's images are unpacked to ``eval/<name>_images/``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .tasks import FORMATS, TaskDataError, clear_unpacked, native_split


def class_map(set_classnames: Sequence[str], task_classnames: Sequence[str], classes, where: str) -> list[int | None]:
    """The task label of each set label (None: not evaluated), per the ``classes`` setting; errors name
    ``where`` (the config key) and the classes that do not fit."""
    n_set, n_task = len(set_classnames), len(task_classnames)
    if classes == "by_index":
        if n_set > n_task:
            raise TaskDataError(f"{where}: by_index needs at most the task's {n_task} classes, the set has {n_set}")
        return list(range(n_set))
    if classes == "by_name":
        slots: dict[str, list[int]] = defaultdict(list)
        for label, name in enumerate(task_classnames):
            slots[name].append(label)
        used: dict[str, int] = defaultdict(int)
        out, unknown = [], []
        for name in set_classnames:
            if used[name] >= len(slots.get(name, [])):
                unknown.append(name)
                out.append(None)
                continue
            out.append(slots[name][used[name]])
            used[name] += 1
        if unknown:
            raise TaskDataError(
                f"{where}: by_name: set class(es) {sorted(set(unknown))[:5]}{' ...' if len(set(unknown)) > 5 else ''} "
                f"match no task class (or more often than the task has them); map them explicitly with a list or a "
                f"mapping (see config.schema.yaml)")
        return out
    if isinstance(classes, list):
        if len(classes) != n_set:
            raise TaskDataError(f"{where}: the list has {len(classes)} entries, the set has {n_set} classes")
        bad = [c for c in classes if c is not None and not 0 <= c < n_task]
        if bad:
            raise TaskDataError(f"{where}: task label(s) {bad[:5]} outside the task's {n_task} classes")
        return list(classes)
    if isinstance(classes, dict):
        task_index: dict[str, list[int]] = defaultdict(list)
        for label, name in enumerate(task_classnames):
            task_index[name].append(label)
        unknown_set = sorted(set(classes) - set(set_classnames))
        if unknown_set:
            raise TaskDataError(f"{where}: set class(es) {unknown_set[:5]} are not in the set's class names")
        out = [None] * n_set
        for set_label, name in enumerate(set_classnames):
            if name not in classes:
                continue
            target = classes[name]
            if isinstance(target, int):
                if not 0 <= target < n_task:
                    raise TaskDataError(f"{where}.{name}: task label {target} outside the task's {n_task} classes")
                out[set_label] = target
            elif len(task_index.get(target, [])) != 1:
                raise TaskDataError(f"{where}.{name}: task class {target!r} "
                                    + ("is not one of the task's" if not task_index.get(target) else
                                       "names several task classes; give its label instead"))
            else:
                out[set_label] = task_index[target][0]
        return out
    raise TaskDataError(f"{where}: unknown class mapping {classes!r}")


def build_eval_set(task_name: str, name: str, definition: dict, task: dict, manifest: str | Path,
                   classes_file: str | Path) -> dict:
    """Write one evaluation set's manifest and class file; returns the class file's content.

    ``definition``: ``{dataset, split, classes}`` (``config.eval_sets_of``); ``task``: the task's task.json.
    A clip_benchmark dataset's images are unpacked under ``<name>_images/`` beside the manifest."""
    where = f"task_settings.{task_name}.eval_sets.{name}"
    dataset, split = definition["dataset"], definition["split"]
    if dataset["format"] not in FORMATS:
        raise TaskDataError(f"{where}.dataset.format: unsupported {dataset['format']!r} (supported: {', '.join(FORMATS)})")
    manifest = Path(manifest)
    images = manifest.parent / f"{name}_images"
    if dataset["format"] == "clip_benchmark":
        clear_unpacked(images, dataset["root"])
    try:
        set_classnames, paths, set_labels = native_split(dataset, split, images)
    except TaskDataError as e:
        raise TaskDataError(f"{where}: {e}") from None
    if dataset.get("renames"):
        unknown = sorted(set(dataset["renames"]) - set(set_classnames))
        if unknown:
            raise TaskDataError(f"{where}.dataset.renames names unknown class(es) {unknown}")
        set_classnames = [dataset["renames"].get(c, c) for c in set_classnames]
    mapping = class_map(set_classnames, task["classnames"], definition["classes"], f"{where}.classes")
    base = images if dataset["format"] == "clip_benchmark" else Path(dataset["root"])
    rows = [(f"{name}/{os.path.relpath(p, base)}", mapping[y], p, y) for p, y in zip(paths, set_labels)
            if mapping[y] is not None]
    if not rows:
        raise TaskDataError(f"{where}: no image of split {split!r} belongs to a mapped class")
    keys, labels, kept_paths, kept_set_labels = map(list, zip(*rows))
    table = pa.table({"key": pa.array(keys, pa.string()), "label": pa.array(labels, pa.int32()),
                      "path": pa.array(kept_paths, pa.string()), "set_label": pa.array(kept_set_labels, pa.int32())})
    if len(set(keys)) != len(keys):
        raise TaskDataError(f"{where}: image keys are not unique")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, manifest)
    info = {
        "name": name,
        "classes": sorted({m for m in mapping if m is not None}),  # task labels predictions are restricted to
        "set_classnames": set_classnames,
        "set_to_task": mapping,
        "images": len(rows),
        "dropped_images": len(paths) - len(rows),
    }
    Path(classes_file).write_text(json.dumps(info, indent=2))
    return info


def read_eval_set(manifest: str | Path) -> tuple[str, "object", list[int]]:
    """(name, manifest table as pandas, restricted task labels) of a set written by ``build_eval_set``."""
    manifest = Path(manifest)
    info = json.loads(manifest.with_suffix(".json").read_text())
    return info["name"], pq.read_table(manifest).to_pandas(), info["classes"]
