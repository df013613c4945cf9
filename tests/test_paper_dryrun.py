"""configs/paper.yaml: valid, faithful to the reference protocol, and its whole grid plans with `snakemake -n`.

No dataset, model or pool is needed: the dry run happens in a scratch directory where the paths the config
names exist as empty stand-ins (the parse-time check only asks that local paths exist; the preflight job,
which looks inside them, is planned but not run by `-n`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synret.config import check_config, deep_merge, shard_count, stage_settings, task_definition
from synret.preflight import preflight_spec

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "config.schema.yaml")
POOL_PARTS = 3


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def paper() -> dict:
    return deep_merge(_load(ROOT / "config.yaml"), _load(ROOT / "configs" / "paper.yaml"))


def stand_ins(workdir: Path, config: dict) -> None:
    """Empty files and folders at every local path the config names."""
    for task in config["tasks"]:
        Path(workdir, config["task_settings"][task]["dataset"]["root"]).mkdir(parents=True, exist_ok=True)
    metadata = Path(workdir, config["pool"]["metadata"])
    metadata.parent.mkdir(parents=True, exist_ok=True)
    for i in range(POOL_PARTS):
        (metadata.parent / f"part-{i:05d}.parquet").touch()
    Path(workdir, config["pool"]["knn_index"]).mkdir(parents=True, exist_ok=True)
    for entry in preflight_spec(config)["caption_files"]:  # the reference's caption files
        Path(workdir, entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        Path(workdir, entry["path"]).touch()
    weights = Path(workdir, config["curate"]["dedup"]["weights"])  # the ISC dedup descriptor's
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.touch()


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(ROOT / "configs" / "paper.yaml"), "--cores", "16", *args],
        capture_output=True, text=True, timeout=600)


def job_stats(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


# ---------------------------------------------------------------- the configuration


def test_paper_config_is_valid_where_its_paths_exist(paper, tmp_path, monkeypatch):
    stand_ins(tmp_path, paper)
    monkeypatch.chdir(tmp_path)
    assert check_config(paper, SCHEMA) is None
    assert paper["world"] is None


def test_paper_protocol(paper):
    assert paper["tasks"] == ["imagenet", "dtd", "fgvc_aircraft", "stanford_cars", "flowers102"]
    assert (paper["clip"]["model"], paper["clip"]["pretrained"]) == ("ViT-B-16", "laion2b_s34b_b88k")
    ft = {t: stage_settings(paper, "finetune", t) for t in paper["tasks"]}
    for task, cfg in ft.items():
        assert (cfg["batch_size"], cfg["weight_decay"], cfg["betas"], cfg["warmup_steps"], cfg["grad_clip"]) == (
            512, 0.1, [0.9, 0.95], 500, 1.0)
        assert (cfg["lr"], cfg["epochs"]) == ((1e-6, 10) if task == "imagenet" else (1e-5, 30))
    syn = stage_settings(paper, "synthetic", "dtd")
    assert (syn["scheduler"], syn["steps"], syn["guidance_scale"], syn["height"], syn["width"], syn["save_size"]) == (
        "ddim", 50, 2.0, 512, 512, 256)
    retrieval = stage_settings(paper, "retrieval", "dtd")
    assert retrieval["knn"]["k"] == 500 and retrieval["download"]["image_size"] == 256
    assert "NSFW" in retrieval["drop_nsfw"]
    for task in paper["tasks"]:  # [ref] the ISC-2021 descriptor against the test split, at the reference's threshold
        dedup = stage_settings(paper, "curate", task)["dedup"]
        assert (dedup["descriptor"], dedup["threshold"], dedup["splits"]) == ("isc", 0.604169, ["test"])
        assert dedup["weights"].endswith("isc_ft_v107.pth.tar")


def test_paper_templates_and_splits(paper):
    defs = {t: task_definition(paper, t) for t in paper["tasks"]}
    assert len(defs["imagenet"]["templates"]) == 80 and len(set(defs["imagenet"]["templates"])) == 80
    assert len(defs["imagenet"]["filter_templates"]) == 7
    assert [len(defs[t]["templates"]) for t in ("dtd", "fgvc_aircraft", "stanford_cars", "flowers102")] == [12, 2, 9, 2]
    assert [len(defs[t]["retrieval_templates"]) for t in ("dtd", "fgvc_aircraft", "stanford_cars", "flowers102")] == [
        8, 2, 8, 1]
    for d in defs.values():
        for template in d["templates"] + d["retrieval_templates"] + d["filter_templates"]:
            assert "{c}" in template, template
    assert defs["stanford_cars"]["dataset"]["val_from_train"] == {"seed": 42, "size": 0.2}
    assert defs["imagenet"]["dataset"]["val_from_train"] == {"seed": 42, "size": 50000}
    assert defs["imagenet"]["dataset"]["splits"]["test"] == "val"
    assert defs["dtd"]["dataset"]["partition"] == 1


def test_paper_names_match_their_sources(paper):
    """ImageNet's templates are open_clip's OpenAI ones; the Flowers renames hit torchvision's class names."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    from torchvision.datasets import Flowers102

    assert task_definition(paper, "imagenet")["templates"] == [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    renames = task_definition(paper, "flowers102")["dataset"]["renames"]
    assert set(renames) <= set(Flowers102.classes) and not set(renames.values()) & set(Flowers102.classes)


def test_preflight_spec_names_everything_the_grid_needs(paper):
    spec = preflight_spec(paper)
    assert spec["generator"]["model"] == paper["generator"]["model"]
    assert sorted(spec["datasets"]) == sorted(paper["tasks"])
    assert spec["retrieval"] == {"knn_modalities": ["image", "text"], "substring": True}
    assert spec["knn_model"] == paper["pool"]["knn_model"]
    ref = "data/reference_prompts/"
    assert spec["caption_files"] == [
        {"path": ref + "ds_background_dict.json",
         "key": "task_settings.fgvc_aircraft.prompts.llm.backgrounds_file.path", "tasks": ["fgvc_aircraft", "stanford_cars", "flowers102"]},
        {"path": ref + "imgnet_background_dict.json", "key": "task_settings.imagenet.prompts.llm.backgrounds_file.path",
         "tasks": ["imagenet"]},
        {"path": ref + "utils.py", "key": "prompts.llm.examples_file", "tasks": paper["tasks"]},
    ]
    assert spec["copydetect"] == [{"key": "curate.dedup.weights", "path": paper["curate"]["dedup"]["weights"]}]


def test_paper_captions_follow_the_reference(paper):
    """Classes drawn uniformly; backgrounds from the reference's dicts (by class for ImageNet, one list per
    dataset otherwise; none for DTD's texture prompts); its in-context examples; the 80% naming bound."""
    prompts = {t: stage_settings(paper, "prompts", t) for t in paper["tasks"]}
    backgrounds = {t: p["llm"].get("backgrounds_file") for t, p in prompts.items()}
    ref = "data/reference_prompts/"
    assert backgrounds == {
        "imagenet": {"path": ref + "imgnet_background_dict.json", "lowercase": True},
        "dtd": None,
        "fgvc_aircraft": {"path": ref + "ds_background_dict.json", "key": "airplanes"},
        "stanford_cars": {"path": ref + "ds_background_dict.json", "key": "cars"},
        "flowers102": {"path": ref + "ds_background_dict.json", "key": "flowers"},
    }
    for p in prompts.values():
        assert p["class_sampling"] == "uniform"
        assert p["llm"]["examples_file"] == ref + "utils.py" and p["llm"]["min_naming_share"] == 0.8
        assert p["relations"] == ["in", "on", "next to", "behind", "in front of", "over", "under", "above", "below",
                                  "besides"]


# ---------------------------------------------------------------- the dry run


def test_dry_run_lists_the_whole_grid(paper, tmp_path):
    stand_ins(tmp_path, paper)
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = job_stats(proc.stdout)
    tasks = paper["tasks"]
    cells = len(tasks) * len(paper["sources"]) * len(paper["scales"]) * len(paper["seeds"])
    shards = sum(shard_count(stage_settings(paper, "prompts", t)["images"],
                             stage_settings(paper, "synthetic", t)["shard_size"]) for t in tasks)
    assert stats["preflight"] == 1
    # every paper task captions its prompts with LLaMA-2: a GPU job per task, no template-prompt jobs
    assert stats["generator_prompts_llm"] == len(tasks) and "generator_prompts" not in stats
    assert stats["task"] == stats["zeroshot"] == stats["knn_query"] == stats["fetch_retrieved"] == len(tasks)
    assert stats["finetune"] == cells == 30
    assert stats["synthesize_shard"] == shards == 250
    assert stats["substring_scan"] == len(tasks) * POOL_PARTS
    assert stats["curate"] == len(tasks) * len(paper["sources"])
    assert stats["aggregate"] == 1
    for task in tasks:
        assert f"results/cells/{task}/synthetic/n100000/seed42/metrics.json" in proc.stdout
    # the reference's caption files are inputs of the prompt jobs: editing one reruns that task's captions
    inputs = [line for line in proc.stdout.splitlines() if line.strip().startswith("input:")]
    for task, background in [("imagenet", "imgnet_background_dict.json"), ("flowers102", "ds_background_dict.json"),
                             ("dtd", None)]:
        (line,) = [line for line in inputs if f"results/tasks/{task}/task.json" in line and "reference_prompts" in line]
        assert "data/reference_prompts/utils.py" in line
        if background:
            assert f"data/reference_prompts/{background}" in line
        else:  # DTD's texture prompts take no backgrounds
            assert "background_dict" not in line
    assert not (tmp_path / "results").exists()  # nothing ran


def test_without_data_the_run_stops_before_any_job_naming_every_missing_path(tmp_path):
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "config key 'pool.metadata'" in out and "config key 'task_settings.stanford_cars.dataset.root'" in out
    assert "config key 'curate.dedup.weights'" in out
    assert "README, \"Running the paper's experiment\"" in out
    assert "Traceback" not in out
