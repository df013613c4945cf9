"""How many images each split of a task has, known before the task's manifests exist.

Job sizing (``synret.resources``) needs the number of evaluation and training images of a task at plan
time, when ``results/tasks/<task>/*.parquet`` may not exist yet. For the benchmark formats the sizes
are published facts of the datasets (``KNOWN_SPLIT_SIZES``, sources beside each entry); a split carved
out of train (``val_from_train``) is sized as ``tasks.carve_val`` draws it. The demo world's image
folders are sized from the world's config; other datasets are counted: the task's manifests when they
exist, else the files under the dataset's split folders.

Kept free of heavy imports (pyarrow only where a manifest is counted): the Snakefile imports it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .config import WORLD_PRODUCTS, produced_by_world, task_definition

SPLITS = ("train", "val", "test")

# Images per split, keyed by dataset format and the dataset's own split name (what a task's
# ``dataset.splits`` maps our train/val/test to).
KNOWN_SPLIT_SIZES: dict[str, dict[str, int]] = {
    # ILSVRC-2012 (Russakovsky et al., "ImageNet Large Scale Visual Recognition Challenge", IJCV 2015, Table 2;
    # image-net.org/challenges/LSVRC/2012): 1,281,167 training and 50,000 validation images (the paper's test).
    "imagenet": {"train": 1_281_167, "val": 50_000},
    # DTD (Cimpoi et al., "Describing Textures in the Wild", CVPR 2014): 5,640 images of 47 classes; each of
    # its 10 partitions splits every class 40/40/40, so every partition has 1,880 train, val and test images.
    "dtd": {"train": 1_880, "val": 1_880, "test": 1_880},
    # FGVC-Aircraft 2013b (Maji et al., "Fine-Grained Visual Classification of Aircraft", arXiv:1306.5151):
    # 10,000 images, train 3,334 / val 3,333 (together trainval 6,667) / test 3,333, at every annotation level.
    "fgvc_aircraft": {"train": 3_334, "val": 3_333, "trainval": 6_667, "test": 3_333},
    # Stanford Cars (Krause et al., "3D Object Representations for Fine-Grained Categorization", 3dRR 2013):
    # 16,185 images of 196 classes, 8,144 train and 8,041 test.
    "stanford_cars": {"train": 8_144, "test": 8_041},
    # Oxford Flowers-102 (Nilsback & Zisserman, ICVGIP 2008; setid.mat): 8,189 images, 10 per class for train
    # and for val (1,020 each), the remaining 6,149 for test.
    "flowers102": {"train": 1_020, "val": 1_020, "test": 6_149},
}

# A split of a dataset that nothing above describes and that cannot be counted yet (an image folder that
# a job will make): sized as large as ImageNet's evaluation split, so that the request errs on the safe side.
UNKNOWN_SPLIT_SIZE = 50_000


def carved_sizes(n: int, size: float) -> tuple[int, int]:
    """(train, val) sizes when val is carved out of a train split of ``n`` images (``tasks.carve_val``):
    a count, or a fraction split as ``torch.utils.data.random_split`` does (floors, then the remainder
    one at a time from the first part)."""
    if size >= 1:
        return n - int(size), int(size)
    lengths = [int(math.floor(n * frac)) for frac in (1 - size, size)]
    for i in range(n - sum(lengths)):
        lengths[i % 2] += 1
    return lengths[0], lengths[1]


def _world_sizes(config: dict, dataset: dict) -> dict[str, int] | None:
    """Split sizes of a demo-world image folder, from the world's config (classes x images per class)."""
    root = os.path.normpath(dataset["root"])
    base = os.path.normpath(WORLD_PRODUCTS["datasets"])
    if not produced_by_world(config, root) or os.path.dirname(root) != base:
        return None
    spec = config["world"]["datasets"].get(os.path.basename(root))
    if spec is None:
        return None
    from .world.render import FACTORS  # numpy only

    classes = 1
    for factor in spec["factors"]:
        values = (spec.get("values") or {}).get(factor)
        classes *= len(values) if values is not None else len(FACTORS[factor])
    return {s: classes * int(spec["per_class"][s]) for s in SPLITS}


def _manifest_rows(path: Path) -> int | None:
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def _files_under(folder: Path) -> int | None:
    if not folder.is_dir():
        return None
    from .tasks import IMAGE_SUFFIXES

    return sum(1 for _, _, files in os.walk(folder) for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)


def split_sizes(config: dict, task: str, results: str = "results") -> dict[str, int]:
    """Images in the task's train, val and test splits: ``{"train": n, "val": n, "test": n}``.

    Benchmark formats from ``KNOWN_SPLIT_SIZES``, the demo world's datasets from its config; otherwise the
    task's manifests under ``results`` where they exist, the files of the split's folder (not of a
    clip_benchmark dataset's tars), or ``UNKNOWN_SPLIT_SIZE``."""
    dataset = task_definition(config, task)["dataset"]
    names = dataset["splits"]
    carve = dataset.get("val_from_train")
    known = KNOWN_SPLIT_SIZES.get(dataset["format"])
    if known is not None:
        sizes = {s: known[names[s]] for s in SPLITS if not (s == "val" and carve)}
        if carve:
            sizes["train"], sizes["val"] = carved_sizes(sizes["train"], carve["size"])
        return sizes
    world = _world_sizes(config, dataset)
    if world is not None:
        return world
    counted = {s: _manifest_rows(Path(results, "tasks", task, f"{s}.parquet")) for s in SPLITS}
    if all(n is not None for n in counted.values()):
        return counted
    root = Path(dataset["root"])
    # a clip_benchmark dataset's images are packed in tars: not counted before its task job unpacks them
    packed = dataset["format"] == "clip_benchmark"
    sizes = {s: None if packed else _files_under(root / names[s]) for s in SPLITS if not (s == "val" and carve)}
    if carve and sizes["train"] is not None:
        sizes["train"], sizes["val"] = carved_sizes(sizes["train"], carve["size"])
    out = {}
    for split in SPLITS:
        n = counted[split] if counted[split] is not None else sizes.get(split)
        out[split] = n if n is not None else UNKNOWN_SPLIT_SIZE
    return out
