# Config validation, wildcard constraints and the input/params functions every stage uses.
# Params carry exactly the slice of config a job depends on, in canonical form, so that a config edit
# reruns only the jobs it touches. Scripts read snakemake.params, never snakemake.config.

import glob
import os
import re
import sys

from snakemake.exceptions import WorkflowError

# The package that holds the logic lives in src/; make it importable here and in every job, also
# where it is not pip-installed (e.g. a conda env built from envs/ with --sdm conda).
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from synret.workflow import prepare_job_environment

try:
    _scheduler_cores = workflow.cores
except WorkflowError:  # no --cores, e.g. a cluster executor, where each job gets its own cores
    _scheduler_cores = None
# Snakemake takes these: --cores -1 runs jobs on -1 threads, 0 runs none, --jobs -1 fails with a traceback
for _option, _value in (("cores", _scheduler_cores), ("jobs", workflow.nodes)):
    if _value is not None and _value < 1:
        raise WorkflowError(f"--{_option} (or a profile's '{_option}') is {_value}: give a positive number"
                            f"{', or all' if _option == 'cores' else ', or unlimited'}")
prepare_job_environment(os.path.join(workflow.basedir, "src"), _scheduler_cores)

from synret.config import (
    WORLD_PRODUCTS,
    ConfigError,
    canonical,
    check_config,
    expected_cells,
    isc_weights_of,
    knn_model_settings,
    pool_columns,
    produced_by_world,
    report_settings as quality_report_settings,
    serve_settings,
    stage_settings,
    task_definition,
    world_truth_of,
)
from synret.sources import (
    aggregate_grid,
    cell_sources,
    curated_sources_of,
    generator_settings,
    grid,
    img2img_settings,
    img2img_sources_of,
    random_sources_of,
    sampling_settings,
    source,
    source_style,
    synthetic_sources_of,
)

try:
    check_config(config, os.path.join(workflow.basedir, "config.schema.yaml"))
except ConfigError as e:
    raise WorkflowError(str(e))


TASKS = config["tasks"]
SOURCES = config["sources"]
CELL_SOURCES = cell_sources(config)  # each name in the results (a mixed source's ratios each) -> its source
CURATED = [s.name for s in curated_sources_of(config)]  # sources whose curated manifests the grid reads
SCALES = config["scales"]
SEEDS = config["seeds"]
WORLD = config["world"]


def hold_run_lock():
    from synret.workflow import RunLocked, hold_run_lock as hold

    try:
        hold()
    except RunLocked as e:
        raise WorkflowError(str(e))


def stop_job_server():
    from synret.jobserver import shutdown

    shutdown()


def one_of(names):
    """A wildcard constraint matching exactly these names (none: a pattern that matches nothing)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    task=one_of(TASKS),
    source=one_of(sorted({*CELL_SOURCES, *CURATED})),
    size=r"n\d+|k\d+|kall",
    scale=r"\d+",
    seed=r"\d+",
    shard=r"\d{5}",
    part=r"\d{5}",


resource_scopes:
    gpu="local",


# ---------------------------------------------------------------- settings as params


def settings_of(stage):
    """A params function: the stage's settings for the job's task (global block + task override)."""

    def get(wildcards):
        return stage_settings(config, stage, wildcards.task)

    return get


def probe_threads(wildcards):
    """The training threads of a zero-shot cell: finetune.threads where the linear probe trains, else none."""
    if settings_of("evaluate")(wildcards).get("linear_probe") is None:
        return None
    return settings_of("finetune")(wildcards)["threads"]


def curate_params(wildcards):
    """The curation settings a result depends on: not num_workers (workers decode; the bits do not change)."""
    return {k: v for k, v in settings_of("curate")(wildcards).items() if k != "num_workers"}


def retrieval_setting(key):
    """A params function: one part of the retrieval settings (knn, substring, drop_nsfw, download)."""

    def get(wildcards):
        return stage_settings(config, "retrieval", wildcards.task)[key]

    return get


def task_definition_of(wildcards):
    return task_definition(config, wildcards.task)


def clip_params():
    return canonical({k: config["clip"].get(k) for k in ("model", "pretrained", "cache_dir", "precision")})


# ---------------------------------------------------------------- local models and data as inputs


def local_input(path):
    """A local path as an input when a rule of this workflow makes it or it exists; hub ids give []."""
    if not path:
        return []
    if produced_by_world(config, path) or os.path.exists(path):
        return [path]
    return []


def clip_model_input(name=None):
    name = name or config["clip"]["model"]
    return local_input(name[len("local-dir:") :]) if name.startswith("local-dir:") else []


def knn_model():
    return knn_model_settings(config)["model"]


def knn_model_params():
    return knn_model_settings(config)


def pool_parts():
    """The pool's metadata parquet files, in order."""
    if WORLD:
        return [f"{WORLD_PRODUCTS['pool']}/metadata/part-{i:05d}.parquet" for i in range(WORLD["pool"]["parts"])]
    return sorted(glob.glob(config["pool"]["metadata"]))


def pool_part(wildcards):
    return pool_parts()[int(wildcards.part)]


# ---------------------------------------------------------------- the sources


def shard_size_of(wildcards):
    return stage_settings(config, "synthetic", wildcards.task)["shard_size"]


