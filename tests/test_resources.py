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
    ESTIMATORS,
    MIN_RUNTIME,
    assign_local_gpus,
    claim_gpus,
    claimed_devices,
    estimate,
    local_gpu_pool,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    return yaml.safe_load(open(REPO / "config.yaml"))


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
    assert large["runtime"] > 10 * small["runtime"]
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
    # every candidate goes through it: at least the task's synthetic images, or what the shards hold
    more = deep_merge(isc, {"prompts": {"images": 250_000}})
    assert estimate("curate", more, CELL)["runtime"] > estimate("curate", isc, CELL)["runtime"] + 60
    assert estimate("curate", isc, CELL, input_mb=lambda: 5000.0)["runtime"] > with_isc["runtime"] + 60


def test_real_models_ask_for_more_than_the_demo(demo, real):
    for job in ("synthesize_shard", "finetune", "zeroshot", "curate"):
        assert estimate(job, real, CELL)["mem_mb"] > estimate(job, demo, CELL)["mem_mb"]


def test_input_sizes_are_read_only_where_used(demo):
    def unknown():
        raise AssertionError("input size read")

    for job in ("synthesize_shard", "finetune", "zeroshot", "knn_query"):
        estimate(job, demo, CELL, input_mb=unknown)
    assert estimate("substring_scan", demo, CELL, input_mb=lambda: 500.0)["mem_mb"] > estimate(
        "substring_scan", demo, CELL, input_mb=lambda: 5.0)["mem_mb"]


def test_bad_requests(demo):
    with pytest.raises(ValueError, match="attempt"):
        estimate("finetune", demo, CELL, attempt=0)
    with pytest.raises(KeyError):
        estimate("no_such_rule", demo, CELL)


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
