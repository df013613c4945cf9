"""Support for the thin adapters in ``workflow_scripts/``: logging, threads, clean errors.

An adapter looks like::

    from synret.workflow import run_job

    def main(smk, log):
        ...  # read smk.input / smk.output / smk.params, call the package, write outputs

    run_job(snakemake, main)

``run_job`` sends stdout and stderr to the rule's log file, sets the number of CPU threads from the
rule's ``threads`` (so adapters import torch-using modules inside ``main``), and turns expected errors (bad input files, missing columns, failed downloads)
into one line naming the problem, instead of a traceback (set SYNRET_DEBUG=1 to log the traceback).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError
from .resources import assign_local_gpus

EXPECTED_ERRORS = (ConfigError, FileNotFoundError, KeyError, ValueError, RuntimeError, OSError)


def prepare_job_environment(src: str, cores: int | None = None) -> None:
    """Environment every job inherits from the Snakemake process (set at workflow parse time)."""
    # jobs import the package from the checkout, also where it is not pip-installed
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    # the cores the scheduler hands out (--cores): a job's own `_cores` resource is capped at the
    # machine's CPUs, so it cannot tell a job that holds the whole workflow from one that shares it
    if cores:
        os.environ["SYNRET_WORKFLOW_CORES"] = str(cores)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (a killed job never leaves a half-written file under the final name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)
    finally:  # a failed write (a full disk) leaves no partial file taking the space
        tmp.unlink(missing_ok=True)


def write_parquet(table: Any, path: str | Path) -> None:
    """Write a pyarrow Table (or a DataFrame) as parquet atomically, zstd-compressed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a SLURM or cgroup cpuset, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Kernel choices pinned so that one config gives the same bits on every x86-64 machine with AVX2:
# without them, torch picks AVX-512 kernels where the CPU has them (ATen), MKL its own code path
# per CPU, oneDNN its widest ISA, and the sums they compute round differently (measured: one AdamW
# step of the tiny CLIP changes its weights under each of the three). AVX2 is what the demo's 2-core
# machines all have; on a GPU none of this touches the arithmetic.
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pin_kernels() -> dict[str, str]:
    """Pin the CPU kernels torch, MKL and oneDNN use to AVX2 (where the CPU has it); a variable the
    user set is kept, and ``SYNRET_NATIVE_KERNELS=1`` leaves the libraries their own choice."""
    if os.environ.get("SYNRET_NATIVE_KERNELS") or not {"avx2", "fma"} <= _cpu_flags():
        return {}
    pinned = {}
    for var, value in PINNED_KERNELS.items():
        pinned[var] = os.environ.setdefault(var, value)
    return pinned


def configure_threads(threads: int, workflow_cores: int | None, compute_threads: int | None = None) -> int:
    """Set the CPU threads of this job; call it before torch is imported. Returns the thread count.

    ``compute_threads`` (training jobs): exactly this many threads, whatever the scheduler and the
    machine say. Training on a CPU is not the same to the bit on one thread and on two (gradient
    reductions split by thread), so the count is part of the result and comes from the config.
    Inference is (measured for CLIP, the UNet, the VAE and faiss on 1-3 threads), so other jobs size
    their threads to the machine:

    Snakemake hands a job ``threads`` out of ``--cores``, which may promise more cores than the machine
    has (`--cores 8` on 2 CPUs). A job that holds every core of the workflow gets every CPU, with
    spinning OpenMP threads (a UNet training step was 1.7x faster than with passive ones). A job that
    shares the machine gets its share of the real CPUs (threads x CPUs / cores, at least one) and
    passively waiting threads: measured on 2 CPUs under `--cores 8`, spinning threads made concurrent
    torch jobs 25x slower, and generation jobs with two passive threads each used ~4x the CPU time of one.
    """
    from .jobserver import in_child

    if "torch" in sys.modules and not in_child():  # a served job's server imported it, pinned and idle
        raise RuntimeError("configure_threads must run before torch is imported")
    pin_kernels()
    cpus = available_cpus()
    exclusive = workflow_cores is not None and threads >= workflow_cores
    if compute_threads:
        n = int(compute_threads)
        exclusive = exclusive and n <= cpus
    elif exclusive:
        n = min(int(threads), cpus)
    else:
        share = min(1.0, cpus / workflow_cores) if workflow_cores else 1.0
        n = max(1, min(cpus, int(threads * share)))
    if in_child():
        exclusive = False  # the server's OpenMP started with passive waits
    os.environ["OMP_WAIT_POLICY"] = "ACTIVE" if exclusive else "PASSIVE"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    # cuBLAS needs a fixed workspace to be deterministic (read when CUDA starts)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.set_num_threads(n)
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not reproducible
    torch.backends.cudnn.deterministic = True
    return n


