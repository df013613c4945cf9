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

The jobs that read a task's images (a finetuning cell: training, evaluation of val and test, the
linear probe's features; a zero-shot cell; curation) are sized from the task's real split sizes
(``synret.split_sizes``) and the throughput figures below: each pass over images runs at the lower of
the GPU's rate and what the job's data-loader workers decode (``loader_workers``: the job's threads
less those that compute), and the summed work times ``SAFETY`` is the walltime on top of a fixed start.

Locally, Snakemake counts GPUs but never says which one a job gets; ``assign_local_gpus`` gives each
GPU job GPUs of its own (``CUDA_VISIBLE_DEVICES``) through lock files, so two jobs never share one.
"""

from __future__ import annotations

import fcntl
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from .config import produced_by_world, stage_settings
from .sources import effective_steps, generator_settings, img2img_settings, source
from .split_sizes import split_sizes

# fixed host memory of a job that holds a model (weights, optimizer state, framework), MB
CLIP_MB = {"demo": 1500, "real": 6000}  # ViT-B/16 training: weights + AdamW state + activations
GENERATOR_MB = {"demo": 1500, "real": 8000}  # SD 1.5 pipeline loaded in fp32 before moving to the GPU

# seconds per unit of work, with a few-fold margin over what a current GPU (or, for the demo, 2 CPU
# cores) needs
SECONDS_PER_IMAGE_STEP_512 = 0.2  # one SD 1.5 image at 512 px through one denoising step (with guidance)
SECONDS_PER_DOWNLOAD = 0.5  # one URL with img2dataset, per download thread
SECONDS_PER_CAPTION = 0.1  # one caption from a 7B causal LM, batched (~0.03 s on a current GPU)
LLM_MB = 32000  # a 7B model loaded in 16 bit is ~14 GB of host memory, which loading can double
ISC_MB = 2000  # its checkpoint read whole (a training checkpoint: 210 MB of weights, maybe as much optimizer
# state), the network, and a batch of 64 images at 512 px

MIN_RUNTIME = 10  # minutes; scheduling and start-up dominate below this

# ---------------------------------------------------------------- throughput of the jobs that read images
# Images per second of the real models on the baseline GPU, an NVIDIA A100 (datasheet: 19.5 TFLOP/s dense
# fp32, the rate of PyTorch's fp32 matmuls, which leave TF32 off by default; 312 TFLOP/s bf16). ViT-B/16 at 224 px costs
# 35.1 GFLOP an image forward and 105.2 forward and backward (torch.utils.flop_counter, in
# /work/shared/notes/perf.md 2.1). An H100 is 1.5-3x faster: on it these are floors.
GPU_IMAGES_PER_S = {
    ("infer", "fp32"): 250,  # 35.1 GFLOP at 45% of 19.5 TFLOP/s [derived]
    # LAION embedded its pool with ViT-L/14 at 312 images/s per A100 (laion.ai/blog/laion-5b) [pub]; ViT-B/16
    # needs 4.6x fewer FLOPs, so ~1,400/s in 16 bit [derived]
    ("infer", "amp"): 1400,
    ("train", "fp32"): 80,  # 105.2 GFLOP at 45% of 19.5 TFLOP/s [derived]
    # PaddlePaddle PLSC: ViT-B/16 at 448 images/s per A100 (8 GPUs, 3,583/s) [pub, perf.md 2.2]; perf.md
    # expects 1,000-1,300/s with bf16 autocast and torch.compile, which this code does not use
    ("train", "amp"): 450,
}
# the ISC-2021 dedup network (synret.copydetect), EfficientNetV2-M at 512 px in fp32: ~28 GMAC an image (timm:
# 24.6 GMAC at 480 px), 56 GFLOP, at 43% of 19.5 TFLOP/s [derived]
ISC_IMAGES_PER_S = 150
SECONDS_PER_PROBE_STEP = 0.002  # a linear-probe step on fixed features: a few dozen small kernels, a host sync [ours]
# Images read, decoded and preprocessed per second by one data-loader worker (one CPU core). Measured on this
# project's 2-core machines (perf.md 2.3): 755/s for 256 px JPEGs through RandomResizedCrop(224), ToTensor and
# Normalize, 410/s for 512 px ones; smooth synthetic images, "so treat these as optimistic" [measured].
DECODE_PER_CORE = {
    "small": 250,  # 256 px training and candidate images (generator PNGs, img2dataset JPEGs): a third of 755/s
    "photo": 100,  # benchmark photos at their own size (ImageNet ~400x350, FGVC-Aircraft 1-2 MP): a quarter of 410/s
}
# the demo world's tiny models on CPU, 32 px images: every pass is cheap next to the fixed start
DEMO_IMAGES_PER_S = 500
SAFETY = 2.0  # the estimated work is requested this many times over (shared nodes, slow file systems)
START_SECONDS = 600  # loading the model, the zero-shot head (ImageNet: 80,000 prompts), manifests, writing outputs
CURATE_START_SECONDS = 1200  # as START_SECONDS, plus the filter texts and reading every shard

MAX_LOADER_WORKERS = 16  # beyond this, more decoding processes only cost memory
IMAGE_MB = 0.15  # an encoded 256 px image, counted at a PNG's size (JPEGs are ~20 kB)
WORKER_MB = 300  # a forked data-loader worker's own pages (the parent's are shared until written)
ROW_BYTES = 1000  # a manifest row in pandas (key, path or URL, prompt), counted generously
PATH_BYTES = 150  # an image path in a loader's list, whose page each forked worker copies when it reads it
FEATURE_DIM = {"demo": 128, "real": 512}  # CLIP image embedding width
INPUT_PIXELS = 224  # the side of a preprocessed image
# the linear-probe evaluation's defaults (finetune.ProbeConfig; tests/test_resources.py keeps them equal)
PROBE_DEFAULTS = {"batch_size": 256, "epochs": 200, "train_splits": ["train", "val"], "eval_splits": ["test"]}


def loader_workers(threads: int, compute_threads: int | None = None, cpus: int | None = None) -> int:
    """Data-loader worker processes of a job with ``threads`` CPU threads: those its arithmetic leaves
    (``compute_threads``, else 1), at most ``MAX_LOADER_WORKERS`` and one less than ``cpus`` (the CPUs it
    may run on, where known). 0 for a one-thread job: it reads its images in its own process."""
    threads = int(threads or 1)
    if threads <= 1:
        return 0
    workers = min(MAX_LOADER_WORKERS, threads - int(compute_threads or 1))
    if cpus is not None:
        workers = min(workers, int(cpus) - 1)
    return max(0, workers)


def cell_threads(config: dict, task: str) -> int:
    """Threads of a finetuning or zero-shot cell: the training threads and the data-loader workers."""
    s = stage_settings(config, "finetune", task)
    return int(s["threads"]) + int(s["num_workers"])


def curate_threads(config: dict, task: str) -> int:
    """Threads of a curation job: one that drives the GPU and ``curate.num_workers`` that decode images."""
    return 1 + int(stage_settings(config, "curate", task).get("num_workers", 0))


def parquet_rows(paths) -> int | None:
    """Rows of the parquet files together; None when one does not exist yet (planning before it is made)."""
    import pyarrow.parquet as pq

    total = 0
    for path in [paths] if isinstance(paths, str) else list(paths):
        if not os.path.exists(path):
            return None
        total += pq.read_metadata(path).num_rows
    return total


def images_per_second(gpu: float, decode: float, workers: int) -> float:
    """Images a second of a pass that decodes in ``workers`` processes while the GPU computes at ``gpu``
    (the lower of the two), or, with no workers, decodes and computes by turns in one process."""
    if workers <= 0:
        return 1 / (1 / gpu + 1 / decode)
    return min(gpu, workers * decode)


def _precision(precision: str) -> str:
    """'fp32', or 'amp' for the 16-bit autocasts ('auto' is bf16 on a GPU)."""
    return "fp32" if precision == "fp32" else "amp"


def _kind(config: dict, model_key: str) -> str:
    """'demo' when the model is one the demo world trains (tiny), else 'real'."""
    model = str(config[model_key]["model"])
    model = model[len("local-dir:"):] if model.startswith("local-dir:") else model
    return "demo" if produced_by_world(config, model) else "real"


def _minutes(seconds: float) -> int:
    return max(MIN_RUNTIME, math.ceil(seconds / 60))


@dataclass
class JobInputs:
    """What an estimator may ask of the job besides the config: the size of its inputs (MB, known once
    upstream jobs ran), the threads Snakemake gives it, and the rows of its candidate manifests (None
    until they exist)."""

    input_mb: Callable[[], float] = lambda: 0.0
    threads: int | None = None
    manifest_rows: Callable[[], int | None] = lambda: None


def _world(config: dict, wildcards: Mapping[str, str], job: JobInputs) -> tuple[float, float]:
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


def _synthesize_shard(config, wildcards, job):
    s = stage_settings(config, "synthetic", wildcards["task"])
    kind = _kind(config, "generator")
    pixels = s["height"] * s["width"]
    # finished images wait in memory until the shard is written; a batch of latents/decoded images on top
    images_mb = s["shard_size"] * s["save_size"] ** 2 * 3 / 1e6 + s["batch_size"] * pixels * 3 * 4 * 8 / 1e6
    per_step = SECONDS_PER_IMAGE_STEP_512 * pixels / 512**2 if kind == "real" else 0.01
    return GENERATOR_MB[kind] + 2 * images_mb, s["shard_size"] * s["steps"] * per_step


def _img2img_shard(config, wildcards, job):
    src = source(wildcards["source"], config)
    s = img2img_settings(src, config, wildcards["task"])
    kind = "demo" if produced_by_world(config, generator_settings(src, config)["model"]) else "real"
    pixels = s["height"] * s["width"]
    images = min(int(s["shard_size"]), int(s["images"] or s["shard_size"]))
    # the shard's input images (encoded) and its finished images wait in memory; a batch on top
    images_mb = images * (IMAGE_MB + s["save_size"] ** 2 * 3 / 1e6) + s["batch_size"] * pixels * 3 * 4 * 8 / 1e6
    per_step = SECONDS_PER_IMAGE_STEP_512 * pixels / 512**2 if kind == "real" else 0.01
    # int(steps * strength) denoising steps, and the VAE's encoding of the input counted as one more
    return GENERATOR_MB[kind] + 2 * images_mb, images * (effective_steps(s["steps"], s["strength"]) + 1) * per_step


# ---------------------------------------------------------------- jobs that read a task's images


def _pass_seconds(images: float, kind: str, gpu: float, decode: str, workers: int) -> float:
    """Seconds of one pass of ``images`` through a model at ``gpu`` images/s, decoded by ``workers``."""
    if kind == "demo":
        gpu = decode_rate = DEMO_IMAGES_PER_S
    else:
        decode_rate = DECODE_PER_CORE[decode]
    return images / images_per_second(gpu, decode_rate, workers)


def _batch_mb(batch_size: int) -> float:
    """One preprocessed float32 batch."""
    return batch_size * INPUT_PIXELS**2 * 3 * 4 / 1e6


def _probe(config: dict, task: str) -> dict | None:
    settings = stage_settings(config, "evaluate", task).get("linear_probe")
    return None if settings is None else {**PROBE_DEFAULTS, **settings}


def cell_work(config: dict, task: str, scale: int | None, threads: int | None = None) -> dict[str, float]:
    """Seconds of each part of a finetuning cell's work (a zero-shot cell's: ``scale`` None), before
    ``SAFETY``: ``train`` (epochs x scale images), ``evaluate`` (every image of ``evaluate.splits``),
    ``probe_features`` (the linear probe's train and test images) and ``probe_steps``."""
    zeroshot = scale is None
    ft, ev = stage_settings(config, "finetune", task), stage_settings(config, "evaluate", task)
    kind = _kind(config, "clip")
    sizes = split_sizes(config, task)
    probe = _probe(config, task)
    compute = ft["threads"] if (not zeroshot or probe is not None) else None  # the rule's compute_threads
    workers = loader_workers(threads or cell_threads(config, task), compute)
    infer = GPU_IMAGES_PER_S[("infer", _precision(ev.get("precision", "fp32")))]
    work = {"train": 0.0, "evaluate": 0.0, "probe_features": 0.0, "probe_steps": 0.0}
    if not zeroshot:
        images = ft["epochs"] * int(scale)
        train = GPU_IMAGES_PER_S[("train", _precision(config["clip"]["precision"]))]
        work["train"] = _pass_seconds(images, kind, train, "small", int(ft["num_workers"]))
    work["evaluate"] = _pass_seconds(sum(sizes[s] for s in ev["splits"]), kind, infer, "photo", workers)
    if probe is not None:
        fit = sum(sizes[s] for s in probe["train_splits"])
        features = fit + sum(sizes[s] for s in probe["eval_splits"])
        work["probe_features"] = _pass_seconds(features, kind, infer, "photo", workers)
        work["probe_steps"] = probe["epochs"] * math.ceil(fit / probe["batch_size"]) * SECONDS_PER_PROBE_STEP
    return work


def cell_images(config: dict, wildcards) -> int:
    """The training images of a cell: its scale (size ``n<images>``), or at most the task's training split
    (the real source's ``k<per class>`` and ``kall``)."""
    size = wildcards.get("size") or f"n{wildcards['scale']}"
    return int(size[1:]) if size.startswith("n") else split_sizes(config, wildcards["task"])["train"]


def _cell(config, wildcards, job, zeroshot: bool = False):
    task = wildcards["task"]
    scale = None if zeroshot else cell_images(config, wildcards)
    ft, ev = stage_settings(config, "finetune", task), stage_settings(config, "evaluate", task)
    kind = _kind(config, "clip")
    sizes = split_sizes(config, task)
    threads = job.threads or cell_threads(config, task)
    workers = max(loader_workers(threads), int(ft["num_workers"]))
    # training images held encoded in memory; the manifests' rows, and their paths touched in each worker
    images = scale or 0
    rows = sum(sizes.values()) + images
    mem = CLIP_MB[kind] + images * IMAGE_MB + rows * (ROW_BYTES + workers * PATH_BYTES) / 1e6
    # float batches in flight: two per worker (prefetch) and the one computing, pinned copies
    mem += (2 * workers + 2) * _batch_mb(max(ft["batch_size"], ev["batch_size"])) + workers * WORKER_MB
    probe = _probe(config, task)
    if probe is not None:  # the probe's fixed features (train, then test), collected then concatenated
        features = sum(sizes[s] for s in probe["train_splits"]) + max(sizes[s] for s in probe["eval_splits"])
        mem += 2 * features * FEATURE_DIM[kind] * 4 / 1e6
    return mem, START_SECONDS + SAFETY * sum(cell_work(config, task, scale, job.threads).values())


def _finetune(config, wildcards, job):
    return _cell(config, wildcards, job)


def _zeroshot(config, wildcards, job):
    return _cell(config, wildcards, job, zeroshot=True)


def curate_work(config: dict, task: str, threads: int | None = None,
                candidates: int | None = None) -> dict[str, float]:
    """Seconds of each part of a curation job's work, before ``SAFETY``: ``embed`` (every candidate
    through CLIP) and ``dedup`` (candidates and evaluation images through the dedup descriptor).
    ``candidates``: the rows of the source's manifests, where known; else the task's synthetic images
    (``prompts.images``: the synthetic arm's exact count, and the retrieved arm's at planning time, which is
    re-sized from its download manifest when the job is about to run)."""
    s = stage_settings(config, "curate", task)
    kind = _kind(config, "clip")
    workers = loader_workers(threads or curate_threads(config, task))
    if candidates is None:
        candidates = stage_settings(config, "prompts", task)["images"]
    sizes = split_sizes(config, task)
    evals = sum(sizes[split] for split in s["dedup"]["splits"])
    clip = GPU_IMAGES_PER_S[("infer", _precision(config["clip"]["precision"]))]
    work = {"embed": _pass_seconds(candidates, kind, clip, "small", workers)}
    descriptor = s["dedup"].get("descriptor")
    if descriptor == "isc":  # a real network whatever the CLIP is
        work["dedup"] = (candidates / images_per_second(ISC_IMAGES_PER_S, DECODE_PER_CORE["small"], workers)
                         + evals / images_per_second(ISC_IMAGES_PER_S, DECODE_PER_CORE["photo"], workers))
    elif descriptor == "clip":  # the candidates' embeddings are reused; the evaluation images are embedded
        work["dedup"] = _pass_seconds(evals, kind, clip, "photo", workers)
    else:  # shrunk pixels, computed in the job's own process
        work["dedup"] = (candidates + evals) / (DEMO_IMAGES_PER_S if kind == "demo" else DECODE_PER_CORE["photo"])
    return work


def _curate(config, wildcards, job):
    task = wildcards["task"]
    s = stage_settings(config, "curate", task)
    kind = _kind(config, "clip")
    workers = loader_workers(job.threads or curate_threads(config, task))
    candidates = job.manifest_rows()
    work = curate_work(config, task, job.threads, candidates)
    if candidates is None:
        candidates = stage_settings(config, "prompts", task)["images"]
    shard = source(wildcards["source"], config).shard_size(config, task)
    descriptor = s["dedup"].get("descriptor")
    dim = {"isc": 256, "clip": 0}.get(descriptor, 3 * s["dedup"].get("pixel_size", 16) ** 2)
    # the candidate rows; their embeddings and descriptors (NaN-filled arrays, then per-shard pieces); one
    # shard's encoded images at a time, whose pages each forked worker copies in part
    mem = CLIP_MB[kind] + candidates * (ROW_BYTES + 2 * 4 * (FEATURE_DIM[kind] + dim)) / 1e6
    mem += shard * IMAGE_MB * (1 + 0.1 * workers)
    mem += (2 * workers + 2) * _batch_mb(s["batch_size"]) + workers * WORKER_MB
    if descriptor == "isc":
        mem += ISC_MB
    return mem, CURATE_START_SECONDS + SAFETY * sum(work.values())


def _fetch_retrieved(config, wildcards, job):
    s = stage_settings(config, "retrieval", wildcards["task"])["download"]
    # img2dataset keeps a shard's samples in memory per process, and a thread's image at a time
    per_sample = s["image_size"] ** 2 * 3 / 1e6
    mem = 1500 + s["processes"] * (s["shard_size"] * per_sample + s["threads"] * 20)
    # the candidate list: ~200 bytes a row on disk
    urls = job.input_mb() * 1e6 / 200
    return mem, urls * SECONDS_PER_DOWNLOAD / max(1, s["threads"] * s["processes"]) + 600


def _generator_prompts_llm(config, wildcards, job):
    s = stage_settings(config, "prompts", wildcards["task"])
    # every prompt of the task is captioned, plus re-sampling rounds for repeats and empty answers
    return LLM_MB, s["images"] * SECONDS_PER_CAPTION * 1.5 + 600


def _knn_query(config, wildcards, job):
    # the index is memory-mapped where faiss allows it; the CLIP text/image towers are loaded
    return CLIP_MB[_kind(config, "clip")] + 2000, 600


def _substring_scan(config, wildcards, job):
    # one metadata part in memory as a table, decompressed (parquet compresses captions ~3-5x)
    return 1000 + 10 * job.input_mb(), 600


ESTIMATORS: dict[str, Callable] = {
    "world": _world,
    "synthesize_shard": _synthesize_shard,
    "img2img_shard": _img2img_shard,
    "finetune": _finetune,
    "zeroshot": _zeroshot,
    "curate": _curate,
    "data_quality": _curate,  # embeds a curated set's kept images, the task's train and test: within curation's work
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
    threads: int | None = None,
    manifest_rows: Callable[[], int | None] = lambda: None,
) -> dict[str, int]:
    """``{"mem_mb": ..., "runtime": minutes}`` for one job of ``job`` (a rule name, or ``world``).

    ``input_mb`` is called only by estimators that size from their inputs (it is Snakemake's
    ``input.size_mb``, unknown until upstream jobs have run); ``manifest_rows`` (curation: the rows of the
    source's manifests, None before they exist) likewise. ``threads``: what Snakemake gives the job (its
    data-loader workers follow), else the rule's own count from the config. Both grow linearly with ``attempt``.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    inputs = JobInputs(input_mb=input_mb, threads=int(threads) if threads else None, manifest_rows=manifest_rows)
    mem, seconds = ESTIMATORS[job](config, wildcards, inputs)
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
