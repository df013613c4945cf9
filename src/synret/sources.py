"""The data sources a grid compares, each one definition in one place.

A source is what a cell trains on. The kinds:

- ``synthetic``: images a text-to-image generator made for the task's prompts. A config can run it more
  than once with other generators or sampling settings (``source_settings.<name>: {kind: synthetic,
  generator: {...}, synthetic: {...}}``), each its own source with its own shards;
- ``retrieved``: real images of the upstream pool found by kNN and caption matching, downloaded;
- ``random``: an untargeted random sample of the pool, downloaded, each image labelled by the task's
  zero-shot CLIP (a control: what the pool gives without targeting);
- ``real``: the task's own labelled training images, ``k`` per class (``per_class``), so that the tables
  can say how many synthetic or retrieved images one real image is worth;
- ``img2img``: the images another curated source kept (``of``, default ``retrieved``) passed through the
  generator's image-to-image pipeline at a ``strength`` (the paper's generator-artifact probe: the same
  real images, regenerated); curated like the others (``synret.img2img``);
- ``mixed``: two curated sources drawn together at fixed totals, a share ``r`` of the second (``ratios``)
  and the rest of the first; each ratio is a source of its own in the results (``mixed-25``: 25% of the
  second).

A ``Source`` says everything the workflow needs to know about one:

- ``stage``: the stage whose rules make its images, and ``images``: the files a task's source consists
  of (shards and the manifests that list them; the inputs of its curation and of its cells);
- ``curation``: how its curated manifest is made: ``clip`` (the curate rule: CLIP-score filter and dedup
  against the evaluation images), ``all`` (kept as they are: the task's own training images) or ``None``
  (it has none: its cells draw from its ``parents``' curated sets);
- ``parents``: the sources whose curated images it draws on: a mix's two (its cells read theirs), an
  img2img source's one (its stage reads it; its cells read its own curated set);
- ``candidates``: how its manifests' rows become curation candidates (one row per image and label);
- ``storage``: how it stores an incoming image, byte for byte (the leakage calibration plants copies the
  way the source would have stored them), and ``shard_size``: images per shard (for sizing jobs);
- ``config_problems`` and ``preflight``: the config keys and local paths it needs, checked before any job
  runs, and the slice of the config the preflight job checks for it (models, pool, index);
- ``cells``: the cells it adds to the grid, and ``selection``: how a cell picks its training images;
- ``label``, ``color``, ``marker``: how tables and plots show it.

``SOURCES`` holds the definitions by name; ``source(name, config)`` looks one up, also a config's own
instances of a kind (``source_settings.<name>.kind``). A name it does not know is a config error. Adding
a source is one ``Source`` here (and the rules of its stage, if a new stage makes its images).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import re
from dataclasses import dataclass
from typing import Any, Callable

from .config import ConfigError, _is_local_path, deep_merge, produced_by_world, shard_count, stage_settings

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# result folders a source's own folder (results/<name>/) must not collide with
RESERVED = {"zeroshot", "retrieval", "tasks", "prompts", "curated", "cells", "tables", "plots", "world",
            "benchmarks", "preflight"}


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # the built-in definition it is an instance of (its own name for those)
    label: str  # in legends and tables
    color: str
    marker: str
    stage: str  # the stage whose rules make its images
    images_fn: Callable[["Source", dict, str], dict]  # (config, task) -> {"shards", "manifests"}
    candidates_fn: Callable[["Source", Any], Any] | None = None  # its manifests' rows -> curation candidates
    storage_settings_fn: Callable[["Source", dict, str], dict] | None = None
    storage_fn: Callable[[dict], Callable[[Any], bytes]] | None = None  # (settings) -> PIL image -> stored bytes
    shard_size_fn: Callable[["Source", dict, str], int] | None = None
    config_problems_fn: Callable[["Source", dict, Callable], list[str]] | None = None
    preflight_fn: Callable[["Source", dict], dict] | None = None
    cells_fn: Callable[["Source", dict], list[tuple[str, str, int]]] | None = None  # see cells()
    selection_fn: Callable[["Source", dict, str, str], dict] | None = None  # see selection()
    curation: str | None = "clip"
    parents_fn: Callable[["Source", dict], tuple[str, ...]] | None = None

    # ------------------------------------------------------------------ what the workflow asks

    def settings(self, config: dict) -> dict:
        """Its block of ``source_settings`` (empty where the config has none)."""
        return dict((config.get("source_settings") or {}).get(self.name) or {})

    def images(self, config: dict, task: str) -> dict:
        return self.images_fn(self, config, task)

    def candidates(self, manifest):
        return self.candidates_fn(self, manifest)

    def storage_settings(self, config: dict, task: str) -> dict:
        return self.storage_settings_fn(self, config, task)

    def storage(self, settings: dict):
        if self.storage_fn is None:
            raise ValueError(f"source {self.name!r} stores no incoming images (its images are not fetched or made)")
        return self.storage_fn(settings)

    def shard_size(self, config: dict, task: str) -> int:
        return self.shard_size_fn(self, config, task) if self.shard_size_fn else 1000

    def config_problems(self, config: dict, need) -> list[str]:
        return self.config_problems_fn(self, config, need) if self.config_problems_fn else []

    def preflight(self, config: dict) -> dict:
        return self.preflight_fn(self, config) if self.preflight_fn else {}

    def parents(self, config: dict) -> tuple[str, ...]:
        """The sources whose curated images it draws on (mixed: the two it mixes); none for most."""
        return self.parents_fn(self, config) if self.parents_fn else ()

    def cells(self, config: dict) -> list[tuple[str, str, int]]:
        """Its cells of the grid, ``(cell source, size, seed)``: the cell source is the name in the results
        (a mixed source has one per ratio), the size ``n<images>`` or ``k<per class>`` / ``kall``."""
        return (self.cells_fn or _scale_cells)(self, config)

    def selection(self, config: dict, cell_source: str, size: str) -> dict:
        """How a cell picks its training images from the curated manifests (``synret.curate.select_training``)."""
        return (self.selection_fn or _nested_selection)(self, config, cell_source, size)

    def curated_sources(self, config: dict) -> tuple[str, ...]:
        """The sources whose curated manifests its cells read."""
        return self.parents(config) if self.curation is None else (self.name,)


def grid_scales(src: Source, config: dict) -> list[int]:
    return [int(n) for n in src.settings(config).get("scales") or config["scales"]]


def grid_seeds(src: Source, config: dict) -> list[int]:
    return [int(s) for s in src.settings(config).get("seeds") or config["seeds"]]


def _scale_cells(src: Source, config: dict) -> list[tuple[str, str, int]]:
    return [(src.name, f"n{n}", seed) for n in grid_scales(src, config) for seed in grid_seeds(src, config)]


def _nested_selection(src: Source, config: dict, cell_source: str, size: str) -> dict:
    return {"how": "nested", "scale": int(size[1:]), "source": src.name}


def _curated_candidates(kind: str):
    def candidates(src: Source, manifest):
        return CANDIDATES[kind](manifest, src.name)

    return candidates


# ----------------------------------------------------------------------------- synthetic


def synthetic_shard_ids(config: dict, task: str) -> list[str]:
    images = stage_settings(config, "prompts", task)["images"]
    return [f"{i:05d}" for i in range(shard_count(images, stage_settings(config, "synthetic", task)["shard_size"]))]


def generator_settings(src: Source, config: dict) -> dict:
    """The generator a synthetic source samples from: the ``generator`` block, with its own overrides."""
    return deep_merge(config["generator"], src.settings(config).get("generator"))


def sampling_settings(src: Source, config: dict, task: str) -> dict:
    """Its sampling settings for a task: the ``synthetic`` stage's (with the task's override), then its own."""
    return deep_merge(stage_settings(config, "synthetic", task), src.settings(config).get("synthetic"))


def _synthetic_images(src: Source, config: dict, task: str) -> dict:
    ids = synthetic_shard_ids(config, task)
    return {"shards": [f"results/{src.name}/{task}/shard-{i}.tar" for i in ids],
            "manifests": [f"results/{src.name}/{task}/shard-{i}.parquet" for i in ids]}


def synthetic_candidates(manifest, name: str = "synthetic"):
    import pandas as pd

    return pd.DataFrame({
        "key": manifest["key"], "label": manifest["label"].astype(int), "source": name,
        "origin": manifest["prompt"], "text": manifest["prompt"], "query": None, "methods": "generator",
        "shard": manifest["shard"],
        "member": manifest["key"], "sha256": manifest["sha256"], "status": "success", "planted_from": None,
    })


def _synthetic_storage(settings: dict):
    """Resized to ``save_size`` (bicubic) and encoded as ``image_format`` (the ``synthetic`` block), as
    :mod:`synret.synthesize` saves a generated image."""
    from PIL import Image

    from .shards import encode_image

    size, fmt = settings["save_size"], settings.get("image_format", "png")

    def store(image) -> bytes:
        return encode_image(image.convert("RGB").resize((size, size), Image.BICUBIC), fmt)

    return store


def _synthetic_config_problems(src: Source, config: dict, need) -> list[str]:
    problems = []
    if "shard_size" in (src.settings(config).get("synthetic") or {}):
        problems.append(f"config key 'source_settings.{src.name}.synthetic.shard_size': every generator shares the "
                        "prompts' shards; set synthetic.shard_size instead")
    _need_generator(src, config, need)
    return problems


def _need_generator(src: Source, config: dict, need) -> None:
    """A generator directory the source names (its own, or the ``generator`` block's) must exist (``need``
    reports it otherwise)."""
    generator = generator_settings(src, config)["model"]
    if _is_local_path(generator):
        key = "generator.model" if generator == config["generator"]["model"] else f"source_settings.{src.name}.generator.model"
        need(key, generator, "generator directory")


def _generator_spec(src: Source, config: dict) -> dict:
    """Its entry of the preflight spec's ``generators``."""
    generator = generator_settings(src, config)
    return {"generators": {src.name: {k: generator.get(k) for k in ("model", "cache_dir")}}}


