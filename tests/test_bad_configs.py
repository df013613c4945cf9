"""Broken configurations are rejected before any job runs, with one message that names the key.

Each case is an overlay merged over config.yaml + configs/smoke.yaml, as `--configfile configs/smoke.yaml
overlay.yaml` merges it (a null removes a block), and the key its message must name. Most go through
`check_config` directly; a subset, and a few broken profile values, through the Snakemake CLI's dry run.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from smoke_support import snakemake
from synret.config import PATTERN_HINTS, ConfigError, check_config, deep_merge

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "config.schema.yaml")
BASE = deep_merge(yaml.safe_load((ROOT / "config.yaml").read_text()),
                  yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text()))
README_HINT = "(what to download for real models and data"


@pytest.fixture(autouse=True)
def _fresh_checkout(tmp_path, monkeypatch):
    """An empty working directory: nothing under results/ exists yet."""
    monkeypatch.chdir(tmp_path)


def case(overlay: dict, key: str, name: str):
    """A broken overlay and the key its message must name (``name``: the test id)."""
    return pytest.param(overlay, key, id=name)


SMOKE_SOURCES = BASE["sources"]

BROKEN = [
    # ------------------------------------------------------------ wrong types, at several depths
    case({"scales": "30"}, "scales", "scales-a-string"),
    case({"seeds": [0, "1"]}, "seeds.1", "seed-a-string"),
    case({"finetune": {"epochs": "2"}}, "finetune.epochs", "epochs-a-string"),
    case({"retrieval": {"knn": {"k": 1.5}}}, "retrieval.knn.k", "knn-k-a-float"),
    case({"retrieval": {"knn": {"enabled": "yes"}}}, "retrieval.knn.enabled", "knn-enabled-a-string"),
    case({"world": {"pool": {"caption_noise": {"upper": "high"}}}}, "world.pool.caption_noise.upper",
         "depth-4-type"),
    case({"task_settings": {"shapes": {"dataset": {"root": 3}}}}, "task_settings.shapes.dataset.root",
         "dataset-root-a-number"),
    case({"task_settings": {"shapes": {"retrieval": {"knn": {"k": "many"}}}}},
         "task_settings.shapes.retrieval.knn.k", "task-override-type"),
    case({"finetune": {"betas": [0.9]}}, "finetune.betas", "betas-one-number"),
    # ------------------------------------------------------------ unknown keys, at any depth
    case({"taskz": ["shapes"]}, "<top level>", "unknown-top-level-key"),
    case({"retrieval": {"download": {"foo": 1}}}, "retrieval.download", "unknown-download-key"),
    case({"world": {"clip": {"model_cfg": {"vision_cfg": {"foo": 1}}}}}, "world.clip.model_cfg.vision_cfg",
         "unknown-world-clip-vision-key"),
    case({"world": {"clip": {"model_cfg": {"text_cfg": {"context": 20}}}}}, "world.clip.model_cfg.text_cfg",
         "unknown-world-clip-text-key"),
    case({"world": {"clip": {"model_cfg": {"embed": 64}}}}, "world.clip.model_cfg", "unknown-world-clip-key"),
    case({"task_settings": {"shapes": {"retrieval": {"knn": {"neighbours": 5}}}}},
         "task_settings.shapes.retrieval.knn", "unknown-key-in-task-override"),
    case({"source_settings": {"synthetic_early": {"generator": {"modle": "x"}}}},
         "source_settings.synthetic_early.generator", "unknown-generator-override-key"),
    case({"aggregate": {"bootstrap": {"level": 0.9}}}, "aggregate.bootstrap", "unknown-bootstrap-key"),
    case({"report": {"colour": "red"}}, "report", "unknown-report-key"),
    # ------------------------------------------------------------ empty lists
    case({"tasks": []}, "tasks", "no-tasks"),
    case({"sources": []}, "sources", "no-sources"),
    case({"scales": []}, "scales", "no-scales"),
    case({"seeds": []}, "seeds", "no-seeds"),
    case({"evaluate": {"splits": []}}, "evaluate.splits", "no-eval-splits"),
    case({"prompts": {"templates": []}}, "prompts.templates", "no-prompt-templates"),
    case({"task_settings": {"shapes": {"retrieval_templates": []}}}, "task_settings.shapes.retrieval_templates",
         "no-retrieval-templates"),
    case({"task_settings": {"shapes": {"filter_templates": []}}}, "task_settings.shapes.filter_templates",
         "no-filter-templates"),
    case({"source_settings": {"real": {"per_class": []}}}, "source_settings.real.per_class", "no-real-per-class"),
    # ------------------------------------------------------------ zero, negative and unsuppliable scales
    case({"scales": [0, 30]}, "scales.0", "scale-zero"),
    case({"scales": [-30]}, "scales.0", "scale-negative"),
    case({"scales": [30, 30]}, "scales", "scale-twice"),
    case({"source_settings": {"mixed": {"scales": [0]}}}, "source_settings.mixed.scales.0", "source-scale-zero"),
    case({"scales": [30, 60, 500]}, "scales", "scale-above-prompts-images"),
    case({"task_settings": {"shapes": {"prompts": {"images": 40}}}}, "scales", "scale-above-a-tasks-images"),
    case({"source_settings": {"img2img": {"scales": [30, 100]}}}, "source_settings.img2img.scales",
         "scale-above-img2img-images"),
    case({"source_settings": {"random": {"pool_sample": 40}}}, "scales", "scale-above-random-pool-sample"),
    case({"source_settings": {"mixed": {"scales": [300], "ratios": [0.25]}}}, "source_settings.mixed.scales",
         "mix-part-above-its-source"),
    case({"seeds": [-1]}, "seeds.0", "seed-negative"),
    # ------------------------------------------------------------ unknown or repeated names
    case({"tasks": ["shapes", "flowers"]}, "tasks", "unknown-task"),
    case({"tasks": ["shapes", "shapes"]}, "tasks", "duplicate-task"),
    case({"tasks": ["shapes", "my task"]}, "tasks.1", "task-name-with-a-space"),
    case({"sources": ["synthetic", "retreived"]}, "sources", "unknown-source"),
    case({"sources": ["synthetic", "zeroshot"]}, "sources", "zeroshot-is-no-source"),
    case({"sources": ["synthetic", "synthetic"]}, "sources", "duplicate-source"),
    case({"task_settings": {"shapes": {"dataset": {"format": "coco"}}}}, "task_settings.shapes.dataset.format",
         "unknown-dataset-format"),
    case({"task_settings": {"shapes": {"dataset": {"root": "results/world/datasets/shapez"}}}},
         "task_settings.shapes.dataset.root", "unknown-world-dataset"),
    case({"world": {"datasets": {"shapes": {"factors": ["size"]}}}}, "world.datasets.shapes.factors.0",
         "unknown-world-factor"),
    case({"world": {"datasets": {"shapes": {"values": {"shape": ["blob"]}}}}}, "world.datasets.shapes.values.shape",
         "unknown-world-factor-value"),
    case({"world": {"datasets": {"shapes": {"values": {"color": ["red"]}}}}}, "world.datasets.shapes.values.color",
         "values-of-a-factor-not-used"),
    case({"world": {"shifted": {"per_class": {"flowers": 3}}}}, "world.shifted.per_class",
         "shifted-set-of-no-dataset"),
    case({"world": {"generator": {"snapshots": {"Early": 5}}}}, "world.generator.snapshots", "snapshot-name"),
    # ------------------------------------------------------------ models and data that are not there
    case({"world": None, "clip": {"model": "local-dir:/no/such/clip"}}, "clip.model", "missing-clip-dir"),
    case({"clip": {"model": "local-dir:/no/such/clip"}}, "clip.model", "missing-clip-dir-with-world"),
    case({"generator": {"model": "/no/such/sd"}}, "generator.model", "missing-generator-dir"),
    case({"source_settings": {"synthetic_early": {"generator": {"model": "./no/such/generator"}}}},
         "source_settings.synthetic_early.generator.model", "missing-second-generator-dir"),
    case({"world": None, "task_settings": {"shapes": {"dataset": {"root": "/no/such/dataset"}}}},
         "task_settings.shapes.dataset.root", "missing-dataset-root"),
    case({"pool": {"knn_index": "/no/such/index"}}, "pool.knn_index", "missing-knn-index"),
    case({"pool": {"metadata": "/no/such/pool/*.parquet"}}, "pool.metadata", "missing-pool-metadata"),
    case({"curate": {"dedup": {"descriptor": "isc", "weights": "/no/such/isc_ft_v107.pth.tar"}}},
         "curate.dedup.weights", "missing-isc-weights"),
    case({"curate": {"dedup": {"descriptor": "isc"}}}, "curate.dedup.weights", "isc-without-weights"),
    # ------------------------------------------------------------ malformed URLs
    case({"world": {"base_url": "127.0.0.1:18765"}}, "world.base_url", "base-url-without-scheme"),
    case({"world": {"base_url": "https://127.0.0.1:18765"}}, "world.base_url", "base-url-https"),
    case({"world": {"base_url": "http://example.com:80"}}, "world.base_url", "base-url-not-loopback"),
    case({"world": {"base_url": "http://127.0.0.1:99999"}}, "world.base_url", "base-url-port-too-large"),
    case({"world": {"base_url": "http://127.0.0.1:0"}}, "world.base_url", "base-url-port-zero"),
    case({"pool": {"serve": {"base_url": "http//localhost:8000"}}}, "pool.serve.base_url", "serve-url-typo"),
    case({"pool": {"knn_index": None, "knn_service": {"url": "ftp://knn.example.org/"}}}, "pool.knn_service.url",
         "knn-service-not-http"),
    case({"pool": {"knn_index": None, "knn_service": {"url": "http://"}}}, "pool.knn_service.url",
         "knn-service-no-host"),
    case({"pool": {"knn_index": None, "knn_service": {"url": "http://knn example.org"}}}, "pool.knn_service.url",
         "knn-service-space"),
    # ------------------------------------------------------------ an overlay that nulls a required block
    case({"finetune": None}, "finetune", "null-finetune"),
    case({"clip": None}, "clip", "null-clip"),
    case({"task_settings": None}, "task_settings", "null-task-settings"),
    case({"task_settings": {"shapes": None}}, "task_settings.shapes", "null-task"),
    case({"retrieval": {"download": None}}, "retrieval.download", "null-download"),
    case({"world": {"clip": None}}, "world.clip", "null-world-clip"),
    case({"report": None}, "report", "null-report"),
    case({"world": {"shifted": None}}, "task_settings.shapes.eval_sets.shifted.dataset.root",
         "null-shifted-sets-the-tasks-read"),
    # ------------------------------------------------------------ source_settings
    case({"source_settings": {"extra": {"kind": "gan"}}, "sources": [*SMOKE_SOURCES, "extra"]},
         "source_settings.extra.kind", "unknown-source-kind"),
    case({"source_settings": {"synthetic": {"kind": "mixed"}}}, "source_settings.synthetic.kind",
         "built-in-source-of-another-kind"),
    case({"source_settings": {"Extra": {"kind": "synthetic"}}}, "source_settings.Extra", "source-name-upper-case"),
    case({"source_settings": {"retreived": {"scales": [30]}}}, "source_settings.retreived", "settings-of-no-source"),
    case({"source_settings": {"mixed": {"of": ["synthetic", "nothing"]}}}, "source_settings.mixed.of",
         "mix-of-an-unknown-source"),
    case({"source_settings": {"mixed": {"of": ["synthetic", "synthetic"]}}}, "source_settings.mixed.of",
         "mix-of-one-source"),
    case({"source_settings": {"mixed": {"ratios": [1.5]}}}, "source_settings.mixed.ratios.0", "ratio-above-1"),
    case({"source_settings": {"mixed": {"ratios": [0]}}}, "source_settings.mixed.ratios.0", "ratio-0"),
    case({"source_settings": {"img2img": {"strength": 0}}}, "source_settings.img2img.strength", "strength-0"),
    case({"source_settings": {"img2img": {"images": None}}}, "source_settings.img2img.images", "img2img-no-images"),
    # ------------------------------------------------------------ values out of range, the report, the tables
    case({"report": {"sample_classes": 0}}, "report.sample_classes", "report-no-classes"),
    case({"report": {"kept_per_class": -1}}, "report.kept_per_class", "report-negative-count"),
    case({"report": {"vendi_images_per_class": 1}}, "report.vendi_images_per_class", "report-vendi-of-one"),
    case({"aggregate": {"bootstrap": {"confidence": 1.5}}}, "aggregate.bootstrap.confidence", "confidence-1.5"),
    case({"aggregate": {"bootstrap": {"resamples": 10}}}, "aggregate.bootstrap.resamples", "few-resamples"),
    case({"curate": {"filter": {"top_fraction": 0}}}, "curate.filter.top_fraction", "keep-nothing"),
    case({"task_settings": {"shapes": {"finetune": {"epochs": 0}}}}, "task_settings.shapes.finetune.epochs",
         "no-epochs-in-a-task"),
    case({"prompts": {"templates": ["a photo"]}}, "prompts.templates.0", "template-without-class"),
    case({"world": {"clip": {"model_cfg": {"vision_cfg": {"image_size": 64}}}}},
         "world.clip.model_cfg.vision_cfg.image_size", "world-clip-image-size"),
    case({"world": {"generator": {"unet_norm_num_groups": 5}}}, "world.generator.unet_norm_num_groups",
         "groups-that-do-not-divide"),
]


def rejected(overlay: dict) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(deep_merge(BASE, overlay), SCHEMA)
    return str(info.value)


def assert_one_line_per_problem(message: str) -> None:
    """'invalid configuration:', then one line per problem naming its key, and no Python noise."""
    lines = message.splitlines()
    assert lines[0] == "invalid configuration:", message
    problems = [line for line in lines[1:] if not line.startswith(README_HINT)]
    assert problems and all(line.startswith(("  config key '", "  config keys '")) for line in problems), message
    assert len(problems) == len(set(problems)), f"a problem said twice:\n{message}"
    for noise in ("Traceback", 'File "', "None", "<class", "Error:"):
        assert noise not in message, f"{noise!r} in:\n{message}"
    assert max(map(len, lines)) < 700, message


def test_the_smoke_config_itself_is_valid():
    assert check_config(BASE, SCHEMA) is None


def test_there_are_enough_distinct_broken_configs():
    overlays = [yaml.safe_dump(p.values[0], sort_keys=True) for p in BROKEN]
    assert len(set(overlays)) == len(overlays) >= 30


@pytest.mark.parametrize("overlay, key", BROKEN)
def test_a_broken_config_is_rejected_naming_its_key(overlay, key):
    message = rejected(overlay)
    assert f"config key '{key}'" in message, message
    assert_one_line_per_problem(message)


def test_a_scale_a_source_cannot_supply_names_the_limit():
    """What the message says: the scale, the source, the task and the key that limits it."""
    message = rejected({"scales": [30, 60, 500]})
    assert ("config key 'scales': scale 500 of source 'synthetic' takes more images than it can supply for task "
            "shapes (prompts.images: 120, before curation drops any)") in message
    # a source with its own scales is told about those, and a mix about the part its source cannot supply
    message = rejected({"source_settings": {"mixed": {"scales": [300], "ratios": [0.25]}}})
    assert ("config key 'source_settings.mixed.scales': scale 300 of source 'mixed' takes 225 images of "
            "'synthetic', more than it can supply for task shapes (prompts.images: 120") in message


def test_short_cells_stay_allowed():
    """A scale within what a source makes is fine even where curation may keep fewer (a short cell); the
    retrieved and real sources have no limit the config fixes."""
    images = BASE["prompts"]["images"]
    check_config(deep_merge(BASE, {"sources": ["synthetic", "retrieved"], "scales": [30, images]}), SCHEMA)
    check_config(deep_merge(BASE, {"sources": ["retrieved", "real"], "scales": [10**6]}), SCHEMA)


def test_a_null_block_says_null_in_yaml_words():
    message = rejected({"finetune": None})
    assert "config key 'finetune': is null, must be a mapping (an overlay's null removes a block" in message
    assert "config key 'finetune.lr': is null, must be a number" in rejected({"finetune": {"lr": None}})


def test_a_pattern_says_what_it_asks_for():
    message = rejected({"world": {"base_url": "localhost:8000"}})
    assert ("config key 'world.base_url': 'localhost:8000' is not a loopback URL with a port: "
            "http://127.0.0.1:<port> or http://localhost:<port>") in message
    assert "^http" not in message


def _schema_patterns(node) -> set[str]:
    if isinstance(node, dict):
        own = {node["pattern"]} if isinstance(node.get("pattern"), str) else set()
        return own.union(*(_schema_patterns(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_schema_patterns(v) for v in node))
    return set()


def test_every_schema_pattern_has_words():
    assert _schema_patterns(yaml.safe_load(Path(SCHEMA).read_text())) == set(PATTERN_HINTS)


def test_the_world_clip_keys_are_open_clips():
    """The schema lists the arguments open_clip.CLIP and its tower configs take, no more and no fewer."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    schema = yaml.safe_load(Path(SCHEMA).read_text())
    defs = schema["$defs"]
    assert set(defs["clip_vision_cfg"]["properties"]) == {f.name for f in dataclasses.fields(CLIPVisionCfg)}
    assert set(defs["clip_text_cfg"]["properties"]) == {f.name for f in dataclasses.fields(CLIPTextCfg)}
    keys = set(schema["properties"]["world"]["properties"]["clip"]["properties"]["model_cfg"]["properties"])
    code_only = {"self", "cast_dtype", "output_dict"}  # set by the code that builds it, not by a config
    assert keys == set(inspect.signature(CLIP.__init__).parameters) - code_only


