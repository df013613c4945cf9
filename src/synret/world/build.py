"""Build the demo world's data: an upstream image-text pool and benchmark datasets drawn apart from it.

The pool is stored like LAION-2B-en's metadata (parquet parts with SAMPLE_ID, URL, TEXT, HEIGHT,
WIDTH, LICENSE, NSFW) plus ground-truth attribute columns, with one PNG file per image under
``images/`` that a loopback HTTP server can serve at the URLs. The benchmark datasets are image
folders (``{split}/{class_folder}/*.png`` and ``classnames.txt``), rendered in a different style
from the pool, like benchmark photos differ from web images. A few test images of every dataset are
planted in the pool as near-duplicates, so that test-set dedup has real work to do.
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..config import WORLD_PLANTED_COLUMN
from .captions import captions
from .render import FACTORS, Attributes, Style, factor_index, perturb, render, sample_attributes

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark of the world: classes are combinations of the values of some factors."""

    name: str
    factors: tuple[str, ...]  # e.g. ("color", "shape") -> classes like "red star"
    values: dict[str, list[str] | None]  # allowed values per factor; None = all
    per_class: dict[str, int]  # images per class in each split

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any]) -> "DatasetSpec":
        factors = tuple(cfg["factors"])
        unknown = [f for f in factors if f not in FACTORS]
        if unknown:
            raise ValueError(f"world.datasets.{name}.factors: unknown factor(s) {unknown}; choose from {list(FACTORS)}")
        values = {f: cfg.get("values", {}).get(f) for f in factors}
        return cls(name, factors, values, {s: int(cfg["per_class"][s]) for s in SPLITS})

    def classes(self) -> list[tuple[int, ...]]:
        """Factor-index tuples of every class, in label order."""
        return list(itertools.product(*(factor_index(f, self.values[f]) for f in self.factors)))

    def classnames(self) -> list[str]:
        return [" ".join(FACTORS[f][i] for f, i in zip(self.factors, combo)) for combo in self.classes()]


def class_folder(classname: str) -> str:
    """Folder name of a class in an image-folder dataset."""
    return classname.replace(" ", "_").replace("/", "_")


def style_from_config(cfg: dict[str, Any]) -> Style:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return Style(**fields)


def _save_pngs(images: np.ndarray, paths: list[Path], threads: int = 4) -> None:
    for parent in {p.parent for p in paths}:
        parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda ip: Image.fromarray(ip[0]).save(ip[1], optimize=False), zip(images, paths)))


def render_dataset(spec: DatasetSpec, rng: np.random.Generator, size: int, style: Style, root: Path) -> dict:
    """Render one benchmark dataset as an image folder; returns its test split's images and attributes."""
    classes = spec.classes()
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(spec.classnames()) + "\n")
    test = {}
    for split in SPLITS:
        n = spec.per_class[split]
        labels = np.repeat(np.arange(len(classes)), n)
        fixed = {f: np.array([classes[y][j] for y in labels]) for j, f in enumerate(spec.factors)}
        attrs = sample_attributes(rng, len(labels), style, fixed=fixed)
        images = render(attrs, size, rng, style)
        names = spec.classnames()
        paths = [root / split / class_folder(names[y]) / f"{i:06d}.png" for i, y in enumerate(labels)]
        _save_pngs(images, paths)
        if split == "test":
            test = {"images": images, "attrs": attrs, "paths": [str(p.relative_to(root)) for p in paths]}
    return test


def _plant_duplicates(
    datasets: dict[str, dict], per_dataset: int, rng: np.random.Generator
) -> tuple[np.ndarray, Attributes | None, list[str]]:
    """Near-duplicates of randomly chosen test images of every dataset, to hide in the pool."""
    images, attrs, origins = [], [], []
    for name, test in sorted(datasets.items()):
        count = min(per_dataset, len(test["images"]))
        if count == 0:
            continue
        pick = rng.choice(len(test["images"]), size=count, replace=False)
        images.append(perturb(test["images"][pick], rng))
        attrs.append(test["attrs"].take(pick))
        origins += [f"{name}/{test['paths'][i]}" for i in pick]
    if not images:
        return np.zeros((0,)), None, []
    merged = Attributes(**{k: np.concatenate([getattr(a, k) for a in attrs]) for k in attrs[0].__dict__})
    return np.concatenate(images), merged, origins


def _nsfw_tags(rng: np.random.Generator, n: int, nsfw: float, unsure: float) -> np.ndarray:
    u = rng.random(n)
    return np.where(u < nsfw, "NSFW", np.where(u < nsfw + unsure, "UNSURE", "UNLIKELY"))


def image_relpath(sample_id: int) -> str:
    """Where a pool image lives under the served root (and in its URL)."""
    return f"images/{sample_id // 1000:04d}/{sample_id:08d}.png"


