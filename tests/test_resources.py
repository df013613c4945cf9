"""Resource requests sized from the config (synret.resources), as the rules pass them to a scheduler."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from synret.config import deep_merge
from synret.resources import (
    DECODE_PER_CORE,
    ESTIMATORS,
    GPU_IMAGES_PER_S,
    MAX_LOADER_WORKERS,
    MIN_RUNTIME,
    PROBE_DEFAULTS,
    SAFETY,
    assign_local_gpus,
    cell_threads,
    cell_work,
    claim_gpus,
    claimed_devices,
    curate_threads,
    curate_work,
    estimate,
    images_per_second,
    loader_workers,
    local_gpu_pool,
    parquet_rows,
)
from synret.split_sizes import KNOWN_SPLIT_SIZES, UNKNOWN_SPLIT_SIZE, carved_sizes, split_sizes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    return yaml.safe_load(open(REPO / "config.yaml"))


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Estimates may count a task's manifests under ./results where they exist: run each test where none do,
    so that a checkout holding an earlier run's results sizes as a clean one does."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def real(demo):
    """The demo grid pointed at real (hub) models: no world, so no tiny-model discounts."""
    cfg = copy.deepcopy(demo)
    cfg["world"] = None
    cfg["clip"]["model"] = "ViT-B-16"
    cfg["generator"]["model"] = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    return cfg


CELL = {"task": "shapes", "source": "synthetic", "scale": "200", "seed": "0"}


@pytest.mark.parametrize("job", sorted(set(ESTIMATORS) - {"world"}))
def test_every_job_grows_with_each_attempt(demo, job):
    first = estimate(job, demo, CELL, attempt=1, input_mb=lambda: 50.0)
    for attempt in (2, 3):
        later = estimate(job, demo, CELL, attempt=attempt, input_mb=lambda: 50.0)
        assert later == {"mem_mb": first["mem_mb"] * attempt, "runtime": first["runtime"] * attempt}
    assert first["mem_mb"] >= 1000 and first["runtime"] >= MIN_RUNTIME
    assert all(isinstance(v, int) for v in first.values())


def test_world_jobs_are_sized_from_the_world(demo):
    small = deep_merge(demo, yaml.safe_load(open(REPO / "configs" / "smoke.yaml")))
    assert estimate("world", small, {})["runtime"] < estimate("world", demo, {})["runtime"]
    bigger = deep_merge(demo, {"world": {"pool": {"size": 200_000}}})
    assert estimate("world", bigger, {})["mem_mb"] > estimate("world", demo, {})["mem_mb"]


def test_finetune_walltime_follows_scale_and_epochs(real):
    small = estimate("finetune", real, {**CELL, "scale": "1000"})
    large = estimate("finetune", real, {**CELL, "scale": "100000"})
    # training grows with the scale; evaluating the task's splits costs the same at every scale
    train = cell_work(real, "shapes", 100000)["train"] - cell_work(real, "shapes", 1000)["train"]
    assert train > 0 and large["runtime"] - small["runtime"] >= SAFETY * train / 60 - 1
    longer = deep_merge(real, {"finetune": {"epochs": 30}})
    assert estimate("finetune", longer, {**CELL, "scale": "100000"})["runtime"] > large["runtime"]


def test_task_overrides_reach_only_that_task(real):
    cfg = deep_merge(real, {"task_settings": {"shapes": {"finetune": {"epochs": 40}}}})
    cell = {**CELL, "scale": "50000"}
    assert estimate("finetune", cfg, cell)["runtime"] > estimate("finetune", real, cell)["runtime"]
    other = {**cell, "task": "colored_shapes"}
    assert estimate("finetune", cfg, other) == estimate("finetune", real, other)


def test_generation_is_sized_by_shard_and_resolution(real):
    sd = deep_merge(real, {"synthetic": {"height": 512, "width": 512, "save_size": 256, "steps": 25}})
    base = estimate("synthesize_shard", sd, CELL)
    bigger_shard = deep_merge(sd, {"synthetic": {"shard_size": sd["synthetic"]["shard_size"] * 10}})
    assert estimate("synthesize_shard", bigger_shard, CELL)["runtime"] > base["runtime"]
    assert estimate("synthesize_shard", bigger_shard, CELL)["mem_mb"] > base["mem_mb"]
    assert base["runtime"] > estimate("synthesize_shard", real, CELL)["runtime"]  # 512 px vs 16 px


def test_captioning_is_sized_by_the_number_of_prompts(real):
    few = deep_merge(real, {"prompts": {"images": 1000}})
    many = deep_merge(real, {"prompts": {"images": 250_000}})
    assert estimate("generator_prompts_llm", many, CELL)["runtime"] > 10 * estimate("generator_prompts_llm", few, CELL)["runtime"]
    assert estimate("generator_prompts_llm", real, CELL)["mem_mb"] >= 28_000  # a 7B model in 16 bit, loaded


def test_isc_dedup_adds_its_network_and_images(real):
    isc = deep_merge(real, {"curate": {"dedup": {"descriptor": "isc", "weights": "isc_ft_v107.pth.tar"}}})
    base, with_isc = estimate("curate", real, CELL), estimate("curate", isc, CELL)
    assert with_isc["mem_mb"] > base["mem_mb"] and with_isc["runtime"] > base["runtime"]
    # every candidate goes through it: the task's synthetic images, or the rows of the source's manifests
    more = deep_merge(isc, {"prompts": {"images": 250_000}})
    assert estimate("curate", more, CELL)["runtime"] > estimate("curate", isc, CELL)["runtime"] + 60
    retrieved = {**CELL, "source": "retrieved"}
    assert estimate("curate", isc, retrieved)["runtime"] == with_isc["runtime"]  # before its manifest exists
    assert estimate("curate", isc, retrieved, manifest_rows=lambda: 500_000)["runtime"] > with_isc["runtime"] + 60


def test_img2img_walltime_follows_its_images_and_strength(real):
    cfg = deep_merge(real, {"sources": [*real["sources"], "img2img"],
                            "synthetic": {"steps": 50, "height": 512, "width": 512},
                            "source_settings": {"img2img": {"images": 10000, "strength": 0.1}}})
    shard = {"task": "shapes", "source": "img2img", "shard": "00000"}
    weak = estimate("img2img_shard", cfg, shard)
    strong = estimate("img2img_shard", deep_merge(cfg, {"source_settings": {"img2img": {"strength": 1.0}}}), shard)
    assert strong["runtime"] > weak["runtime"] >= MIN_RUNTIME  # 50 denoising steps an image against 5
    few = estimate("img2img_shard", deep_merge(cfg, {"source_settings": {"img2img": {"images": 10}}}), shard)
    assert few["runtime"] <= weak["runtime"] and few["mem_mb"] < weak["mem_mb"]  # a shard holds at most `images`


def test_real_models_ask_for_more_than_the_demo(demo, real):
    for job in ("synthesize_shard", "finetune", "zeroshot", "curate"):
        assert estimate(job, real, CELL)["mem_mb"] > estimate(job, demo, CELL)["mem_mb"]


def test_input_sizes_are_read_only_where_used(demo):
    def unknown():
        raise AssertionError("input size read")

    for job in ("synthesize_shard", "finetune", "zeroshot", "knn_query", "curate"):
        estimate(job, demo, CELL, input_mb=unknown)
    assert estimate("substring_scan", demo, CELL, input_mb=lambda: 500.0)["mem_mb"] > estimate(
        "substring_scan", demo, CELL, input_mb=lambda: 5.0)["mem_mb"]


def test_bad_requests(demo):
    with pytest.raises(ValueError, match="attempt"):
        estimate("finetune", demo, CELL, attempt=0)
    with pytest.raises(KeyError):
        estimate("no_such_rule", demo, CELL)


# ---------------------------------------------------------------- jobs that read a task's images


def test_loader_workers_are_the_threads_that_do_not_compute():
    assert loader_workers(1) == 0 and loader_workers(1, 1) == 0  # one thread: images read in process
    assert loader_workers(2) == 1 and loader_workers(9, 1) == 8 and loader_workers(9, None) == 8
    assert loader_workers(10, 2) == 8 and loader_workers(2, 2) == 0
    assert loader_workers(64, 1) == MAX_LOADER_WORKERS
    assert loader_workers(9, 1, cpus=4) == 3 and loader_workers(9, 1, cpus=1) == 0  # no more than the machine has


def test_jobs_threads_hold_their_workers(demo):
    paper = deep_merge(demo, yaml.safe_load(open(REPO / "configs" / "paper.yaml")))
    assert cell_threads(demo, "shapes") == 1 and curate_threads(demo, "shapes") == 1  # the demo: all in process
    ft = paper["finetune"]
    assert cell_threads(paper, "imagenet") == ft["threads"] + ft["num_workers"]
    assert curate_threads(paper, "imagenet") == 1 + paper["curate"]["num_workers"]


def test_known_split_sizes_and_carved_validation_splits(demo):
    from synret.tasks import carve_val

    paper = deep_merge(demo, yaml.safe_load(open(REPO / "configs" / "paper.yaml")))
    assert split_sizes(paper, "imagenet") == {"train": 1_281_167 - 50_000, "val": 50_000, "test": 50_000}
    assert split_sizes(paper, "dtd") == {"train": 1_880, "val": 1_880, "test": 1_880}
    assert split_sizes(paper, "fgvc_aircraft") == {"train": 3_334, "val": 3_333, "test": 3_333}
    assert split_sizes(paper, "flowers102") == {"train": 1_020, "val": 1_020, "test": 6_149}
    cars = split_sizes(paper, "stanford_cars")
    assert cars["test"] == 8_041 and cars["train"] + cars["val"] == 8_144
    # carved as tasks.carve_val draws it (torch's random_split)
    for n, size in ((8_144, 0.2), (1_000, 0.3), (1_281_167, 50_000), (7, 0.5)):
        train, val = carve_val(n, size, 0)
        assert carved_sizes(n, size) == (len(train), len(val))
    assert KNOWN_SPLIT_SIZES["fgvc_aircraft"]["trainval"] == 6_667


def test_other_datasets_are_counted(demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the demo world's datasets: classes x images per class, from its config
    from synret.world.build import DatasetSpec

    assert split_sizes(demo, "shapes") == {"train": 200, "val": 200, "test": 1000}
    for name, spec in demo["world"]["datasets"].items():
        classes = len(DatasetSpec.from_config(name, spec).classes())
        assert split_sizes(demo, name) == {s: classes * n for s, n in spec["per_class"].items()}
    # an image folder of one's own: its files, or the task's manifests once they exist
    cfg = deep_merge(demo, {"world": None, "task_settings": {"shapes": {"dataset": {"root": "mine"}}}})
    assert split_sizes(cfg, "shapes") == {s: UNKNOWN_SPLIT_SIZE for s in ("train", "val", "test")}
    for split, n in (("train", 3), ("val", 2), ("test", 4)):
        for i in range(n):
            (tmp_path / "mine" / split / "a").mkdir(parents=True, exist_ok=True)
            (tmp_path / "mine" / split / "a" / f"{i}.png").touch()
    (tmp_path / "mine" / "test" / "a" / "notes.txt").touch()
    assert split_sizes(cfg, "shapes") == {"train": 3, "val": 2, "test": 4}
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "results" / "tasks" / "shapes").mkdir(parents=True)
    for split, n in (("train", 30), ("val", 20), ("test", 40)):
        pq.write_table(pa.table({"key": [str(i) for i in range(n)]}), tmp_path / "results" / "tasks" / "shapes" / f"{split}.parquet")
    assert split_sizes(cfg, "shapes") == {"train": 30, "val": 20, "test": 40}
    assert parquet_rows([str(tmp_path / "results" / "tasks" / "shapes" / "val.parquet")]) == 20
    assert parquet_rows([str(tmp_path / "nothing.parquet")]) is None


def test_probe_defaults_are_the_probes():
    from synret.finetune import ProbeConfig

    probe = ProbeConfig()
    assert PROBE_DEFAULTS == {"batch_size": probe.batch_size, "epochs": probe.epochs,
                              "train_splits": list(probe.train_splits), "eval_splits": list(probe.eval_splits)}


def test_evaluation_is_sized_from_the_splits_and_the_loaders(demo):
    paper = deep_merge(demo, yaml.safe_load(open(REPO / "configs" / "paper.yaml")))
    imagenet = cell_work(paper, "imagenet", None)
    assert imagenet["train"] == 0 and imagenet["probe_features"] > imagenet["evaluate"] > 0
    # val and test of ImageNet, at the lower of the GPU's fp32 rate and what the workers decode
    workers = loader_workers(cell_threads(paper, "imagenet"), paper["finetune"]["threads"])
    rate = min(GPU_IMAGES_PER_S["infer", "fp32"], workers * DECODE_PER_CORE["photo"])
    assert imagenet["evaluate"] == pytest.approx(100_000 / rate)
    # the same job on one thread reads its images in process: slower
    assert cell_work(paper, "imagenet", None, threads=1)["evaluate"] == pytest.approx(
        100_000 / images_per_second(GPU_IMAGES_PER_S["infer", "fp32"], DECODE_PER_CORE["photo"], 0))
    assert estimate("zeroshot", paper, {"task": "imagenet"}, threads=1)["runtime"] > estimate(
        "zeroshot", paper, {"task": "imagenet"})["runtime"]
    # without the linear probe, ImageNet's 1.28M training images are not read
    no_probe = deep_merge(paper, {"evaluate": {"linear_probe": None},
                                  "task_settings": {"imagenet": {"evaluate": {"linear_probe": None}}}})
    assert cell_work(no_probe, "imagenet", None)["probe_features"] == 0
    assert estimate("zeroshot", no_probe, {"task": "imagenet"})["runtime"] < estimate(
        "zeroshot", paper, {"task": "imagenet"})["runtime"]
    assert estimate("zeroshot", no_probe, {"task": "imagenet"})["mem_mb"] < estimate(
        "zeroshot", paper, {"task": "imagenet"})["mem_mb"]
    # ImageNet takes longer than DTD
    assert estimate("zeroshot", paper, {"task": "imagenet"})["runtime"] > estimate(
        "zeroshot", paper, {"task": "dtd"})["runtime"]


def test_curation_is_sized_from_candidates_and_evaluation_images(demo):
    paper = deep_merge(demo, yaml.safe_load(open(REPO / "configs" / "paper.yaml")))
    work = curate_work(paper, "imagenet")
    assert work["embed"] > 0 and work["dedup"] > 0
    assert curate_work(paper, "imagenet", candidates=2_000_000)["embed"] == pytest.approx(8 * work["embed"])
    # the dedup's evaluation images are the task's test split: ImageNet's 50,000 cost more than DTD's 1,880
    assert work["dedup"] > curate_work(paper, "dtd")["dedup"]
    assert curate_work(paper, "imagenet", threads=1)["embed"] > work["embed"]


# ---------------------------------------------------------------- local GPU assignment

def test_gpu_pool_is_what_the_user_made_visible(tmp_path):
    assert local_gpu_pool({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert local_gpu_pool({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert local_gpu_pool({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    for i in range(3):
        (tmp_path / f"0000:0{i}:00.0").mkdir()  # the driver's per-GPU folders
    assert local_gpu_pool({}, driver_dir=str(tmp_path)) == ["0", "1", "2"]
    assert local_gpu_pool({}, driver_dir=str(tmp_path / "no-driver")) == []


def test_concurrent_jobs_get_different_gpus_and_wait_for_a_free_one(tmp_path):
    first = claim_gpus(1, ["0", "1"], lock_dir=str(tmp_path))
    second = claim_gpus(1, ["0", "1"], lock_dir=str(tmp_path))
    assert {claimed_devices(first), claimed_devices(second)} == {"0", "1"}

    messages = []
    threading.Timer(0.3, second[0].release).start()  # the second job ends a moment later
    start = time.time()
    third = claim_gpus(1, ["0", "1"], lock_dir=str(tmp_path), wait=0.05, log=messages.append)
    assert time.time() - start >= 0.25
    assert claimed_devices(third) == claimed_devices(second)
    assert len(messages) == 1 and "waiting" in messages[0]
    with pytest.raises(RuntimeError, match="asks for 3 GPUs"):
        claim_gpus(3, ["0", "1"], lock_dir=str(tmp_path))


def test_a_killed_job_frees_its_gpu(tmp_path):
    code = ("import sys, time; from synret.resources import claim_gpus; "
            f"claim_gpus(1, ['0'], lock_dir={str(tmp_path)!r}); print('held', flush=True); time.sleep(60)")
    job = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "held"
    job.kill()
    job.wait()
    assert claimed_devices(claim_gpus(1, ["0"], lock_dir=str(tmp_path), wait=0.05)) == "0"


def test_assignment_only_for_local_gpu_jobs(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    held = assign_local_gpus({"gpu": 1}, environ=env, lock_dir=str(tmp_path))
    assert env["CUDA_VISIBLE_DEVICES"] in ("0", "1") and len(held) == 1
    for resources, environ in [
        ({"gpu": 0}, {"CUDA_VISIBLE_DEVICES": "0,1"}),  # a CPU job
        ({}, {"CUDA_VISIBLE_DEVICES": "0,1"}),
        ({"gpu": 1}, {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "7"}),  # SLURM assigns GPUs itself
        ({"gpu": 1}, {"CUDA_VISIBLE_DEVICES": "0,1", "SYNRET_SHARE_GPUS": "1"}),  # sharing asked for
        ({"gpu": 1}, {"CUDA_VISIBLE_DEVICES": ""}),  # no GPU
    ]:
        before = dict(environ)
        assert assign_local_gpus(resources, environ=environ, lock_dir=str(tmp_path)) == []
        assert environ == before
