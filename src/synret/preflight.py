"""Preflight: before the grid starts, check every model, dataset, pool and index a configuration names.

Everything is checked, and every problem is reported in one message with how to get what is missing,
so that a cluster run does not fail hours in, one missing file at a time. Nothing is downloaded.

Models named by a Hugging Face hub id count as present when their files are in the local hub cache
(``cache_dir`` from the config, else ``$HF_HUB_CACHE``/``$HF_HOME``). When they are not cached, and
``HF_HUB_OFFLINE`` is not set, the hub is asked whether the files exist (a HEAD request each): jobs
will then download them on first use. With ``HF_HUB_OFFLINE=1`` (as on compute nodes without internet),
a model that is not cached is missing.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .caption_files import download_hint
from .config import HUB_ID, canonical, eval_sets_of, isc_weights_of, stage_settings, task_definition
from .sources import curated_sources_of
from .clip_benchmark import TEMPLATES
from .tasks import DOWNLOAD_HINTS, FORMATS, required_paths

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
DIFFUSERS_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DIFFUSERS_WEIGHTS = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}
HUB_TIMEOUT_S = 10.0


class PreflightError(RuntimeError):
    """Something the configuration names is missing; the message lists all of it."""


@dataclass(frozen=True)
class Problem:
    key: str  # the config key that names the missing thing
    what: str  # what is missing
    how: str  # how to get it

    def line(self) -> str:
        return f"config key '{self.key}': {self.what}\n      how to get it: {self.how}"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


# ---------------------------------------------------------------- the Hugging Face hub


def cached_file(repo_id: str, filename: str, cache_dir: str | None) -> str | None:
    """The path of a file of a hub repo in the local cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def hub_status(repo_id: str, filename: str, endpoint: str | None = None) -> str | None:
    """None when the hub serves the file, else why not (a short phrase)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    url = hf_hub_url(repo_id, filename, endpoint=endpoint)
    try:
        get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return f"the hub repo {repo_id!r} is gated: accept its terms on the hub page, then `hf auth login`"
    except RepositoryNotFoundError:
        return f"the hub has no repo {repo_id!r} (or it is private: `hf auth login`)"
    except EntryNotFoundError:
        return f"the hub repo {repo_id!r} has no file {filename!r}"
    except (TypeError, AttributeError):  # a bug here, not an answer from the hub
        raise
    except Exception as e:  # connection refused, DNS, timeouts, proxies: all mean "cannot reach it"
        return f"the hub at {endpoint or 'huggingface.co'} could not be reached ({type(e).__name__})"
    return None


def check_hub_files(key: str, repo_id: str, alternatives: list[tuple[str, ...]], cache_dir: str | None,
                    endpoint: str | None, what: str) -> list[Problem]:
    """Each group of alternative files of a hub repo must be cached, or (online) served by the hub."""
    cache_hint = f" --cache-dir {cache_dir}" if cache_dir else ""
    how = f"`hf download {repo_id}{cache_hint}` on a machine with internet access (same cache directory)"
    missing = [group for group in alternatives if not any(cached_file(repo_id, f, cache_dir) for f in group)]
    if not missing:
        return []
    if hub_offline():
        return [Problem(key, f"{what} {repo_id!r} is not in the local hub cache ({missing[0][0]}) and "
                             "HF_HUB_OFFLINE is set", how)]
    for group in missing:
        reasons = [hub_status(repo_id, f, endpoint) for f in group]
        if all(reasons):
            return [Problem(key, f"{what} {repo_id!r} is not cached and {reasons[0]}", how)]
    return []


# ---------------------------------------------------------------- models


def check_open_clip(key: str, name: str, pretrained: str | None, cache_dir: str | None,
                    endpoint: str | None = None) -> list[Problem]:
    """An open_clip model: ``local-dir:``, ``hf-hub:`` or a built-in architecture with a pretrained tag/file."""
    import open_clip

    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        if not (folder / OPEN_CLIP_CONFIG).is_file() or not any((folder / w).is_file() for w in OPEN_CLIP_WEIGHTS):
            return [Problem(key, f"CLIP directory {str(folder)!r} lacks {OPEN_CLIP_CONFIG} or weights",
                            "a folder in open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors)")]
        return []
    if name.startswith("hf-hub:"):
        return check_hub_files(key, name[len("hf-hub:"):], [(OPEN_CLIP_CONFIG,), OPEN_CLIP_WEIGHTS],
                               cache_dir, endpoint, "CLIP model")
    if name not in open_clip.list_models():
        return [Problem(key, f"{name!r} is not an open_clip architecture",
                        "one of open_clip.list_models(), an hf-hub:org/repo or local-dir:/path")]
    if not pretrained:
        return [Problem(key, f"CLIP {name!r} has no pretrained weights (clip.pretrained is null)",
                        f"a tag from open_clip.list_pretrained_tags_by_model({name!r}) or a weights file")]
    if os.path.isfile(os.path.expanduser(pretrained)):
        return []
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)[:8])
        return [Problem(key, f"{pretrained!r} is neither a pretrained tag of {name!r} nor an existing file",
                        f"a tag such as {tags}")]
    if not cfg.get("hf_hub"):
        return []  # an URL-only checkpoint: open_clip downloads it itself; nothing local to check
    repo_id, filename = os.path.split(cfg["hf_hub"])
    files = ((filename,) if filename else OPEN_CLIP_WEIGHTS)
    return check_hub_files(key, repo_id, [files], cache_dir, endpoint, f"CLIP weights {name}/{pretrained}:")


def check_diffusers(key: str, model: str, cache_dir: str | None, endpoint: str | None = None) -> list[Problem]:
    """A Stable-Diffusion pipeline: a local ``save_pretrained`` folder or a hub id."""
    if Path(model).is_dir():
        folder = Path(model)
        lacking = [p for p in ("model_index.json", *DIFFUSERS_PARTS) if not (folder / p).exists()]
        lacking += [f"{part}/{files[0]}" for part, files in DIFFUSERS_WEIGHTS.items()
                    if (folder / part).is_dir() and not any((folder / part / f).is_file() for f in files)]
        if lacking:
            return [Problem(key, f"generator directory {model!r} lacks {', '.join(lacking)}",
                            "a diffusers folder written by StableDiffusionPipeline.save_pretrained, "
                            "or `hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir <dir>`")]
        return []
    if not HUB_ID.match(model):
        return [Problem(key, f"generator {model!r} is neither a directory nor a hub id",
                        "a diffusers hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or a local folder")]
    groups = [("model_index.json",)] + [tuple(f"{part}/{f}" for f in files) for part, files in DIFFUSERS_WEIGHTS.items()]
    return check_hub_files(key, model, groups, cache_dir, endpoint, "generator")


TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json")


def check_causal_lm(key: str, model: str, cache_dir: str | None, endpoint: str | None = None) -> list[Problem]:
    """A transformers model (the captioning LLM): a local folder or a hub id, with its config and weights."""
    if Path(model).is_dir():
        folder = Path(model)
        if not (folder / "config.json").is_file() or not any((folder / w).is_file() for w in TRANSFORMERS_WEIGHTS):
            return [Problem(key, f"LLM directory {model!r} lacks config.json or weights",
                            "a folder written by save_pretrained, or `hf download <id> --local-dir <dir>`")]
        return []
    if not HUB_ID.match(model):
        return [Problem(key, f"LLM {model!r} is neither a directory nor a hub id", "a transformers hub id or folder")]
    return check_hub_files(key, model, [("config.json",), TRANSFORMERS_WEIGHTS], cache_dir, endpoint, "LLM")


def check_copydetect(key: str, path: str) -> list[Problem]:
    """The ISC copy-detection weights: a readable checkpoint whose keys and shapes fit the network."""
    from .copydetect import DOWNLOAD_HINT, WeightsError, load_detector

    try:
        load_detector(path, "cpu")
    except WeightsError as e:
        return [Problem(key, e.what, DOWNLOAD_HINT)]
    return []


# ---------------------------------------------------------------- data


def check_dataset(task: str, dataset: dict, templates_file: bool = False, prefix: str | None = None) -> list[Problem]:
    """A task's dataset (or, with ``prefix``, the dataset at that config key): every file its format needs,
    and its template file where the config gives no templates (``templates_file``)."""
    prefix = prefix or f"task_settings.{task}.dataset"
    key = f"{prefix}.root"
    fmt = dataset["format"]
    if fmt not in FORMATS:
        return [Problem(f"{prefix}.format", f"unknown format {fmt!r}", ", ".join(FORMATS))]
    missing = [p for p in required_paths(dataset) if not os.path.exists(p)]
    if templates_file:
        missing += [p for p in [os.path.join(dataset["root"], TEMPLATES)] if not os.path.exists(p)]
    if not missing:
        return []
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return [Problem(key, f"{fmt} dataset is incomplete: missing {shown}",
                    DOWNLOAD_HINTS[fmt].replace("{root}", str(dataset["root"])))]


POOL_HINT = ("parquet metadata of a LAION-family pool, e.g. `hf download laion/relaion2B-en-research-safe "
             "--repo-type dataset --local-dir <dir>` (gated: accept its terms first), LAION-400M "
             "(laion/laion400m), DataComp CommonPool or COYO-700M (kakaobrain/coyo-700m)")
INDEX_HINT = ("a folder in clip-retrieval's layout (image.index, text.index, metadata/*.parquet), e.g. built with "
              "`clip-retrieval inference` + `clip-retrieval index` (autofaiss) over the pool; see README")


def check_pool(pool: dict, retrieval: dict) -> list[Problem]:
    """The pool's metadata files and columns, and the kNN index when a task uses kNN retrieval."""
    import pyarrow.parquet as pq

    problems = []
    files = sorted(glob.glob(pool["metadata"]))
    if not files and retrieval.get("substring"):
        problems.append(Problem("pool.metadata", f"no files match {pool['metadata']!r}", POOL_HINT))
    elif files:
        try:
            names = set(pq.read_schema(files[0]).names)
        except Exception as e:  # not parquet, truncated, unreadable
            problems.append(Problem("pool.metadata", f"{files[0]!r} is not readable parquet ({e})", POOL_HINT))
        else:
            lacking = [f"{k}={v!r}" for k, v in sorted(pool["columns"].items()) if v and v not in names]
            if lacking:
                problems.append(Problem("pool.columns", f"{files[0]!r} has no column(s) {', '.join(lacking)} "
                                        f"(it has {', '.join(sorted(names))})", "set pool.columns to the pool's names"))
    modalities = retrieval.get("knn_modalities") or []
    if modalities and pool.get("knn_service"):
        problems += check_knn_service(pool["knn_service"])
    elif modalities:
        folder = pool.get("knn_index")
        if not folder or not os.path.isdir(folder):
            problems.append(Problem("pool.knn_index", f"kNN index folder {folder!r} does not exist", INDEX_HINT))
        else:
            lacking = [f"{m}.index" for m in modalities if not os.path.isfile(os.path.join(folder, f"{m}.index"))]
            if not glob.glob(os.path.join(folder, "metadata", "*.parquet")):
                lacking.append("metadata/*.parquet")
            if lacking:
                problems.append(Problem("pool.knn_index", f"kNN index folder {folder!r} lacks {', '.join(lacking)}",
                                        INDEX_HINT))
    return problems


