"""The data sources a grid compares, each one definition in one place.

A source is what a cell trains on: ``synthetic`` (images a text-to-image generator made for the task's
prompts) and ``retrieved`` (real images of the upstream pool, found by kNN and caption matching and
downloaded). A ``Source`` says everything the workflow needs to know about one:

- ``stage``: the stage whose rules make its images (rules/<stage>.smk), and ``images``: the files a task's
  source consists of, webdataset shards and the manifests that list them (the inputs of its curation
  and of its cells);
- ``candidates``: how those manifests' rows become curation candidates (one row per image and label);
- ``storage``: how it stores an incoming image, byte for byte (the leakage calibration plants copies the
  way the source would have stored them), and ``shard_size``: images per shard (for sizing jobs);
- ``config_problems`` and ``preflight``: the config keys and local paths it needs, checked before any job
  runs, and the slice of the config the preflight job checks for it (models, pool, index);
- ``label``, ``color``, ``marker``: how tables and plots show it.

``SOURCES`` holds them by name; ``source(name)`` looks one up, and a name it does not know is a config
error. Adding a source is one ``Source`` here (and the rules of its stage, if a new stage makes its images).
"""

from __future__ import annotations

import glob
import io
from dataclasses import dataclass
from typing import Any, Callable

from .config import ConfigError, _is_local_path, produced_by_world, shard_count, stage_settings


@dataclass(frozen=True)
class Source:
    name: str
    label: str  # in legends and tables
    color: str
    marker: str
    stage: str  # the stage whose rules make its images
    images: Callable[[dict, str], dict[str, list[str] | str]]  # (config, task) -> {"shards", "manifests"}
    candidates: Callable[[Any], Any]  # its manifests' rows (a DataFrame) -> curation candidates
    storage_settings: Callable[[dict, str], dict]  # (config, task) -> the settings that say how it stores images
    storage: Callable[[dict], Callable[[Any], bytes]]  # (those settings) -> PIL image -> the bytes it stores
    shard_size: Callable[[dict, str], int]
    config_problems: Callable[[dict, Callable[[str, str | None, str], None]], list[str]]
    preflight: Callable[[dict], dict]  # (config) -> its entries of the preflight spec


# ----------------------------------------------------------------------------- synthetic


def synthetic_shard_ids(config: dict, task: str) -> list[str]:
    images = stage_settings(config, "prompts", task)["images"]
    return [f"{i:05d}" for i in range(shard_count(images, stage_settings(config, "synthetic", task)["shard_size"]))]


def _synthetic_images(config: dict, task: str) -> dict:
    ids = synthetic_shard_ids(config, task)
    return {"shards": [f"results/synthetic/{task}/shard-{i}.tar" for i in ids],
            "manifests": [f"results/synthetic/{task}/shard-{i}.parquet" for i in ids]}