def build_world_data(cfg: dict[str, Any], pool_dir: str | Path, datasets_dir: str | Path) -> dict:
    """Render the pool and the benchmark datasets; returns a summary dict (also written as JSON)."""
    rng = np.random.default_rng(cfg["seed"])
    size = int(cfg["image_size"])
    pool_cfg = cfg["pool"]
    pool_dir, datasets_dir = Path(pool_dir), Path(datasets_dir)

    # benchmark datasets first: the pool hides near-duplicates of their test images
    bench_style = style_from_config(cfg["benchmark_style"])
    tests = {}
    for name, dcfg in sorted(cfg["datasets"].items()):
        spec = DatasetSpec.from_config(name, dcfg)
        tests[name] = render_dataset(spec, rng, size, bench_style, datasets_dir / name)
    dup_images, dup_attrs, dup_origins = _plant_duplicates(tests, int(pool_cfg["near_duplicates"]), rng)

    # the pool: web-style images with noisy captions, then the planted duplicates, shuffled together
    pool_style = style_from_config(cfg["pool_style"])
    n_web = int(pool_cfg["size"])
    web_attrs = sample_attributes(rng, n_web, pool_style)
    images = render(web_attrs, size, rng, pool_style)
    texts = captions(web_attrs, rng, **pool_cfg["caption_noise"])
    origins: list[str | None] = [None] * n_web
    attrs = web_attrs
    if dup_attrs is not None:
        images = np.concatenate([images, dup_images])
        texts += captions(dup_attrs, rng, off_topic=0.0, wrong_color=0.0, upper=0.0)
        origins += dup_origins
        attrs = Attributes(**{k: np.concatenate([getattr(web_attrs, k), getattr(dup_attrs, k)]) for k in web_attrs.__dict__})
    order = rng.permutation(len(images))
    images, attrs = images[order], attrs.take(order)
    texts, origins = [texts[i] for i in order], [origins[i] for i in order]
    nsfw = _nsfw_tags(rng, len(images), pool_cfg["nsfw_fraction"], pool_cfg["unsure_fraction"])

    # write: images as files (served over HTTP), an array copy for the world's own model training,
    # and LAION-style metadata parts with contiguous SAMPLE_ID ranges
    ids = np.arange(len(images), dtype=np.int64)
    _save_pngs(images, [pool_dir / image_relpath(i) for i in ids])
    np.save(pool_dir / "images.npy", images)
    base_url = cfg["base_url"].rstrip("/")
    table = pa.table(
        {
            "SAMPLE_ID": ids,
            "URL": [f"{base_url}/{image_relpath(i)}" for i in ids],
            "TEXT": texts,
            "HEIGHT": np.full(len(ids), size, dtype=np.int32),
            "WIDTH": np.full(len(ids), size, dtype=np.int32),
            "LICENSE": ["?"] * len(ids),
            "NSFW": nsfw,
            **{f"true_{f}": attrs.names(f) for f in FACTORS},
            WORLD_PLANTED_COLUMN: origins,
        }
    )
    parts = int(pool_cfg["parts"])
    bounds = np.linspace(0, len(ids), parts + 1).astype(int)
    (pool_dir / "metadata").mkdir(parents=True, exist_ok=True)
    for part in range(parts):
        chunk = table.slice(bounds[part], bounds[part + 1] - bounds[part])
        pq.write_table(chunk, pool_dir / "metadata" / f"part-{part:05d}.parquet")
    summary = {
        "pool_images": int(len(ids)),
        "planted_near_duplicates": len(dup_origins),
        "nsfw_tagged": int((nsfw == "NSFW").sum()),
        "datasets": {name: len(t["paths"]) for name, t in tests.items()},
    }
    (pool_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


# ---------------------------------------------------------------- shifted test sets

SHIFTED_SPLIT = "test"


def _shifted_rng(seed: int, name: str) -> np.random.Generator:
    """Each dataset's shifted set draws from its own stream: adding one changes no other image of the world."""
    import zlib

    return np.random.default_rng([int(seed), 0x5EF7, zlib.crc32(name.encode())])


def build_shifted_set(cfg: dict[str, Any], name: str, out: str | Path) -> dict:
    """Render one dataset's shifted test set, in CLIP_benchmark's webdataset layout under ``out``.

    The same classes as the dataset, drawn in ``cfg["shifted"]["style"]`` (another style than the
    benchmark's and the pool's: e.g. noisy backgrounds, objects smaller, further off-centre, turned
    further, their colours jittered more), ``per_class[name]`` images a class. Written as
    ``test/0.tar`` (``{key}.png`` + ``{key}.cls``) with ``test/nshards.txt``, ``classnames.txt`` and
    ``zeroshot_classification_templates.txt`` (``cfg["shifted"]["templates"]``), so that the demo reads
    it as the real shifted benchmarks are read. ``cfg``: the world config (seed, image_size, datasets, shifted).
    """
    from .. import clip_benchmark as cb
    from ..shards import encode_image

    shifted = cfg["shifted"]
    if name not in cfg["datasets"]:
        raise ValueError(f"world.shifted: no world dataset {name!r}")
    per_class = int(shifted["per_class"].get(name, 0))
    if per_class < 1:
        raise ValueError(f"world.shifted.per_class.{name}: needs at least 1 image a class")
    spec = DatasetSpec.from_config(name, cfg["datasets"][name])
    style = style_from_config(shifted["style"])
    rng = _shifted_rng(cfg["seed"], name)
    classes = spec.classes()
    labels = np.repeat(np.arange(len(classes)), per_class)
    fixed = {f: np.array([classes[y][j] for y in labels]) for j, f in enumerate(spec.factors)}
    attrs = sample_attributes(rng, len(labels), style, fixed=fixed)
    images = render(attrs, int(cfg["image_size"]), rng, style)
    out = Path(out)
    cb.write_metadata(out, spec.classnames(), shifted["templates"])
    count = cb.write_split(out, SHIFTED_SPLIT, ((f"s{i:07d}", encode_image(img, "png"), int(y))
                                               for i, (img, y) in enumerate(zip(images, labels))))
    return {"dataset": name, "images": count, "classes": len(classes)}
