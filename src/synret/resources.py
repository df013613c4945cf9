"""What each job asks the scheduler for: memory and walltime, sized from the config.

Rules declare portable resources (``threads``, ``gpu``, ``mem_mb``, ``runtime``); a cluster profile
adds only what is site-specific (partition, account, ``--gres`` style). Snakemake's SLURM plugin turns
them into ``sbatch --cpus-per-task --gpus --mem -t``; locally they only limit what runs at once when a
profile caps them (``profiles/local``).

The estimates are deliberately generous: a request that is too small costs a failed job, one that is
too large only queue priority. Each retry multiplies both by the attempt number, so a job killed for
memory or walltime comes back with twice, then three times, as much (``retries`` in the profile).

Rates are per unit of work named in the config (an image of a shard times a denoising step, an image
of an epoch, ...), so a config edit that grows the work grows the request. Where the config builds the
offline demo world, its models are tiny and the fixed parts are small.

Locally, Snakemake counts GPUs but never says which one a job gets; ``assign_local_gpus`` gives each
GPU job GPUs of its own (``CUDA_VISIBLE_DEVICES``) through lock files, so two jobs never share one.
"""

from __future__ import annotations

import fcntl
import math
import os
import tempfile
import time
from typing import Callable, Mapping

from .config import produced_by_world, stage_settings

# fixed host memory of a job that holds a model (weights, optimizer state, framework), MB
CLIP_MB = {"demo": 1500, "real": 6000}  # ViT-B/16 training: weights + AdamW state + activations
GENERATOR_MB = {"demo": 1500, "real": 8000}  # SD 1.5 pipeline loaded in fp32 before moving to the GPU

# seconds per unit of work, with a few-fold margin over what a current GPU (or, for the demo, 2 CPU
# cores) needs
SECONDS_PER_IMAGE_STEP_512 = 0.2  # one SD 1.5 image at 512 px through one denoising step (with guidance)
SECONDS_PER_TRAIN_IMAGE = 0.02  # one image through a ViT-B/16 forward and backward pass
SECONDS_PER_EVAL_IMAGE = 0.005
SECONDS_PER_DOWNLOAD = 0.5  # one URL with img2dataset, per download thread
SECONDS_PER_CAPTION = 0.1  # one caption from a 7B causal LM, batched (~0.03 s on a current GPU)
LLM_MB = 32000  # a 7B model loaded in 16 bit is ~14 GB of host memory, which loading can double
# the ISC copy-detection dedup (synret.copydetect): EfficientNetV2-M at 512 px, ~25 GFLOPs an image in fp32
# (~5 ms on a current GPU, and as much to decode and resize it on the job's CPU threads)
SECONDS_PER_ISC_IMAGE = 0.02
ISC_MB = 2000  # its checkpoint read whole (a training checkpoint: 210 MB of weights, maybe as much optimizer
# state), the network, and a batch of 64 images at 512 px
IMAGES_PER_MB = 100  # encoded 256 px images (~10-20 kB each), counted generously
EVAL_IMAGES = 50000  # evaluation images to describe: at most ImageNet's 50,000 val images in the paper's tasks

MIN_RUNTIME = 10  # minutes; scheduling and start-up dominate below this


def _kind(config: dict, model_key: str) -> str:
    """'demo' when the model is one the demo world trains (tiny), else 'real'."""
    model = str(config[model_key]["model"])
    model = model[len("local-dir:"):] if model.startswith("local-dir:") else model
    return "demo" if produced_by_world(config, model) else "real"


def _minutes(seconds: float) -> int:
    return max(MIN_RUNTIME, math.ceil(seconds / 60))


def _world(config: dict, wildcards: Mapping[str, str], input_mb: Callable[[], float]) -> tuple[float, float]:
    world = config["world"]
    pixels = world["image_size"] ** 2 * 3
    pool_mb = world["pool"]["size"] * pixels / 1e6
    # the pool's images in memory a few times over (uint8 array, float batches, rendered copies)
    mem = 1500 + 8 * pool_mb
    # pretraining: steps x batch images through a tiny model on CPU, ~10 ms each with a margin
    steps = world["clip"]["steps"] * world["clip"]["batch_size"] + world["generator"]["unet_steps"] * world[
        "generator"
    ]["unet_batch_size"] + world["generator"]["vae_steps"] * world["generator"]["vae_batch_size"]
    return mem, 600 + 0.01 * steps


