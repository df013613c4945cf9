"""Configuration: validation with one clear message, and the per-stage, per-task settings slices.

Kept free of heavy imports: the Snakefile imports this module at every invocation.
"""

from __future__ import annotations

import copy
import os
import re
import urllib.parse
from typing import Any

import yaml

ZEROSHOT = "zeroshot"  # the source name of each task's zero-shot cell

# What the demo world's rules produce; a config may point at these before they exist.
WORLD_DIR = "results/world"
WORLD_PRODUCTS = {
    "clip": f"{WORLD_DIR}/clip",
    "generator": f"{WORLD_DIR}/generator",
    "index": f"{WORLD_DIR}/index",
    "pool": f"{WORLD_DIR}/pool",
    "datasets": f"{WORLD_DIR}/datasets",
    "shifted": f"{WORLD_DIR}/shifted",  # each dataset's shifted test set, in CLIP_benchmark's layout
}
STAGES = ("prompts", "synthetic", "retrieval", "curate", "finetune", "evaluate")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """A configuration problem; the message names the key or path."""


def canonical(value: Any) -> Any:
    """A deterministic, builtin-only copy: dicts with sorted keys, tuples as lists, paths as str.

    Snakemake compares the repr of params between runs, so params must not depend on dict order.
    """
    if isinstance(value, dict):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        raise TypeError("sets have no stable order; use a sorted list")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def shard_count(images: int, shard_size: int) -> int:
    """How many generation jobs a task's synthetic images are split into."""
    return max(1, -(-images // shard_size))


def _merged(base: dict, override: dict | None) -> dict:
    """``base`` updated by ``override`` recursively, sharing the values it does not replace: for callers
    that copy the result anyway (``canonical``), where ``deep_merge``'s deep copies would be done twice."""
    out = dict(base)
    for key, value in (override or {}).items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deep_merge(base: dict, override: dict | None) -> dict:
    """``base`` updated by ``override`` recursively (new dict; inputs untouched)."""
    return copy.deepcopy(_merged(base, override))


WORLD_PLANTED_COLUMN = "planted_from"  # written by synret.world.build


def pool_columns(config: dict) -> dict:
    """``pool.columns``, plus the demo world's ``planted_from`` column when the world builds the pool
    and the config names none (the world knows which of its pool images copy a test image)."""
    columns = dict(config["pool"]["columns"])
    if config.get("world") and "planted_from" not in columns:
        columns["planted_from"] = WORLD_PLANTED_COLUMN
    return canonical(columns)


def stage_settings(config: dict, stage: str, task: str) -> dict:
    """The settings of one stage for one task: the global block with the task's override merged in."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}")
    override = config["task_settings"][task].get(stage)
    return canonical(_merged(config[stage], override))  # canonical copies every dict and list: nothing shared


def task_definition(config: dict, task: str) -> dict:
    """A task's own definition (dataset, templates, queries), without the stage overrides. Templates are
    None where the config gives none (a clip_benchmark dataset's own template file provides them)."""
    spec = {k: v for k, v in config["task_settings"][task].items() if k not in STAGES and k != "eval_sets"}
    spec.setdefault("templates", None)
    spec.setdefault("retrieval_templates", spec["templates"])
    spec.setdefault("filter_templates", spec["templates"])
    spec.setdefault("queries", {})
    spec["dataset"] = {"splits": {"train": "train", "val": "val", "test": "test"}, **spec["dataset"]}
    spec["dataset"]["splits"] = {"train": "train", "val": "val", "test": "test", **spec["dataset"]["splits"]}
    return canonical(spec)


def _with_split_defaults(dataset: dict) -> dict:
    return {**dataset, "splits": {"train": "train", "val": "val", "test": "test", **dataset.get("splits", {})}}


def eval_sets_of(config: dict, task: str) -> dict:
    """A task's extra evaluation sets (``task_settings.<task>.eval_sets``), defaults filled in: ``{name:
    {dataset, split, classes}}`` (split ``test``, classes ``by_name``); empty where it names none."""
    sets = config["task_settings"][task].get("eval_sets") or {}
    return canonical({name: {"dataset": _with_split_defaults(spec["dataset"]), "split": spec.get("split", "test"),
                             "classes": spec.get("classes", "by_name")} for name, spec in sets.items()})


TYPE_NAMES = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
              "number": "a number", "boolean": "true or false"}
# what each of the schema's patterns asks for, in words (tests/test_bad_configs.py: one for each)
PATTERN_HINTS = {
    "^http://(127\\.0\\.0\\.1|localhost):[0-9]+/?$":
        "a loopback URL with a port: http://127.0.0.1:<port> or http://localhost:<port>",
    "^https?://(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9._~-]+)(:[0-9]+)?(/\\S*)?$":
        "an http(s) URL: http://<host>[:<port>][/<path>] or https://...",
    "\\{c\\}": "a template with {c} (where the class name goes)",
    "^[A-Za-z0-9_-]+$": "a name of letters, digits, _ and -",
    "^[a-z][a-z0-9_]*$": "a name of lower case letters, digits and _, starting with a letter",
    "^[a-z0-9_]+$": "a name of lower case letters, digits and _",
}


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def schema_errors(config: dict, schema_path: str) -> list[str]:
    """Every schema violation as one line naming the config key."""
    import jsonschema

    with open(schema_path) as f:  # libyaml's loader, when present, reads it ~10x faster (it runs on every call)
        schema = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    validator = jsonschema.Draft202012Validator(schema)
    lines = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        key = _key_path(error)
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            extra = sorted(set(error.instance) - set(allowed))
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            lines.append(f"config key '{key}': unknown key(s) {', '.join(map(repr, extra))}{hint}")
        elif error.validator == "required":
            lines.append(f"config key '{key}': {error.message}")
        elif error.validator == "type" and error.instance is None:  # YAML's null, not Python's None
            types = [error.validator_value] if isinstance(error.validator_value, str) else error.validator_value
            removed = " (an overlay's null removes a block: this one is required)" if "object" in types else ""
            lines.append(f"config key '{key}': is null, must be {' or '.join(TYPE_NAMES.get(t, t) for t in types)}"
                         f"{removed}")
        elif error.validator == "pattern" and error.validator_value in PATTERN_HINTS:  # a hint, not the regex
            lines.append(f"config key '{key}': {error.instance!r} is not {PATTERN_HINTS[error.validator_value]}")
        else:
            lines.append(f"config key '{key}': {error.message}")
    return lines


def dataset_inputs(dataset: dict) -> list[str]:
    """What a task job reads, for Snakemake to track: an image folder's root; for the benchmark formats
    their annotation files and image folders that exist (the preflight reports missing ones), not the
    root they share with other benchmarks, whose mtime changes whenever one is added beside them."""
    if dataset["format"] == "imagefolder":
        return [dataset["root"]]
    from .tasks import required_paths  # numpy and pyarrow: only imported for real benchmarks

    return [p for p in required_paths(dataset) if os.path.exists(p)]


def world_products(config: dict) -> list[str]:
    """What the world's rules make: WORLD_PRODUCTS, and the generator's training snapshots
    (``world.generator.snapshots``: name -> UNet step, each saved to ``results/world/generator_<name>``)."""
    snapshots = ((config.get("world") or {}).get("generator") or {}).get("snapshots") or {}
    return [*WORLD_PRODUCTS.values(), *(f"{WORLD_PRODUCTS['generator']}_{name}" for name in sorted(snapshots))]


def produced_by_world(config: dict, path: str) -> bool:
    if not config.get("world"):
        return False
    norm = os.path.normpath(path)
    return any(norm == p or norm.startswith(p + os.sep) for p in map(os.path.normpath, world_products(config)))


def _is_local_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.exists(name) or not HUB_ID.match(name)


def serve_settings(config: dict) -> dict | None:
    """Where to serve a local pool folder during downloads (the demo world's images), or None."""
    serve = config["pool"].get("serve")
    if not serve:
        return None
    return canonical({"root": serve["root"], "base_url": serve.get("base_url") or config["world"]["base_url"]})


def path_errors(config: dict) -> list[str]:
    """Local files and folders the config names that neither exist nor will be made by the world rules, and
    what each source the config runs needs (``Source.config_problems``: its models, pool, index, methods)."""
    problems = []

    def need(key: str, path: str | None, kind: str = "path") -> None:
        if path and not produced_by_world(config, path) and not os.path.exists(os.path.expanduser(path)):
            problems.append(f"config key '{key}': {kind} {path!r} does not exist")

    clip_model = config["clip"]["model"]
    if clip_model.startswith("local-dir:"):
        need("clip.model", clip_model[len("local-dir:"):], "CLIP model directory")
    from .sources import source

    for name in config["sources"]:  # what each source needs: its models, pool, index (unknown ones: see semantic_errors)
        try:
            definition = source(name, config)
        except ConfigError:
            continue
        problems += definition.config_problems(config, need)
    for task in config["tasks"]:
        need(f"task_settings.{task}.dataset.root", config["task_settings"][task]["dataset"]["root"], "dataset root")
        for name, spec in (config["task_settings"][task].get("eval_sets") or {}).items():
            need(f"task_settings.{task}.eval_sets.{name}.dataset.root", spec["dataset"]["root"], "dataset root")
    for weights in sorted({isc_weights_of(config, t) for t in config["tasks"]} - {None}):
        need("curate.dedup.weights", weights, "ISC copy-detection weights file")
    return problems


def isc_weights_of(config: dict, task: str) -> str | None:
    """The ISC weights file a task's curation dedups with, or None where it uses another descriptor."""
    dedup = stage_settings(config, "curate", task)["dedup"]
    return dedup.get("weights") if dedup.get("descriptor") == "isc" else None


def semantic_errors(config: dict) -> list[str]:
    """Cross-key checks that a schema cannot express."""
    problems = []
    for task in config["tasks"]:
        if task not in config["task_settings"]:
            problems.append(f"config key 'tasks': task {task!r} has no entry in 'task_settings'")
    if problems:
        return problems
    from .sources import SOURCES, config_problems as source_problems, source

    problems += source_problems(config)
    if problems:
        return problems
    unknown = []
    for name in config["sources"]:
        try:
            source(name, config)
        except ConfigError:
            unknown.append(name)
    if unknown:
        own = sorted(n for n, s in (config.get("source_settings") or {}).items() if (s or {}).get("kind"))
        problems.append(f"config key 'sources': unknown source{'s' * (len(unknown) > 1)} "
                        f"{', '.join(map(repr, unknown))}; known sources: {', '.join([*SOURCES, *own])} "
                        "(or a source_settings entry with a kind)")
    lacking = [t for t in config["tasks"] if stage_settings(config, "curate", t)["dedup"].get("descriptor") == "isc"
               and not isc_weights_of(config, t)]
    if lacking:
        problems.append(f"config key 'curate.dedup.weights': required where curate.dedup.descriptor is isc "
                        f"(task{'s' * (len(lacking) > 1)} {', '.join(lacking)}): the path of the downloaded "
                        "isc_ft_v107.pth.tar")
    for task in config["tasks"]:  # a set the world renders: it must render it
        for name, spec in (config["task_settings"][task].get("eval_sets") or {}).items():
            root = os.path.normpath(spec["dataset"]["root"])
            if os.path.dirname(root) == os.path.normpath(WORLD_PRODUCTS["shifted"]) and config.get("world"):
                dataset = os.path.basename(root)
                if dataset not in ((config["world"].get("shifted") or {}).get("per_class") or {}):
                    problems.append(f"config key 'task_settings.{task}.eval_sets.{name}.dataset.root': the world "
                                    f"renders no shifted set of {dataset!r} (add it to world.shifted.per_class)")
    serve = config["pool"].get("serve")
    if serve and not (serve.get("base_url") or config.get("world")):
        problems.append("config key 'pool.serve.base_url': needed to serve a pool folder when there is no 'world'")
    problems += url_errors(config) + world_errors(config)
    if not unknown:
        from .sources import supply_problems

        problems += supply_problems(config)
    return problems


def url_errors(config: dict) -> list[str]:
    """URLs whose port no socket has (the schema checks their form)."""
    problems = []
    urls = {"world.base_url": (config.get("world") or {}).get("base_url"),
            "pool.serve.base_url": (config["pool"].get("serve") or {}).get("base_url"),
            "pool.knn_service.url": (config["pool"].get("knn_service") or {}).get("url")}
    for key, url in urls.items():
        if not url:
            continue
        try:
            port = urllib.parse.urlsplit(url).port
        except ValueError:  # beyond 65535
            port = -1
        if port is not None and not 0 < port < 65536:
            problems.append(f"config key '{key}': the port of {url!r} must lie between 1 and 65535")
    return problems


def _world_dataset_of(root: str) -> str | None:
    """The world dataset a path inside results/world/datasets names (its first folder there), else None."""
    rel = os.path.relpath(os.path.normpath(root), os.path.normpath(WORLD_PRODUCTS["datasets"]))
    return None if rel == "." or rel.startswith("..") else rel.split(os.sep)[0]


def world_errors(config: dict) -> list[str]:
    """What the world's rules would fail on, or silently not make: factor values it does not draw, datasets
    that a task or a shifted set names but the world lacks, a CLIP image size other than the world's, GroupNorm
    groups that do not divide the generator's widths."""
    world = config.get("world")
    if not world:
        return []
    from .world.render import FACTORS

    problems, datasets = [], world["datasets"]
    known = ", ".join(datasets)
    for name, spec in datasets.items():
        for factor, values in (spec.get("values") or {}).items():
            unknown = [v for v in values if v not in FACTORS[factor]]
            if factor not in spec["factors"]:
                problems.append(f"config key 'world.datasets.{name}.values.{factor}': {factor} is not one of its "
                                f"factors ({', '.join(spec['factors'])})")
            elif unknown:
                problems.append(f"config key 'world.datasets.{name}.values.{factor}': the world draws no "
                                f"{factor} {', '.join(map(repr, unknown))} (it draws {', '.join(FACTORS[factor])})")
    unknown = [name for name in ((world.get("shifted") or {}).get("per_class") or {}) if name not in datasets]
    if unknown:
        problems.append(f"config key 'world.shifted.per_class': no world dataset {', '.join(map(repr, unknown))} "
                        f"(world.datasets: {known})")
    for task in config["tasks"]:
        spec = config["task_settings"][task]
        roots = {f"task_settings.{task}.dataset.root": spec["dataset"]["root"]}
        roots.update({f"task_settings.{task}.eval_sets.{name}.dataset.root": s["dataset"]["root"]
                      for name, s in (spec.get("eval_sets") or {}).items()})
        for key, root in roots.items():
            name = _world_dataset_of(root)
            if name is not None and name not in datasets:
                problems.append(f"config key '{key}': the world makes no dataset {name!r} (world.datasets: {known})")
    vision = world["clip"]["model_cfg"]["vision_cfg"]
    size = vision.get("image_size", 224)  # open_clip's default
    if size != world["image_size"]:
        problems.append(f"config key 'world.clip.model_cfg.vision_cfg.image_size': {size} is not world.image_size "
                        f"{world['image_size']} (the world CLIP trains on the world's images as they are)")
    generator = world.get("generator") or {}
    for part in ("vae", "unet"):
        groups, widths = generator.get(f"{part}_norm_num_groups"), generator.get(f"{part}_block_out_channels")
        if groups and widths and any(w % groups for w in widths):
            problems.append(f"config key 'world.generator.{part}_norm_num_groups': {groups} groups do not divide "
                            f"every width of world.generator.{part}_block_out_channels {widths} (GroupNorm needs it)")
    return problems


def check_config(config: dict, schema_path: str) -> None:
    """Raise one ConfigError listing every problem, or return quietly."""
    problems, missing = schema_errors(config, schema_path), []
    if not problems:  # the cross-key and path checks assume a well-formed config
        problems = semantic_errors(config)
        missing = path_errors({**config, "tasks": [t for t in config["tasks"] if t in config["task_settings"]]})
        problems += missing
    if problems:
        problems = list(dict.fromkeys(problems))  # each once: sources that share a model each check it
        hint = ("\n(what to download for real models and data, and where: README, \"Running the paper's experiment\")"
                if missing and not config.get("world") else "")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems) + hint)