def usage() -> str:
    """CPU seconds (this process and its waited-for children, imports included) and peak memory."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    peak_mib = max(own.ru_maxrss, children.ru_maxrss) / 1024  # kilobytes on Linux
    return f"{cpu:.1f} CPU s, peak RSS {peak_mib:.0f} MiB"


GPU_MARK = "; on GPU: "  # synret.compute reads it from a job's last log line to count GPU-seconds


def gpu_usage() -> str:
    """Which GPUs the job used (where it initialised CUDA), e.g. ``; on GPU: 1 x NVIDIA H200``; else ''."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return ""
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{GPU_MARK}{len(names)} x {names[0]}" if names else ""


def run_job(smk: Any, main: Callable[[Any, Callable[[str], None]], None], uses_torch: bool = True,
            job_server: bool = False) -> None:
    """Run an adapter's ``main(snakemake, log)`` with logging, threads and clean error messages.

    ``job_server``: a short torch job runs in a child of the workflow's fork server, which imported
    the libraries once (see ``synret.jobserver``), wherever that is enabled; else in a child of this
    process, which waits for it and reports it if it is killed (``synret.exhaustion``: a job that the
    out-of-memory killer ends cannot say so itself).
    """
    log_path = smk.log[0] if len(smk.log) else None
    stream = open(log_path, "a", buffering=1) if log_path else sys.stderr
    start = time.time()

    def log(message: str) -> None:
        with contextlib.suppress(OSError):  # a full disk under the log must not end the job by itself
            print(f"[{time.time() - start:7.1f}s] {message}", file=stream, flush=True)

    def fail(message: str) -> None:
        message = f"ERROR in rule {smk.rule}: {message}"
        for target in (sys.__stderr__, stream):  # stderr first: Snakemake shows it also where the log's disk is full
            with contextlib.suppress(OSError, ValueError):
                print(message, file=target, flush=True)

    from .exhaustion import enforcement, explain, explain_kill

    mem_mb = _mem_mb(smk)
    try:
        enforce = enforcement()
    except ValueError as e:
        fail(str(e))
        sys.exit(1)
    if uses_torch:
        from .imports import defer

        defer("wandb")  # timm imports it if installed (img2dataset installs it) and never uses it here
    if job_server and uses_torch and not enforce:
        from . import jobserver

        if jobserver.enabled():
            status = jobserver.delegate(
                log, on_kill=lambda sig, peak, oom: fail(explain_kill(sig, peak, oom, smk.rule, mem_mb)))
            if status is not None:
                stream.flush()
                sys.exit(status)
    report = None  # the pipe to the supervising parent, where there is one
    if not os.environ.get("SYNRET_JOB_SERVER_CHILD"):
        report = _supervise(smk.rule, mem_mb, enforce, log, fail)
        if report == FINISHED:  # the parent, once the job succeeded (a failure exits with its status)
            return
    if log_path:
        sys.stdout = sys.stderr = stream
    if uses_torch and "torch" in sys.modules and os.environ.get("SYNRET_JOB_SERVER_CHILD"):
        log(f"served by the job server (pid {os.getpid()}, forked from {os.getppid()})")

    status = 0
    try:
        if uses_torch:
            cores = int(os.environ.get("SYNRET_WORKFLOW_CORES") or smk.resources.get("_cores") or 0) or None
            compute = getattr(smk.params, "compute_threads", None)
            n = configure_threads(smk.threads, cores, compute)
            kernels = ", ".join(f"{k}={os.environ[k]}" for k in PINNED_KERNELS if k in os.environ) or "native kernels"
            log(f"{n} CPU thread(s){' (fixed by the config)' if compute else ''}, OpenMP wait policy "
                f"{os.environ['OMP_WAIT_POLICY']} (job threads {smk.threads} of {cores} workflow cores); {kernels}")
        # a local GPU job gets GPUs of its own (CUDA_VISIBLE_DEVICES); the locks are held until the job ends
        gpus = assign_local_gpus(smk.resources, log=log)  # noqa: F841
        main(smk, log)
    except (*EXPECTED_ERRORS, MemoryError) as e:
        if os.environ.get("SYNRET_DEBUG"):
            with contextlib.suppress(OSError):
                traceback.print_exc(file=stream)
        paths = [str(p) for p in getattr(smk, "output", [])] + [p for p in [log_path] if p] + [tempfile.gettempdir()]
        fail(explain(e, smk.rule, mem_mb, paths) or f"{type(e).__name__}: {e}")
        status = 1
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - as the interpreter would, then through the same exit
        if report is None:
            raise
        with contextlib.suppress(OSError, ValueError):
            traceback.print_exc()
        status = 1
    if report is None:
        if status == 0:
            log(f"done: {usage()}{gpu_usage()}")
            return
        sys.exit(status)
    # the supervised child: the parent writes the "done" line (its CPU count includes this process's)
    for s in (stream, sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    with contextlib.suppress(OSError):
        os.write(report, gpu_usage().encode())
    os._exit(status)


def _mem_mb(smk: Any) -> int | None:
    try:
        value = smk.resources.get("mem_mb")
        return int(value) if value else None
    except (AttributeError, TypeError, ValueError):
        return None


FINISHED = -1  # what _supervise returns in the parent of a job that succeeded


def _supervise(rule: str, mem_mb: int | None, enforce: bool, log, fail) -> int:
    """Fork the job into a child and return, in the child, the pipe it reports to. The parent waits:
    it forwards the signals that cancel a job, reports a child killed from outside (the OOM killer), and
    exits with the child's status, or logs the ``done`` line and returns FINISHED where it succeeded. With
    ``SYNRET_ENFORCE_MEM_MB=1`` the child is held to ``mem_mb`` in a memory cgroup of its own."""
    import signal

    from .exhaustion import (
        enter_cgroup,
        explain_kill,
        job_cgroup,
        memory_cgroup,
        oom_killed_since,
        oom_kills,
        prefer_for_oom_kill,
        remove_cgroup,
    )

    group = job_cgroup(mem_mb, f"synret-job-{os.getpid()}") if enforce and mem_mb else None
    if enforce and mem_mb and group is None:
        fail("SYNRET_ENFORCE_MEM_MB=1, but no memory cgroup can be made here (the hierarchy is not writable, or "
             "cgroup v2 does not delegate the memory controller): unset it to run without the limit")
        sys.exit(1)
    counted = group or memory_cgroup()
    before = oom_kills(counted)
    parent = os.getpid()
    read_end, write_end = os.pipe()
    for s in (sys.stdout, sys.stderr):
        s.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _die_with_parent(parent)
        if group is not None:
            enter_cgroup(group)
        prefer_for_oom_kill()  # the job, not its small supervisor
        return write_end
    os.close(write_end)
    forwarded = []

    def forward(signum, frame):
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    _, status, child_usage = os.wait4(pid, 0)
    with os.fdopen(read_end, "rb") as r:
        gpu_note = r.read().decode(errors="replace")
    oom = oom_killed_since(counted, before)
    remove_cgroup(group)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum in forwarded:
            log(f"cancelled ({signal.Signals(signum).name})")
        else:
            fail(explain_kill(signum, child_usage.ru_maxrss / 1024, oom, rule, mem_mb))
        sys.exit(128 + signum)
    code = os.WEXITSTATUS(status)
    if code:
        sys.exit(code)
    log(f"done: {usage()}{gpu_note}")
    return FINISHED


def _die_with_parent(parent: int) -> None:
    """A supervised child ends with its parent (a kill of the job process must not leave it writing)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


# ---------------------------------------------------------------- one run per working directory

RUN_LOCK = ".snakemake/synret-run.lock"
_held_run_lock = None  # the open lock file of this process's run, held until the process ends


class RunLocked(RuntimeError):
    """Another run of the workflow is executing jobs in this working directory."""


def hold_run_lock(directory: str | Path = ".") -> None:
    """Take the working directory's run lock for as long as this process lives, or raise RunLocked naming
    the run that holds it. An flock: the kernel releases it when its holder ends however it ends (a kill
    included), so it never goes stale and never needs clearing, unlike Snakemake's own locks, which
    ``--unlock`` removes also while a run is active."""
    import fcntl
    import shlex

    global _held_run_lock
    if _held_run_lock is not None:
        return
    path = Path(directory) / RUN_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunLocked(
            f"another run of this workflow is executing jobs in {Path(directory).resolve()}: {holder}. "
            "Two runs in one working directory would write the same files; wait for it to finish or stop it "
            "(Ctrl-C), then run again. (snakemake --unlock does not stop it; this lock ends with that process.)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}, "
                 f"command: {shlex.join(sys.argv)[:300]}\n")
    handle.flush()
    _held_run_lock = handle