def _synthetic_preflight(src: Source, config: dict) -> dict:
    from .preflight import caption_file_spec

    tasks = config["tasks"]
    llms = [stage_settings(config, "prompts", t).get("llm") or {} for t in tasks]  # captioning LLMs, if any
    models = sorted({(m["model"], m.get("cache_dir")) for m in llms if m.get("model")}, key=str)
    return {**_generator_spec(src, config),
            "llms": [{"model": m, "cache_dir": c} for m, c in models],
            "caption_files": caption_file_spec(config)}


SYNTHETIC = Source(
    name="synthetic", kind="synthetic", label="synthetic (generated)", color="#d62728", marker="s", stage="synthetic",
    images_fn=_synthetic_images, candidates_fn=_curated_candidates("synthetic"),
    storage_settings_fn=sampling_settings, storage_fn=_synthetic_storage,
    shard_size_fn=lambda src, config, task: sampling_settings(src, config, task)["shard_size"],
    config_problems_fn=_synthetic_config_problems, preflight_fn=_synthetic_preflight,
)


# ----------------------------------------------------------------------------- img2img


IMG2IMG_DEFAULTS = {"of": "retrieved", "strength": 0.5, "prompt": "a photo of {a/an} {c}"}


def effective_steps(steps: int, strength: float) -> int:
    """The denoising steps an image-to-image run takes: diffusers starts ``int(steps * strength)`` steps
    before the end of a ``steps``-step schedule."""
    return min(int(steps * strength), int(steps))