def check_knn_service(service: dict) -> list[Problem]:
    """A running ``clip-retrieval back``: it answers ``GET /indices-list`` and serves the named index."""
    import json
    import urllib.request

    url = service["url"].rstrip("/") + "/indices-list"
    how = ("start `clip-retrieval back` over your index in its own environment (envs/clip-retrieval.yaml; "
           "see src/synret/knn_client.py), or set pool.knn_service: null and pool.knn_index to a local index")
    try:
        with urllib.request.urlopen(url, timeout=HUB_TIMEOUT_S) as response:
            indices = json.loads(response.read())
    except Exception as e:  # refused, timed out, not JSON: the service is not usable
        return [Problem("pool.knn_service.url", f"no kNN service answers at {url} ({type(e).__name__})", how)]
    name = service.get("indice_name")
    if name and name not in indices:
        return [Problem("pool.knn_service.indice_name", f"the service at {url} has no index {name!r} "
                        f"(it serves {', '.join(map(str, indices))})", "set indice_name to one of those")]
    return []


def check_caption_files(files: list[dict]) -> list[Problem]:
    """The caption LM's backgrounds and examples files (the reference's helper files): present."""
    return [Problem(f["key"], f"caption file {f['path']!r} does not exist (tasks: {', '.join(f['tasks'])})",
                    download_hint(f["path"]))
            for f in files if not os.path.isfile(os.path.expanduser(f["path"]))]