def _synthetic_candidates(manifest):
    import pandas as pd

    return pd.DataFrame({
        "key": manifest["key"], "label": manifest["label"].astype(int), "source": "synthetic",
        "origin": manifest["prompt"], "query": None, "methods": "generator", "shard": manifest["shard"],
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


def _synthetic_config_problems(config: dict, need) -> list[str]:
    generator = config["generator"]["model"]
    if _is_local_path(generator):
        need("generator.model", generator, "generator directory")
    return []


def _synthetic_preflight(config: dict) -> dict:
    from .preflight import caption_file_spec

    tasks = config["tasks"]
    llms = [stage_settings(config, "prompts", t).get("llm") or {} for t in tasks]  # captioning LLMs, if any
    models = sorted({(m["model"], m.get("cache_dir")) for m in llms if m.get("model")}, key=str)
    return {"generator": {k: config["generator"].get(k) for k in ("model", "cache_dir")},
            "llms": [{"model": m, "cache_dir": c} for m, c in models],
            "caption_files": caption_file_spec(config)}


SYNTHETIC = Source(
    name="synthetic", label="synthetic (generated)", color="#d62728", marker="s", stage="synthetic",
    images=_synthetic_images, candidates=_synthetic_candidates,
    storage_settings=lambda config, task: stage_settings(config, "synthetic", task), storage=_synthetic_storage,
    shard_size=lambda config, task: stage_settings(config, "synthetic", task)["shard_size"],
    config_problems=_synthetic_config_problems, preflight=_synthetic_preflight,
)


# ----------------------------------------------------------------------------- retrieved


def _retrieved_images(config: dict, task: str) -> dict:
    return {"shards": f"results/retrieval/{task}/download",
            "manifests": f"results/retrieval/{task}/download_manifest.parquet"}


def _retrieved_candidates(manifest):
    import pandas as pd

    return pd.DataFrame({
        "key": "r" + manifest["id"].astype(str) + "-c" + manifest["label"].astype(str),
        "label": manifest["label"].astype(int), "source": "retrieved", "origin": manifest["url"],
        "query": manifest["query"], "methods": manifest["methods"], "shard": manifest["shard"],
        "member": manifest["key"], "sha256": manifest["sha256"], "status": manifest["status"],
        # where the pool says so (pool.columns.planted_from): the evaluation image this item copies
        "planted_from": manifest["planted_from"] if "planted_from" in manifest else None,
    })


def _retrieved_storage(settings: dict):
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


def _retrieved_config_problems(config: dict, need) -> list[str]:
    problems = []
    pool = config["pool"]
    if not produced_by_world(config, pool["metadata"]) and not glob.glob(pool["metadata"]):
        problems.append(f"config key 'pool.metadata': no files match {pool['metadata']!r}")
    if any(stage_settings(config, "retrieval", t)["knn"]["enabled"] for t in config["tasks"]):
        if pool.get("knn_index") and pool.get("knn_service"):
            problems.append("config keys 'pool.knn_index' and 'pool.knn_service': set one kNN backend, not both")
        elif not pool.get("knn_index") and not pool.get("knn_service"):
            problems.append("config key 'pool.knn_index': kNN retrieval is enabled but neither an index "
                            "nor 'pool.knn_service' is set")
        need("pool.knn_index", pool.get("knn_index"), "kNN index folder")
    if pool.get("serve"):
        need("pool.serve.root", pool["serve"]["root"], "served folder")
    for task in config["tasks"]:
        retrieval = stage_settings(config, "retrieval", task)
        if not (retrieval["knn"]["enabled"] or retrieval["substring"]["enabled"]):
            problems.append(f"config key 'retrieval' (task {task}): enable knn or substring retrieval")
    return problems


def _retrieved_preflight(config: dict) -> dict:
    retrieval = [stage_settings(config, "retrieval", t) for t in config["tasks"]]
    modalities = sorted({m for r in retrieval if r["knn"]["enabled"] for m in r["knn"]["modalities"]})
    spec = {"pool": {k: config["pool"].get(k) for k in ("metadata", "columns", "knn_index", "knn_service")},
            "retrieval": {"substring": any(r["substring"]["enabled"] for r in retrieval),
                          "knn_modalities": modalities}}
    service = config["pool"].get("knn_service") or {}
    if modalities and service.get("query", "embedding") == "embedding":  # queries are embedded here
        spec["knn_model"] = config["pool"].get("knn_model") or config["clip"]["model"]
    return spec


RETRIEVED = Source(
    name="retrieved", label="retrieved (real)", color="#1f77b4", marker="o", stage="retrieval",
    images=_retrieved_images, candidates=_retrieved_candidates,
    storage_settings=lambda config, task: stage_settings(config, "retrieval", task)["download"],
    storage=_retrieved_storage,
    shard_size=lambda config, task: stage_settings(config, "retrieval", task)["download"]["shard_size"],
    config_problems=_retrieved_config_problems, preflight=_retrieved_preflight,
)


# ----------------------------------------------------------------------------- the registry

SOURCES: dict[str, Source] = {s.name: s for s in (SYNTHETIC, RETRIEVED)}


def source(name: str) -> Source:
    """The definition of a source; an unknown name is a config error naming the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ConfigError(f"config key 'sources': unknown source {name!r}; known sources: "
                          f"{', '.join(SOURCES)}") from None


def source_style(name: str) -> dict:
    """How plots draw a source: its colour, marker and label (a name not defined here: its name, default style)."""
    s = SOURCES.get(name)
    return {"color": s.color, "marker": s.marker, "label": s.label} if s else {"label": name}


def sources_of(config: dict) -> list[Source]:
    """The definitions of the sources the config runs, in its order."""
    return [source(name) for name in config["sources"]]