def img2img_settings(src: Source, config: dict, task: str) -> dict:
    """What an img2img source does for a task: its sampling settings (``sampling_settings``: the synthetic
    block, the task's override, its own ``synthetic``), the ``strength``, the ``prompt`` template, the source
    it transforms (``of``) and how many of that source's kept images (``images``; None where unset, a config
    error when it runs)."""
    own = src.settings(config)
    settings = {**sampling_settings(src, config, task),
                **{k: own.get(k, default) for k, default in IMG2IMG_DEFAULTS.items()}}
    settings["images"] = own.get("images")
    return settings


def img2img_shard_ids(src: Source, config: dict, task: str) -> list[str]:
    settings = img2img_settings(src, config, task)
    if not settings["images"]:
        raise ConfigError(f"config key 'source_settings.{src.name}.images': how many of "
                          f"{settings['of']!r}'s kept images it transforms (required)")
    return [f"{i:05d}" for i in range(shard_count(settings["images"], settings["shard_size"]))]


def _img2img_images(src: Source, config: dict, task: str) -> dict:
    ids = img2img_shard_ids(src, config, task)
    return {"shards": [f"results/{src.name}/{task}/shard-{i}.tar" for i in ids],
            "manifests": [f"results/{src.name}/{task}/shard-{i}.parquet" for i in ids]}


def img2img_candidates(manifest, name: str = "img2img"):
    """Its images as candidates: as a synthetic source's, but the origin is the parent's image."""
    rows = synthetic_candidates(manifest, name)
    rows["origin"] = manifest["source_key"]
    return rows


def _img2img_parent(src: Source, config: dict) -> str:
    return (src.settings(config).get("of") or IMG2IMG_DEFAULTS["of"])


def _img2img_chain(src: Source, config: dict) -> list[str]:
    """Its parent, the parent's parent (where that is an img2img source too), ...; stops at a repeat."""
    chain, current = [src.name], src
    while current.kind == "img2img":
        parent = _img2img_parent(current, config)
        if not isinstance(parent, str):
            break
        chain.append(parent)
        if parent in chain[:-1]:
            break
        try:
            current = source(parent, config)
        except ConfigError:
            break
    return chain


