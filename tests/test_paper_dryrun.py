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
from paper_support import POOL_PARTS, stand_ins

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "config.schema.yaml")


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def paper() -> dict:
    return deep_merge(_load(ROOT / "config.yaml"), _load(ROOT / "configs" / "paper.yaml"))


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
    assert spec["generators"]["synthetic"]["model"] == paper["generator"]["model"]
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
    # the ISC weights file is an input of every curate job: a new file reruns curation
    assert sum(paper["curate"]["dedup"]["weights"] in line for line in inputs) == stats["curate"]
    assert not (tmp_path / "results").exists()  # nothing ran


def test_without_data_the_run_stops_before_any_job_naming_every_missing_path(tmp_path):
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "config key 'pool.metadata'" in out and "config key 'task_settings.stanford_cars.dataset.root'" in out
    assert "config key 'curate.dedup.weights'" in out
    assert "README, \"Running the paper's experiment\"" in out
    assert "Traceback" not in out


# ---------------------------------------------------------------- what the jobs ask the scheduler for

# Published split sizes of the paper's datasets (ILSVRC-2012, DTD partition 1, FGVC-Aircraft 2013b, Stanford
# Cars, Flowers-102), written out here rather than taken from synret.split_sizes, so that the check below is
# independent of the code it checks. Cars' and ImageNet's val are carved out of train (the config's val_from_train).
PUBLISHED = {
    "imagenet": {"train": 1_281_167, "test": 50_000},  # test: ILSVRC-2012 val
    "dtd": {"train": 1_880, "val": 1_880, "test": 1_880},
    "fgvc_aircraft": {"train": 3_334, "val": 3_333, "test": 3_333},
    "stanford_cars": {"train": 8_144, "test": 8_041},
    "flowers102": {"train": 1_020, "val": 1_020, "test": 6_149},
}
# SD 1.5 at 512 px, 50 steps, batch 16, torch 2.0 compile: 1.27 images/s end-to-end on an A100
# (onnxruntime's Stable Diffusion README, in /work/shared/notes/perf.md 1.2)
SD15_IMAGES_PER_S_50_STEPS = 1.27
SIZED_FROM_THEIR_INPUTS = {"fetch_retrieved", "substring_scan"}  # <TBD> in a dry run: their inputs are not made yet