# ---------------------------------------------------------------- through the Snakemake CLI (dry runs)

CLI = [
    case({"world": {"clip": {"model_cfg": {"vision_cfg": {"foo": 1}}}}}, "world.clip.model_cfg.vision_cfg",
         "unknown-key-depth-4"),
    case({"retrieval": {"knn": {"k": "many"}}}, "retrieval.knn.k", "wrong-type"),
    case({"seeds": []}, "seeds", "empty-list"),
    case({"scales": [30, 500]}, "scales", "unsuppliable-scale"),
    case({"sources": ["synthetic", "retreived"]}, "sources", "unknown-source"),
    case({"tasks": ["shapes", "shapes"]}, "tasks", "duplicate-task"),
    case({"generator": {"model": "/no/such/sd"}}, "generator.model", "missing-model"),
    case({"world": {"base_url": "localhost:8000"}}, "world.base_url", "malformed-url"),
    case({"finetune": None}, "finetune", "nulled-block"),
    case({"report": {"sample_classes": 0}}, "report.sample_classes", "report-value"),
]


def dry_run(workdir: Path, *args: str, overlays=()) -> str:
    (workdir / "port.yaml").write_text("{}")
    proc = snakemake(workdir, "-n", *args, overlays=list(overlays), timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert not (workdir / "results").exists()
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay, key", CLI)
def test_the_cli_stops_before_any_job(tmp_path, overlay, key):
    output = dry_run(tmp_path, overlays=[overlay])
    assert f"config key '{key}'" in output, output[-3000:]
    assert "invalid configuration:" in output
    assert "Traceback" not in output
    assert "Building DAG of jobs" not in output


def profile(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(text)
    return folder


# What Snakemake itself says about a profile value (read by its own argument parser), and what the
# workflow adds where Snakemake takes the value silently. Not checked here, as Snakemake says nothing:
# `set-resources` for a rule that does not exist (ignored; which rules exist depends on the config).
PROFILES = [
    # the workflow's own check: Snakemake would run jobs on -1 threads, wait forever, or crash in its pool
    ("cores: -1", "--cores (or a profile's 'cores') is -1: give a positive number, or all"),
    ("cores: 0", "--cores (or a profile's 'cores') is 0: give a positive number, or all"),
    ("jobs: -5", "--jobs (or a profile's 'jobs') is -5: give a positive number, or unlimited"),
    # Snakemake's own messages
    ("cores: many", "Error parsing number of cores (--cores, -c): must be integer or 'all'."),
    ("no-such-option: 3", "unrecognized arguments: --no-such-option=3"),
    ("retries: many", "argument --retries/--restart-times/-T: invalid int value: 'many'"),
    ("keep-going: maybe", "Unexpected value for keep-going: 'maybe'"),
    ("resources: [gpu=-1]", "Resource 'gpu' was given value '-1', which is not a positive integer"),
    ("default-resources: {mem_mb: -5}", "Resource 'mem_mb' was given value '-5', which is not a positive integer"),
    # reported when the first job that takes the default is planned (Snakemake prints the rule and its
    # own short "Traceback:" line), still before any job runs
    ("default-resources: [mem_mb=abc]", "Resource 'mem_mb' assigned callable that returned 'abc'"),
]


@pytest.mark.parametrize("text, message", PROFILES, ids=[t for t, _ in PROFILES])
def test_a_bad_profile_value_stops_the_run(tmp_path, text, message):
    workdir = tmp_path / "run"
    workdir.mkdir()
    output = dry_run(workdir, "--workflow-profile", str(profile(tmp_path, text)))
    assert message in output, output[-3000:]
    if "mem_mb=abc" not in text:
        assert "Traceback" not in output