def _img2img_problems(src: Source, config: dict, need) -> list[str]:
    key = f"source_settings.{src.name}"
    settings = src.settings(config)
    problems = []
    if not settings.get("images"):
        problems.append(f"config key '{key}.images': how many of the kept images of the source it transforms "
                        "(required: it fixes its shards before the parent is curated)")
    parent = _img2img_parent(src, config)
    if not isinstance(parent, str):
        problems.append(f"config key '{key}.of': name the one curated source whose images it transforms")
    else:
        chain = _img2img_chain(src, config)
        try:
            kind = source(parent, config)
        except ConfigError:
            problems.append(f"config key '{key}.of': unknown source {parent!r}")
        else:
            if kind.curation is None:
                problems.append(f"config key '{key}.of': {parent!r} has no curated images of its own to transform")
            elif len(chain) != len(set(chain)):
                problems.append(f"config key '{key}.of': the sources transform each other in a circle "
                                f"({' <- '.join(chain)})")
            elif parent not in config["sources"]:
                problems += kind.config_problems(config, need)
    strength = settings.get("strength", IMG2IMG_DEFAULTS["strength"])
    if not 0 < strength <= 1:
        problems.append(f"config key '{key}.strength': must lie in (0, 1], got {strength}")
    else:
        for task in config["tasks"]:
            steps = sampling_settings(src, config, task)["steps"]
            if effective_steps(steps, strength) < 1:
                problems.append(f"config key '{key}.strength': {strength} of {steps} denoising steps (task {task}) "
                                "leaves none (int(steps * strength) = 0)")
                break
    _need_generator(src, config, need)
    return problems


def _img2img_preflight(src: Source, config: dict) -> dict:
    return _generator_spec(src, config)


IMG2IMG = Source(
    name="img2img", kind="img2img", label="img2img (retrieved, regenerated)", color="#17becf", marker="*",
    stage="img2img", images_fn=_img2img_images, candidates_fn=_curated_candidates("img2img"),
    storage_settings_fn=sampling_settings, storage_fn=_synthetic_storage,
    shard_size_fn=lambda src, config, task: sampling_settings(src, config, task)["shard_size"],
    config_problems_fn=_img2img_problems, preflight_fn=_img2img_preflight,
    parents_fn=lambda src, config: (_img2img_parent(src, config),) if isinstance(_img2img_parent(src, config), str) else (),
)


# ----------------------------------------------------------------------------- retrieved


def _retrieved_images(src: Source, config: dict, task: str) -> dict:
    return {"shards": f"results/retrieval/{task}/download",
            "manifests": f"results/retrieval/{task}/download_manifest.parquet"}


def pool_candidates(manifest, name: str = "retrieved", key_prefix: str = "r"):
    """Downloaded pool items as candidates: one row per (item, label); ``label`` -1 where the curation
    labels them (the random source)."""
    import pandas as pd

    labelled = manifest["label"].astype(int)
    keys = key_prefix + manifest["id"].astype(str)
    return pd.DataFrame({
        "key": keys.where(labelled < 0, keys + "-c" + labelled.astype(str)),
        "label": labelled, "source": name, "origin": manifest["url"],
        "text": manifest["caption"] if "caption" in manifest else None,  # the pool's caption
        "query": manifest["query"], "methods": manifest["methods"], "shard": manifest["shard"],
        "member": manifest["key"], "sha256": manifest["sha256"], "status": manifest["status"],
        # where the pool says so (pool.columns.planted_from): the evaluation image this item copies
        "planted_from": manifest["planted_from"] if "planted_from" in manifest else None,
    })


def _download_storage(settings: dict):
    """Through img2dataset's own resizer with the image_size, resize_mode and encode_format of
    ``retrieval.download``, as a download stores an image."""
    from img2dataset.resizer import Resizer

    from .fetch import ENCODE_QUALITY
    from .shards import encode_image

    fmt = settings.get("encode_format", "jpg")
    resizer = Resizer(image_size=settings["image_size"], resize_mode=settings.get("resize_mode", "border"),
                      resize_only_if_bigger=settings.get("resize_only_if_bigger", False), encode_format=fmt,
                      encode_quality=ENCODE_QUALITY[fmt])

    def store(image) -> bytes:
        data, *_, error = resizer(io.BytesIO(encode_image(image.convert("RGB"), "png")))
        if error is not None:
            raise ValueError(f"img2dataset's resizer rejected an image: {error}")
        return data

    return store


def _pool_problems(config: dict) -> list[str]:
    pool = config["pool"]
    if not produced_by_world(config, pool["metadata"]) and not glob.glob(pool["metadata"]):
        return [f"config key 'pool.metadata': no files match {pool['metadata']!r}"]
    return []


def _serve_problems(config: dict, need) -> list[str]:
    if config["pool"].get("serve"):
        need("pool.serve.root", config["pool"]["serve"]["root"], "served folder")
    return []