def _synthesize_shard(config, wildcards, input_mb):
    s = stage_settings(config, "synthetic", wildcards["task"])
    kind = _kind(config, "generator")
    pixels = s["height"] * s["width"]
    # finished images wait in memory until the shard is written; a batch of latents/decoded images on top
    images_mb = s["shard_size"] * s["save_size"] ** 2 * 3 / 1e6 + s["batch_size"] * pixels * 3 * 4 * 8 / 1e6
    per_step = SECONDS_PER_IMAGE_STEP_512 * pixels / 512**2 if kind == "real" else 0.01
    return GENERATOR_MB[kind] + 2 * images_mb, s["shard_size"] * s["steps"] * per_step


def _finetune(config, wildcards, input_mb):
    s = stage_settings(config, "finetune", wildcards["task"])
    kind = _kind(config, "clip")
    batch_mb = s["batch_size"] * 224 * 224 * 3 * 4 * 4 / 1e6  # decoded, augmented float batches in flight
    train = s["epochs"] * int(wildcards.get("scale", 0)) * SECONDS_PER_TRAIN_IMAGE
    return CLIP_MB[kind] + batch_mb, 600 + train  # plus model loading and evaluation


def _zeroshot(config, wildcards, input_mb):
    return CLIP_MB[_kind(config, "clip")], 600


def _curate(config, wildcards, input_mb):
    s = stage_settings(config, "curate", wildcards["task"])
    kind = _kind(config, "clip")
    # scores every candidate and embeds the evaluation images for dedup: the images' size on disk,
    # decoded (x4), plus a batch in flight
    mem, seconds = CLIP_MB[kind] + 4 * input_mb() + s["batch_size"] * 224 * 224 * 3 * 4 / 1e6, 1200
    if s["dedup"].get("descriptor") == "isc":
        # the copy-detection network too, and every candidate and evaluation image through it: candidates
        # counted from the shards' size on disk, but at least the task's synthetic images (the retrieved
        # arm's shards are a folder, whose size Snakemake does not see)
        mem += ISC_MB
        candidates = max(stage_settings(config, "prompts", wildcards["task"])["images"], IMAGES_PER_MB * input_mb())
        seconds += (candidates + EVAL_IMAGES) * SECONDS_PER_ISC_IMAGE
    return mem, seconds


def _fetch_retrieved(config, wildcards, input_mb):
    s = stage_settings(config, "retrieval", wildcards["task"])["download"]
    # img2dataset keeps a shard's samples in memory per process, and a thread's image at a time
    per_sample = s["image_size"] ** 2 * 3 / 1e6
    mem = 1500 + s["processes"] * (s["shard_size"] * per_sample + s["threads"] * 20)
    # the candidate list: ~200 bytes a row on disk
    urls = input_mb() * 1e6 / 200
    return mem, urls * SECONDS_PER_DOWNLOAD / max(1, s["threads"] * s["processes"]) + 600


def _generator_prompts_llm(config, wildcards, input_mb):
    s = stage_settings(config, "prompts", wildcards["task"])
    # every prompt of the task is captioned, plus re-sampling rounds for repeats and empty answers
    return LLM_MB, s["images"] * SECONDS_PER_CAPTION * 1.5 + 600


def _knn_query(config, wildcards, input_mb):
    # the index is memory-mapped where faiss allows it; the CLIP text/image towers are loaded
    return CLIP_MB[_kind(config, "clip")] + 2000, 600


def _substring_scan(config, wildcards, input_mb):
    # one metadata part in memory as a table, decompressed (parquet compresses captions ~3-5x)
    return 1000 + 10 * input_mb(), 600


ESTIMATORS: dict[str, Callable] = {
    "world": _world,
    "synthesize_shard": _synthesize_shard,
    "finetune": _finetune,
    "zeroshot": _zeroshot,
    "curate": _curate,
    "fetch_retrieved": _fetch_retrieved,
    "knn_query": _knn_query,
    "generator_prompts_llm": _generator_prompts_llm,
    "substring_scan": _substring_scan,
}