def source_images(wildcards):
    """What a source of a task consists of: its images and the manifests that list them (synret.sources)."""
    return source(wildcards.source, config).images(config, wildcards.task)


def generator_of(wildcards):
    """The generator block of the job's synthetic or img2img source (synret.sources.generator_settings)."""
    name = getattr(wildcards, "generator", None) or wildcards.source
    return canonical(generator_settings(source(name, config), config))


def img2img_of(wildcards):
    """What the job's img2img source does for its task: sampling settings, strength, prompt, which source's
    images and how many (synret.sources.img2img_settings)."""
    return canonical(img2img_settings(source(wildcards.source, config), config, wildcards.task))


def img2img_inputs(wildcards):
    """An img2img shard's inputs: the curated manifest of the source it transforms, and that source's images."""
    parent = img2img_settings(source(wildcards.source, config), config, wildcards.task)["of"]
    shards = source(parent, config).images(config, wildcards.task)["shards"]
    return {"parent": f"results/curated/{wildcards.task}/{parent}/manifest.parquet",
            "parent_shards": [shards] if isinstance(shards, str) else shards}


def source_styles():
    """How figures draw each source: colour, marker, label (synret.sources.source_style)."""
    return canonical({name: source_style(name, config) for name in sorted({*CELL_SOURCES, *CURATED})})


def curated_names(curation):
    return one_of([name for name in CURATED if source(name, config).curation == curation])


def source_kind(wildcards):
    src = source(wildcards.source, config)
    return {"name": src.name, "kind": src.kind}


def cell_inputs(wildcards):
    """A cell's inputs: the images of every source it draws on and their curated manifests."""
    names = CELL_SOURCES[wildcards.source].curated_sources(config)
    shards = []
    for name in names:
        value = source(name, config).images(config, wildcards.task)["shards"]
        shards += [value] if isinstance(value, str) else value
    return {"shards": shards, "curated": [f"results/curated/{wildcards.task}/{name}/manifest.parquet" for name in names]}


def cell_selection(wildcards):
    """How the cell picks its training images (synret.curate.select_training)."""
    return canonical(CELL_SOURCES[wildcards.source].selection(config, wildcards.source, wildcards.size))


def retrieval_hit_inputs(wildcards):
    settings = stage_settings(config, "retrieval", wildcards.task)
    hits = {}
    if settings["knn"]["enabled"]:
        hits["knn"] = f"results/retrieval/{wildcards.task}/knn_hits.parquet"
    if settings["substring"]["enabled"]:
        hits["substring"] = expand(
            "results/retrieval/{task}/substring/{part}.parquet",
            task=wildcards.task,
            part=[f"{i:05d}" for i in range(len(pool_parts()))],
        )
    return hits


def serve_input():
    """The folder served during downloads; for the world, its images (the rest is metadata)."""
    serve = config["pool"].get("serve")
    if not serve:
        return []
    if produced_by_world(config, serve["root"]):
        return [f"{WORLD_PRODUCTS['pool']}/images"]
    return local_input(serve["root"])


# ---------------------------------------------------------------- the grid


def grid_cells():
    """Every cell of the grid (synret.sources.grid): each source's, then each task's zero-shot cell."""
    return grid(config)


def cell_files(name):
    """A file of every cell of the grid (metrics.json, predictions.parquet), in grid_cells() order."""
    return [f"results/cells/{cell.id}/{name}" for cell in grid_cells()]


def caption_files(wildcards):
    """The caption LM's backgrounds and examples files (prompts.llm.backgrounds_file / examples_file), as
    inputs where they exist: editing one reruns the task's prompts; the preflight reports a missing one."""
    llm = stage_settings(config, "prompts", wildcards.task).get("llm") or {}
    paths = {"backgrounds": (llm.get("backgrounds_file") or {}).get("path"), "examples": llm.get("examples_file")}
    return {name: local_input(path) for name, path in paths.items() if local_input(path)}


# ---------------------------------------------------------------- extra evaluation sets

from synret.config import dataset_inputs, eval_sets_of


def eval_set_definition(wildcards):
    return eval_sets_of(config, wildcards.task)[wildcards.name]


def eval_set_dataset_input(wildcards):
    """What a set's job reads: a dataset the demo world makes (its rule's output), else the dataset's files."""
    dataset = eval_set_definition(wildcards)["dataset"]
    return [dataset["root"]] if produced_by_world(config, dataset["root"]) else dataset_inputs(dataset)


def eval_set_inputs(wildcards):
    """Every extra evaluation set's manifest and class file of the job's task (none: an empty list)."""
    return [f"results/tasks/{wildcards.task}/eval/{name}.{ext}"
            for name in eval_sets_of(config, wildcards.task) for ext in ("parquet", "json")]


# ---------------------------------------------------------------- the report (rules/report.smk)

from synret.compute import data_plan


def report_settings(wildcards=None):
    """The ``report`` block with its defaults (synret.config.report_settings)."""
    return canonical(quality_report_settings(config))


def world_truth_params(wildcards):
    """On the demo world: the factors that name the task's classes, read from the pool's ground truth."""
    return canonical(world_truth_of(config, wildcards.task))