def _retrieved_config_problems(src: Source, config: dict, need) -> list[str]:
    problems = _pool_problems(config) + _serve_problems(config, need)
    pool = config["pool"]
    if any(stage_settings(config, "retrieval", t)["knn"]["enabled"] for t in config["tasks"]):
        if pool.get("knn_index") and pool.get("knn_service"):
            problems.append("config keys 'pool.knn_index' and 'pool.knn_service': set one kNN backend, not both")
        elif not pool.get("knn_index") and not pool.get("knn_service"):
            problems.append("config key 'pool.knn_index': kNN retrieval is enabled but neither an index "
                            "nor 'pool.knn_service' is set")
        need("pool.knn_index", pool.get("knn_index"), "kNN index folder")
    for task in config["tasks"]:
        retrieval = stage_settings(config, "retrieval", task)
        if not (retrieval["knn"]["enabled"] or retrieval["substring"]["enabled"]):
            problems.append(f"config key 'retrieval' (task {task}): enable knn or substring retrieval")
    return problems


def _pool_preflight(config: dict) -> dict:
    return {"pool": {k: config["pool"].get(k) for k in ("metadata", "columns", "knn_index", "knn_service")}}


def _retrieved_preflight(src: Source, config: dict) -> dict:
    retrieval = [stage_settings(config, "retrieval", t) for t in config["tasks"]]
    modalities = sorted({m for r in retrieval if r["knn"]["enabled"] for m in r["knn"]["modalities"]})
    spec = {**_pool_preflight(config),
            "retrieval": {"substring": any(r["substring"]["enabled"] for r in retrieval),
                          "knn_modalities": modalities}}
    service = config["pool"].get("knn_service") or {}
    if modalities and service.get("query", "embedding") == "embedding":  # queries are embedded here
        spec["knn_model"] = config["pool"].get("knn_model") or config["clip"]["model"]
    return spec


def _download_settings(src: Source, config: dict, task: str) -> dict:
    return stage_settings(config, "retrieval", task)["download"]


RETRIEVED = Source(
    name="retrieved", kind="retrieved", label="retrieved (real)", color="#1f77b4", marker="o", stage="retrieval",
    images_fn=_retrieved_images, candidates_fn=_curated_candidates("retrieved"),
    storage_settings_fn=_download_settings, storage_fn=_download_storage,
    shard_size_fn=lambda src, config, task: _download_settings(src, config, task)["shard_size"],
    config_problems_fn=_retrieved_config_problems, preflight_fn=_retrieved_preflight,
)


# ----------------------------------------------------------------------------- random


RANDOM_DEFAULTS = {"pool_sample": 1000, "seed": 0}


def random_settings(src: Source, config: dict) -> dict:
    """How many pool items it draws per task (``pool_sample``) and with which ``seed``."""
    return {**RANDOM_DEFAULTS, **{k: v for k, v in src.settings(config).items() if k in RANDOM_DEFAULTS}}


def _random_images(src: Source, config: dict, task: str) -> dict:
    return {"shards": f"results/{src.name}/{task}/download",
            "manifests": f"results/{src.name}/{task}/download_manifest.parquet"}


def _random_config_problems(src: Source, config: dict, need) -> list[str]:
    return _pool_problems(config) + _serve_problems(config, need)


RANDOM = Source(
    name="random", kind="random", label="random pool sample (zero-shot labels)", color="#7f7f7f", marker="v",
    stage="random", images_fn=_random_images, candidates_fn=_curated_candidates("random"),
    storage_settings_fn=_download_settings, storage_fn=_download_storage,
    shard_size_fn=lambda src, config, task: _download_settings(src, config, task)["shard_size"],
    config_problems_fn=_random_config_problems, preflight_fn=lambda src, config: _pool_preflight(config),
)


# ----------------------------------------------------------------------------- real


REAL_PER_CLASS = [1, 4, 16, "all"]


def real_per_class(src: Source, config: dict) -> list:
    """Its training images per class (``per_class``: counts, or ``all``)."""
    return list(src.settings(config).get("per_class") or REAL_PER_CLASS)


def _real_images(src: Source, config: dict, task: str) -> dict:
    return {"shards": [], "manifests": f"results/tasks/{task}/train.parquet"}


def real_candidates(train, name: str = "real"):
    """A task's training split as candidates: the image files themselves (``shard`` None, ``member`` the path)."""
    import pandas as pd

    return pd.DataFrame({
        "key": train["key"].astype(str), "label": train["label"].astype(int), "source": name,
        "origin": train["path"], "text": None, "query": None, "methods": "task_train_split", "shard": None, "member": train["path"],
        "sha256": None, "status": "success", "planted_from": None,
    })