def knn_model_settings(config: dict) -> dict:
    """How to load the CLIP that embedded the kNN index: ``pool.knn_model`` (a name that needs no
    pretrained tag, e.g. ``hf-hub:`` or ``local-dir:``), or else ``clip.model`` with its pretrained tag;
    either way from ``clip.cache_dir``."""
    clip, own = config["clip"], config["pool"].get("knn_model")
    return canonical({
        "model": own or clip["model"],
        "pretrained": None if own else clip.get("pretrained"),
        "cache_dir": clip.get("cache_dir"),
    })


def expected_cells(tasks, sources, scales, seeds) -> list[tuple]:
    """Every (task, source, scale, seed) the config defines, plus each task's zero-shot cell."""
    cells = [(t, s, int(n), int(r)) for t in tasks for s in sources for n in scales for r in seeds]
    return cells + [(t, ZEROSHOT, 0, 0) for t in tasks]


def shifted_params(world: dict, dataset: str) -> dict:
    """The slice of the world config one dataset's shifted test set depends on (``world_shifted``'s params):
    the seed, image size, the dataset's classes (factors, values) and its share of ``world.shifted``."""
    spec = world["datasets"][dataset]
    shifted = world["shifted"]
    return canonical({
        "seed": world["seed"], "image_size": world["image_size"],
        "datasets": {dataset: {k: spec[k] for k in ("factors", "values", "per_class") if k in spec}},
        "shifted": {"style": shifted["style"], "templates": shifted["templates"],
                    "per_class": {dataset: shifted["per_class"].get(dataset, 0)}},
    })


# ---------------------------------------------------------------- the report (synret.quality)

REPORT_DEFAULTS = {"sample_classes": 4, "kept_per_class": 3, "dropped_per_class": 2, "vendi_images_per_class": 20,
                   "seed": 0}


def report_settings(config: dict) -> dict:
    """The config's ``report`` block over its defaults (the block is optional)."""
    return {**REPORT_DEFAULTS, **(config.get("report") or {})}


def world_truth_of(config: dict, task: str) -> dict | None:
    """Where the demo world renders the task's dataset: ``{"factors": [...]}``, the factors that name its
    classes (the pool's ``true_<factor>`` columns hold each pool image's); None for any other dataset."""
    world = config.get("world")
    if not world:
        return None
    root = os.path.normpath(str(task_definition(config, task)["dataset"].get("root", "")))
    name = os.path.basename(root)
    if os.path.dirname(root) != os.path.normpath(WORLD_PRODUCTS["datasets"]) or name not in world["datasets"]:
        return None
    return {"factors": list(world["datasets"][name]["factors"])}