def caption_file_spec(config: dict) -> list[dict]:
    """Each caption file the tasks' prompts.llm names, once, with the config key that names it first."""
    files: dict[str, dict] = {}
    for task in config["tasks"]:
        llm = stage_settings(config, "prompts", task).get("llm") or {}
        own = (config["task_settings"][task].get("prompts") or {}).get("llm") or {}
        for name, path in (("backgrounds_file", (llm.get("backgrounds_file") or {}).get("path")),
                           ("examples_file", llm.get("examples_file"))):
            if path:
                key = (f"task_settings.{task}.prompts.llm.{name}" if own.get(name) else f"prompts.llm.{name}")
                entry = files.setdefault(path, {"path": path, "key": key + (".path" if name == "backgrounds_file"
                                                                              else ""), "tasks": []})
                entry["tasks"].append(task)
    return [files[p] for p in sorted(files)]


# ---------------------------------------------------------------- all of it


def preflight_problems(spec: dict[str, Any], endpoint: str | None = None) -> list[Problem]:
    """Every problem with what ``spec`` names (see ``preflight_spec`` for its keys)."""
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    clip = spec["clip"]
    problems = check_open_clip("clip.model", clip["model"], clip.get("pretrained"), clip.get("cache_dir"), endpoint)
    if spec.get("knn_model") and spec["knn_model"] != clip["model"]:
        problems += check_open_clip("pool.knn_model", spec["knn_model"], None, clip.get("cache_dir"), endpoint)
    for name, gen in sorted((spec.get("generators") or {}).items()):  # one per synthetic source
        key = "generator.model" if name == "synthetic" else f"source_settings.{name}.generator.model"
        problems += check_diffusers(key, gen["model"], gen.get("cache_dir"), endpoint)
    for llm in spec.get("llms", []):
        problems += check_causal_lm("prompts.llm.model", llm["model"], llm.get("cache_dir"), endpoint)
    problems += check_caption_files(spec.get("caption_files", []))
    for task, dataset in sorted(spec["datasets"].items()):
        problems += check_dataset(task, dataset, task in spec.get("dataset_templates", []))
    for task, sets in sorted(spec.get("eval_sets", {}).items()):  # the tasks' extra evaluation sets
        for name, dataset in sorted(sets.items()):
            problems += check_dataset(task, dataset, prefix=f"task_settings.{task}.eval_sets.{name}.dataset")
    if spec.get("pool"):
        problems += check_pool(spec["pool"], spec["retrieval"])
    for weights in spec.get("copydetect", []):
        problems += check_copydetect(weights["key"], weights["path"])
    return problems