def _real_cells(src: Source, config: dict) -> list[tuple[str, str, int]]:
    return [(src.name, f"k{k}", seed) for k in real_per_class(src, config) for seed in grid_seeds(src, config)]


def _real_selection(src: Source, config: dict, cell_source: str, size: str) -> dict:
    k = size[1:]
    return {"how": "per_class", "per_class": None if k == "all" else int(k), "source": src.name}


REAL = Source(
    name="real", kind="real", label="real (the task's own training images)", color="#2ca02c", marker="D",
    stage="tasks", images_fn=_real_images, candidates_fn=_curated_candidates("real"), curation="all",
    cells_fn=_real_cells, selection_fn=_real_selection,
)


# ----------------------------------------------------------------------------- mixed


MIXED_DEFAULTS = {"of": ["synthetic", "retrieved"], "ratios": [0.25, 0.5, 0.75]}


def mix_settings(src: Source, config: dict) -> dict:
    """``of``: the two sources it mixes; ``ratios``: the shares of the second."""
    s = src.settings(config)
    return {"of": list(s.get("of") or MIXED_DEFAULTS["of"]), "ratios": list(s.get("ratios") or MIXED_DEFAULTS["ratios"])}


def ratio_name(ratio: float) -> str:
    """A share of the second source as a percentage without trailing zeros (0.25 -> '25', 0.125 -> '12.5')."""
    return f"{ratio * 100:.6g}"


def mixed_cell_source(name: str, ratio: float) -> str:
    return f"{name}-{ratio_name(ratio)}"


def _mixed_cells(src: Source, config: dict) -> list[tuple[str, str, int]]:
    return [(mixed_cell_source(src.name, r), f"n{n}", seed) for r in mix_settings(src, config)["ratios"]
            for n in grid_scales(src, config) for seed in grid_seeds(src, config)]


def split_total(total: int, ratio: float) -> tuple[int, int]:
    """(images of the first source, images of the second) at a total and a share of the second."""
    second = int(round(total * ratio))
    return total - second, second


def _mixed_selection(src: Source, config: dict, cell_source: str, size: str) -> dict:
    settings = mix_settings(src, config)
    ratio = next(r for r in settings["ratios"] if mixed_cell_source(src.name, r) == cell_source)
    first, second = settings["of"]
    n_first, n_second = split_total(int(size[1:]), ratio)
    return {"how": "mix", "ratio": ratio, "parts": {first: n_first, second: n_second}}


def _mixed_problems(src: Source, config: dict, need) -> list[str]:
    settings = mix_settings(src, config)
    key = f"source_settings.{src.name}"
    problems = []
    if isinstance(src.settings(config).get("of"), str) or len(settings["of"]) != 2 or len(set(settings["of"])) != 2:
        return [f"config key '{key}.of': name two different sources to mix"]
    for parent in settings["of"]:
        try:
            kind = source(parent, config)
        except ConfigError:
            problems.append(f"config key '{key}.of': unknown source {parent!r}")
            continue
        if kind.curation is None:
            problems.append(f"config key '{key}.of': {parent!r} has no curated images of its own to mix")
        else:
            problems += kind.config_problems(config, need) if parent not in config["sources"] else []
    bad = [r for r in settings["ratios"] if not 0 < r < 1]
    if bad:
        problems.append(f"config key '{key}.ratios': shares of the second source must lie strictly between 0 and 1 "
                        f"(0 and 1 are the two sources' own cells), got {bad}")
    return problems


MIXED = Source(
    name="mixed", kind="mixed", label="mixed", color="#9467bd", marker="P", stage="finetune",
    images_fn=lambda src, config, task: _union_images(config, task, mix_settings(src, config)["of"]),
    curation=None, parents_fn=lambda src, config: tuple(mix_settings(src, config)["of"]),
    cells_fn=_mixed_cells, selection_fn=_mixed_selection, config_problems_fn=_mixed_problems,
    preflight_fn=lambda src, config: {},
)


def _union_images(config: dict, task: str, names) -> dict:
    shards, manifests = [], []
    for name in names:
        images = source(name, config).images(config, task)
        for out, value in ((shards, images["shards"]), (manifests, images["manifests"])):
            out.extend([value] if isinstance(value, str) else value)
    return {"shards": shards, "manifests": manifests}


# ----------------------------------------------------------------------------- the registry

CANDIDATES = {"synthetic": synthetic_candidates, "retrieved": pool_candidates,
              "random": lambda manifest, name: pool_candidates(manifest, name, key_prefix="p"),
              "real": real_candidates, "img2img": img2img_candidates}