def planned_jobs(stdout: str) -> list[dict]:
    """Every job a dry run lists: rule, wildcards, threads and resources as Snakemake resolved them."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", stdout):
        head = re.match(r"(?:local)?rule (\w+):\n", block)
        if not head:
            continue
        fields = dict(re.findall(r"^ {4}(\w+): (.*)$", block, re.M))
        jobs.append({
            "rule": head.group(1),
            "wildcards": dict(kv.split("=", 1) for kv in fields.get("wildcards", "").split(", ") if kv),
            "threads": int(fields.get("threads", 1)),
            "resources": dict(kv.split("=", 1) for kv in fields.get("resources", "").split(", ") if kv),
        })
    return jobs


def task_splits(paper: dict, task: str) -> dict[str, int]:
    from synret.tasks import carve_val

    sizes = dict(PUBLISHED[task])
    carve = task_definition(paper, task)["dataset"].get("val_from_train")
    if carve:
        train, val = carve_val(sizes["train"], carve["size"], carve["seed"])
        sizes["train"], sizes["val"] = len(train), len(val)
    return sizes


def rate(gpu: float, decode: float, workers: int) -> float:
    """Images a second: the lower of the GPU's and the workers' decoding, or both by turns in one process."""
    return min(gpu, workers * decode) if workers else 1 / (1 / gpu + 1 / decode)


def expected_seconds(paper: dict, job: dict) -> float:
    """The job's work from the split sizes and the stated throughputs, with the stated start and safety factor."""
    from synret import resources as r

    rule, wc, threads = job["rule"], job["wildcards"], job["threads"]
    if rule == "synthesize_shard":
        s = stage_settings(paper, "synthetic", wc["task"])
        return s["shard_size"] * s["steps"] / 50 / SD15_IMAGES_PER_S_50_STEPS
    sizes = task_splits(paper, wc["task"])
    amp = "fp32" if paper["clip"]["precision"] == "fp32" else "amp"
    if rule == "curate":
        s = stage_settings(paper, "curate", wc["task"])
        workers = min(r.MAX_LOADER_WORKERS, threads - 1)
        candidates = stage_settings(paper, "prompts", wc["task"])["images"]  # planned before the manifests exist
        evals = sum(sizes[split] for split in s["dedup"]["splits"])
        assert s["dedup"]["descriptor"] == "isc"
        work = (candidates / rate(r.GPU_IMAGES_PER_S["infer", amp], r.DECODE_PER_CORE["small"], workers)
                + candidates / rate(r.ISC_IMAGES_PER_S, r.DECODE_PER_CORE["small"], workers)
                + evals / rate(r.ISC_IMAGES_PER_S, r.DECODE_PER_CORE["photo"], workers))
        return r.CURATE_START_SECONDS + r.SAFETY * work
    ft, ev = stage_settings(paper, "finetune", wc["task"]), stage_settings(paper, "evaluate", wc["task"])
    workers = min(r.MAX_LOADER_WORKERS, threads - ft["threads"])
    infer = r.GPU_IMAGES_PER_S["infer", "fp32" if ev["precision"] == "fp32" else "amp"]
    work = sum(sizes[s] for s in ev["splits"]) / rate(infer, r.DECODE_PER_CORE["photo"], workers)
    probe = ev["linear_probe"]
    fit = sizes["train"] + sizes["val"]  # the probe trains on train and val, and is tested on test
    work += (fit + sizes["test"]) / rate(infer, r.DECODE_PER_CORE["photo"], workers)
    work += probe["epochs"] * -(-fit // probe["batch_size"]) * r.SECONDS_PER_PROBE_STEP
    if rule == "finetune":
        work += ft["epochs"] * int(wc["size"][1:]) / rate(r.GPU_IMAGES_PER_S["train", amp], r.DECODE_PER_CORE["small"],
                                                       ft["num_workers"])
    return r.START_SECONDS + r.SAFETY * work


def test_every_jobs_walltime_covers_its_work(paper, tmp_path):
    """Each job of the grid asks for a walltime that covers its work: for the jobs that read a task's images
    (finetuning cells: training, evaluation of val and test, the linear probe's features and steps;
    zero-shot cells; curation), computed here from the datasets' split sizes and the stated throughputs,
    in data-loader workers from the job's threads. Every other job plans a walltime too, but for those sized
    from inputs that upstream jobs make."""
    from synret.resources import MIN_RUNTIME

    stand_ins(tmp_path, paper)
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert len(jobs) == job_stats(proc.stdout)["total"]
    # the jobs whose rule sizes its walltime (synret.resources, named as their rule)
    sized = {m for f in (ROOT / "rules").glob("*.smk") for m in re.findall(r'runtime=sized\("runtime", "(\w+)"\)', f.read_text())}
    assert {"finetune", "zeroshot", "curate", "synthesize_shard"} | SIZED_FROM_THEIR_INPUTS <= sized
    checked = {}
    for job in jobs:
        runtime = job["resources"].get("runtime")
        if job["rule"] not in sized:  # light steps: the profile's default walltime
            assert runtime is None, job
            continue
        if job["rule"] in SIZED_FROM_THEIR_INPUTS:
            assert runtime == "<TBD>", job
            continue
        assert int(runtime) >= MIN_RUNTIME, job
        if job["rule"] in ("finetune", "zeroshot", "curate", "synthesize_shard"):
            if job["rule"] != "synthesize_shard":
                assert job["threads"] > 2, job  # data-loader workers: the threads beyond those that compute
            need = expected_seconds(paper, job)
            assert int(runtime) * 60 >= need, (job, need)
            checked[job["rule"]] = checked.get(job["rule"], 0) + 1
    assert checked == {"finetune": 30, "zeroshot": 5, "curate": 10, "synthesize_shard": 250}


def test_dry_run_plans_every_source(paper, tmp_path):
    """The sources beyond the paper's two, as paper.yaml's comment lists them, plan on the paper's grid."""
    every = ["synthetic", "sd21", "retrieved", "mixed", "real", "random", "img2img"]
    stand_ins(tmp_path, paper)
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump({"sources": every}))
    proc = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "configs" / "paper.yaml"), str(tmp_path / "sources.yaml"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = job_stats(proc.stdout)
    tasks, scales, seeds = paper["tasks"], paper["scales"], paper["seeds"]
    settings = paper["source_settings"]
    per_task = (4 * len(scales) * len(seeds)  # synthetic, sd21, retrieved, random
                + len(settings["mixed"]["ratios"]) * len(settings["mixed"]["scales"]) * len(seeds)
                + len(settings["real"]["per_class"]) * len(seeds)
                + len(settings["img2img"]["scales"]) * len(seeds))
    assert stats["finetune"] == len(tasks) * per_task
    assert stats["synthesize_shard"] == 2 * 250  # each generator samples every prompt
    shards = shard_count(settings["img2img"]["images"], paper["synthetic"]["shard_size"])
    assert stats["img2img_shard"] == len(tasks) * shards  # retrieved's first `images` kept images, regenerated
    assert stats["random_sample"] == stats["curate_real"] == len(tasks)
    assert stats["fetch_retrieved"] == 2 * len(tasks)  # the retrieved candidates and the random sample
    assert stats["curate"] == 5 * len(tasks)  # mixed has no curated set of its own, real is kept as it is
    for cell in ("imagenet/sd21/n1000/seed42", "dtd/mixed-25/n10000/seed42", "flowers102/real/kall/seed42",
                 "stanford_cars/random/n100000/seed42"):
        assert f"results/cells/{cell}/metrics.json" in proc.stdout
    assert "results/sd21/imagenet/shard-00000.tar" in proc.stdout
    assert "results/img2img/dtd/shard-00001.tar" in proc.stdout and "imagenet/img2img/n100000" not in proc.stdout