def preflight_spec(config: dict) -> dict:
    """The slice of the configuration the preflight checks (the rule's params), in canonical form."""
    tasks = config["tasks"]
    spec: dict[str, Any] = {
        "clip": {k: config["clip"].get(k) for k in ("model", "pretrained", "cache_dir")},
        "datasets": {t: task_definition(config, t)["dataset"] for t in tasks},
    }
    templated = [t for t in tasks if task_definition(config, t)["templates"] is None]
    if templated:  # tasks whose templates come from their dataset's template file (clip_benchmark)
        spec["dataset_templates"] = templated
    sets = {t: {name: s["dataset"] for name, s in eval_sets_of(config, t).items()} for t in tasks}
    if any(sets.values()):
        spec["eval_sets"] = {t: named for t, named in sets.items() if named}
    for source in curated_sources_of(config):  # each source's models, pool and index (and those mixed ones draw on)
        for key, value in source.preflight(config).items():
            if key == "generators":
                spec.setdefault(key, {}).update(value)
            elif key != "pool" or "pool" not in spec:
                spec[key] = value
    if "pool" in spec:
        # a random source alone: it reads the pool's metadata, as caption matching does
        spec.setdefault("retrieval", {"substring": True, "knn_modalities": []})
    weights = {isc_weights_of(config, t) for t in tasks} - {None}  # the ISC dedup descriptor's, where used
    if weights:
        spec["copydetect"] = [{"key": "curate.dedup.weights", "path": w} for w in sorted(weights)]
    return canonical(spec)


def report(problems: list[Problem]) -> str:
    lines = [f"preflight: {len(problems)} thing(s) the configuration names are missing:"]
    lines += [f"  - {p.line()}" for p in problems]
    lines.append("Fix these (README: 'Running the paper's experiment'), then run snakemake again.")
    return "\n".join(lines)


def run_preflight(spec: dict, endpoint: str | None = None) -> dict:
    """Raise PreflightError listing every problem, or return a summary of what was checked."""
    problems = preflight_problems(spec, endpoint)
    if problems:
        raise PreflightError(report(problems))
    checked = ("caption_files", "clip", "knn_model", "generators", "llms", "pool", "copydetect")
    return {"checked": sorted(k for k in checked if spec.get(k))
            + [f"dataset:{t}" for t in sorted(spec["datasets"])], "hub_offline": hub_offline()}