SOURCES: dict[str, Source] = {s.name: s for s in (SYNTHETIC, RETRIEVED, MIXED, REAL, RANDOM, IMG2IMG)}
INSTANCE_KINDS = ("synthetic", "mixed", "real", "random", "img2img")  # kinds a config may instantiate under another name
COLORS = ["#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939"]


def instance(name: str, settings: dict) -> Source:
    """A config's own source: a copy of a kind's definition under another name (``source_settings.<name>``)."""
    kind = settings.get("kind")
    if kind not in INSTANCE_KINDS:
        raise ConfigError(f"config key 'source_settings.{name}.kind': {kind!r} is not one of "
                          f"{', '.join(INSTANCE_KINDS)}")
    base = SOURCES[kind]
    color = COLORS[sum(map(ord, name)) % len(COLORS)]
    return dataclasses.replace(base, name=name, label=settings.get("label") or name, color=color, marker="X")


def source(name: str, config: dict | None = None) -> Source:
    """The definition of a source (a built-in one, or one of the config's ``source_settings`` with a
    ``kind``); an unknown name is a config error naming the known ones."""
    settings = ((config or {}).get("source_settings") or {}).get(name) or {}
    if settings.get("kind") and name not in SOURCES:
        return instance(name, settings)
    if name in SOURCES:
        src = SOURCES[name]
        return dataclasses.replace(src, label=settings["label"]) if settings.get("label") else src
    own = sorted(n for n, s in ((config or {}).get("source_settings") or {}).items() if (s or {}).get("kind"))
    raise ConfigError(f"config key 'sources': unknown source {name!r}; known sources: "
                      f"{', '.join([*SOURCES, *own])} (or a source_settings entry with a kind)")


def source_style(name: str, config: dict | None = None) -> dict:
    """How plots draw a cell source: its colour, marker and label (a mixed ratio: its family's style;
    a name not defined here: its name, default style)."""
    family = name.rsplit("-", 1)[0]
    for candidate in (name, family):
        try:
            s = source(candidate, config)
        except ConfigError:
            continue
        if candidate == name:
            return {"color": s.color, "marker": s.marker, "label": s.label}
        second = mix_settings(s, config or {})["of"][1] if s.kind == "mixed" else ""
        return {"color": s.color, "marker": s.marker, "label": f"{s.label} ({name[len(family) + 1:]}% {second})".replace(" )", ")")}
    return {"label": name}


def sources_of(config: dict) -> list[Source]:
    """The definitions of the sources the config runs, in its order."""
    return [source(name, config) for name in config["sources"]]


def curated_sources_of(config: dict) -> list[Source]:
    """Every source with a curated manifest the grid needs: those it runs and those they draw on (and those
    draw on: a mix of an img2img source needs the img2img source's parent too), parents first, in order."""
    names: list[str] = []

    def add(src: Source, visiting: tuple[str, ...]) -> None:
        for name in src.parents(config):
            if name not in names and name not in visiting:  # a circle is a config error (_img2img_problems)
                add(source(name, config), (*visiting, src.name))
        if src.name not in names and src.curation is not None:
            names.append(src.name)

    for src in sources_of(config):
        add(src, ())
    return [source(name, config) for name in names]


def synthetic_sources_of(config: dict) -> list[Source]:
    return [s for s in curated_sources_of(config) if s.kind == "synthetic"]


def random_sources_of(config: dict) -> list[Source]:
    return [s for s in curated_sources_of(config) if s.kind == "random"]


def img2img_sources_of(config: dict) -> list[Source]:
    return [s for s in curated_sources_of(config) if s.kind == "img2img"]


@dataclass(frozen=True)
class Cell:
    task: str
    source: str  # the cell source: the name in the results
    size: str  # n<images>, k<per class>, kall; "" for zero-shot
    seed: int

    @property
    def id(self) -> str:
        return f"{self.task}/{self.source}" if not self.size else f"{self.task}/{self.source}/{self.size}/seed{self.seed}"


def grid(config: dict) -> list[Cell]:
    """Every cell of the config's grid, source by source in its order, then each task's zero-shot cell."""
    from .config import ZEROSHOT

    cells = [Cell(task, cell_source, size, seed) for task in config["tasks"] for src in sources_of(config)
             for cell_source, size, seed in src.cells(config)]
    return cells + [Cell(task, ZEROSHOT, "", 0) for task in config["tasks"]]


def cell_sources(config: dict) -> dict[str, Source]:
    """Each cell source of the grid (a mixed source's ratios each) with the source that defines it."""
    out = {}
    for src in sources_of(config):
        for cell_source, _, _ in src.cells(config):
            out.setdefault(cell_source, src)
    return out