def estimate(
    job: str,
    config: dict,
    wildcards: Mapping[str, str],
    attempt: int = 1,
    input_mb: Callable[[], float] = lambda: 0.0,
) -> dict[str, int]:
    """``{"mem_mb": ..., "runtime": minutes}`` for one job of ``job`` (a rule name, or ``world``).

    ``input_mb`` is called only by estimators that size from their inputs (it is Snakemake's
    ``input.size_mb``, unknown until upstream jobs have run). Both grow linearly with ``attempt``.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    mem, seconds = ESTIMATORS[job](config, wildcards, input_mb)
    return {"mem_mb": int(math.ceil(mem / 100) * 100) * attempt, "runtime": _minutes(seconds) * attempt}


# ---------------------------------------------------------------- which GPU a local job uses

GPU_LOCK_DIR = os.path.join(tempfile.gettempdir(), "synret-gpu-locks")


def local_gpu_pool(environ: Mapping[str, str] = os.environ, driver_dir: str = "/proc/driver/nvidia/gpus") -> list[str]:
    """The GPUs local jobs may take: CUDA_VISIBLE_DEVICES when the user set it, else every NVIDIA GPU."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        return [str(i) for i in range(len(os.listdir(driver_dir)))]
    except OSError:
        return []


def claim_gpus(count: int, pool: list[str], lock_dir: str = GPU_LOCK_DIR, wait: float = 1.0,
               log: Callable[[str], None] = lambda message: None) -> list:
    """Hold ``count`` GPUs of ``pool`` that no other job on this machine holds; wait while all are taken.

    Snakemake counts GPUs (``resources: gpu=N`` in profiles/local caps how many GPU jobs run at once)
    but never says *which* GPU a job gets, so without this every job would use the first one. Each GPU
    has a lock file; a job holds the locks of its GPUs (``flock``) until its process ends, also when it
    is killed, so the next job takes a free GPU. Returns the held lock files (keep them open); set
    CUDA_VISIBLE_DEVICES to their devices (``claimed_devices``).
    """
    if count > len(pool):
        raise RuntimeError(f"the job asks for {count} GPUs, this machine offers {len(pool)}: {pool}")
    os.makedirs(lock_dir, exist_ok=True)
    held: list[_Held] = []
    waited = False
    while True:
        for device in pool:
            if len(held) == count:
                return held
            if device in (h.device for h in held):
                continue
            handle = open(os.path.join(lock_dir, f"gpu{device}.lock"), "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append(_Held(handle, device))
        if len(held) == count:
            return held
        if not waited:
            log(f"all of GPUs {pool} are in use by other jobs; waiting for one (set resources gpu=N to run fewer)")
            waited = True
        time.sleep(wait)


class _Held:
    """An open, locked lock file and the GPU it stands for."""

    def __init__(self, handle, device: str):
        self.handle, self.device = handle, device

    def release(self) -> None:
        self.handle.close()


def claimed_devices(held: list) -> str:
    return ",".join(h.device for h in held)


def assign_local_gpus(resources: Mapping, environ=os.environ, lock_dir: str = GPU_LOCK_DIR,
                      log: Callable[[str], None] = lambda m: None) -> list:
    """For a job about to start: give it its own GPUs by setting CUDA_VISIBLE_DEVICES, and return the
    held locks. Nothing to do for CPU jobs, under SLURM (which assigns GPUs itself), where the machine
    has no GPU, or when SYNRET_SHARE_GPUS=1 asks for GPUs to be shared."""
    count = int(resources.get("gpu", 0) or 0)
    pool = local_gpu_pool(environ)
    if count < 1 or "SLURM_JOB_ID" in environ or environ.get("SYNRET_SHARE_GPUS") == "1" or not pool:
        return []
    held = claim_gpus(min(count, len(pool)), pool, lock_dir=lock_dir, log=log)
    environ["CUDA_VISIBLE_DEVICES"] = claimed_devices(held)
    log(f"using GPU(s) {environ['CUDA_VISIBLE_DEVICES']} of {pool}")
    return held