def config_problems(config: dict) -> list[str]:
    """Names and source_settings that do not make sense (unknown names are checked by check_config)."""
    problems = []
    settings = config.get("source_settings") or {}
    for name, s in settings.items():
        s = s or {}
        if s.get("kind") and name in SOURCES and s["kind"] != name:
            problems.append(f"config key 'source_settings.{name}.kind': {name!r} is a built-in source of kind {name!r}")
        if not NAME.match(name) or name in RESERVED:
            problems.append(f"config key 'source_settings.{name}': a source name is lower case letters, digits and _ "
                            f"and not one of {', '.join(sorted(RESERVED))}")
        elif s.get("kind") and s["kind"] not in INSTANCE_KINDS:
            problems.append(f"config key 'source_settings.{name}.kind': {s['kind']!r} is not one of "
                            f"{', '.join(INSTANCE_KINDS)}")
        elif s and not s.get("kind") and name not in SOURCES:  # a misspelt source: its options would go nowhere
            problems.append(f"config key 'source_settings.{name}': no source {name!r}: options of a built-in source "
                            f"({', '.join(SOURCES)}), or a new source with a kind")
    return problems


def supply(src: Source, config: dict, task: str) -> tuple[int, str] | None:
    """The most images a source can hand one task's cells, as the config fixes it before anything runs (all it
    makes or draws, before curation drops any), and the key that fixes it; None where only running tells:
    retrieved (the pool's hits), real (cells by per_class, not scales), mixed (its parents')."""
    if src.kind == "synthetic":
        own = "images" in (config["task_settings"][task].get("prompts") or {})
        return stage_settings(config, "prompts", task)["images"], f"task_settings.{task}.prompts.images" if own else "prompts.images"
    if src.kind == "img2img":
        images = src.settings(config).get("images")
        return (images, f"source_settings.{src.name}.images") if images else None
    if src.kind == "random":
        default = "" if "pool_sample" in src.settings(config) else " (its default)"
        return random_settings(src, config)["pool_sample"], f"source_settings.{src.name}.pool_sample{default}"
    return None


def supply_problems(config: dict) -> list[str]:
    """Scales a source cannot supply at all, whatever the curation keeps: more images than it makes or draws
    (one line per source, its largest such scale). A cell whose source kept fewer images than its scale after
    curation is allowed: it trains on what there is and is marked short (README, "Reading the tables")."""
    problems = []
    for src in sources_of(config):
        key = f"source_settings.{src.name}.scales" if src.settings(config).get("scales") else "scales"
        if src.kind == "mixed":  # each part against its own source
            settings = mix_settings(src, config)
            wants = [(n, parent, part) for n in grid_scales(src, config) for r in settings["ratios"]
                     for parent, part in zip(settings["of"], split_total(n, r))]
        elif src.cells_fn is None:  # cells by scale
            wants = [(n, src.name, n) for n in grid_scales(src, config)]
        else:
            continue
        try:
            parents = {name: source(name, config) for _, name, _ in wants}
        except ConfigError:  # a mix of an unknown source: _mixed_problems names it
            continue
        for task in config["tasks"]:
            short = [(n, name, part, *most) for n, name, part in wants
                     if (most := supply(parents[name], config, task)) is not None and part > most[0]]
            if short:
                n, name, part, most, most_key = max(short)
                takes = f"{part} images of {name!r}, more than it" if name != src.name else "more images than it"
                problems.append(f"config key '{key}': scale {n} of source {src.name!r} takes {takes} can supply "
                                f"for task {task} ({most_key}: {most}, before curation drops any)")
                break
    return problems


def aggregate_grid(config: dict) -> dict:
    """What the aggregate job needs to know about the grid, in canonical form: the cells' ids, the cell
    sources in order, the sources with curated sets, which are real, each mix's share and sources, and the
    contrast the paired plot shows (retrieved minus synthetic where both run)."""
    from .config import canonical

    names = list(cell_sources(config))
    mixes = {}
    for src in sources_of(config):
        if src.kind == "mixed":
            settings = mix_settings(src, config)
            for ratio in settings["ratios"]:
                mixes[mixed_cell_source(src.name, ratio)] = {"ratio": ratio, "of": settings["of"]}
    if "retrieved" in names and "synthetic" in names:
        contrast = ["retrieved", "synthetic"]
    else:
        contrast = [names[-1], names[0]] if len(names) > 1 else [names[0], "zeroshot"]
    return canonical({
        "tasks": config["tasks"], "sources": names, "cells": [cell.id for cell in grid(config)],
        "curated": [s.name for s in curated_sources_of(config)],
        "real": [s.name for s in sources_of(config) if s.kind == "real"], "mixes": mixes, "contrast": contrast,
        "styles": {name: source_style(name, config) for name in names},
    })
