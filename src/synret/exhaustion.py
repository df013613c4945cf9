"""A job that runs out of memory or disk: say so, and say what to raise.

Three ways a job meets the end of a resource, each turned into one line for the log and Snakemake's
error report (``synret.workflow.run_job`` and the job server's client print it):

- an allocation fails in the job (``MemoryError`` from Python, numpy or pyarrow; torch's "can't
  allocate memory"; CUDA out of memory): the rule's ``mem_mb`` and how to raise it (GPU memory: the
  batch size);
- a write fails for want of space (``ENOSPC``, ``EDQUOT``, or any failure while the disk under one of
  the job's outputs or its temporary directory is full): that path, its filesystem and what is free;
- the job is killed with SIGKILL from outside, which is how the kernel's out-of-memory killer ends a
  process when the machine, or the cgroup that a cluster holds a job in, runs out: a supervising
  process (``run_job``'s parent, or the job server) reports it with the job's peak memory, and says
  "out of memory" outright where the cgroup's OOM-kill counter rose while the job ran.

``SYNRET_ENFORCE_MEM_MB=1`` holds every job to its ``mem_mb`` on a local machine as a SLURM cluster does
(a memory cgroup per job, without swap: the kernel kills a job over its limit), so that a request that
is too small shows up before the grid goes to a cluster. It needs a writable cgroup hierarchy (root, or
a delegated cgroup v2 subtree); jobs then run in their own processes, not the job server's. (A cap
on the address space or data segment would not do: torch maps ~1 GB more than it touches, so such a
limit fails jobs that fit in their mem_mb.)
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Iterable

ENFORCE_ENV = "SYNRET_ENFORCE_MEM_MB"
FULL_BYTES = 16 * 2**20  # a filesystem with less than this free is full for our purposes
DISK_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}
DISK_TEXTS = {"no space left on device": "no space left", "disk quota exceeded": "disk quota exceeded"}
CPU_OOM_TEXTS = ("can't allocate memory", "defaultcpuallocator", "std::bad_alloc", "cannot allocate memory")
CGROUP_ROOT = Path("/sys/fs/cgroup")
BATCH_KEYS = {  # rule -> the config keys that size its batches on a GPU
    "synthesize_shard": "synthetic.batch_size (or source_settings.<source>.synthetic.batch_size)",
    "img2img_shard": "synthetic.batch_size (or source_settings.<source>.synthetic.batch_size)",
    "curate": "curate.batch_size", "curate_real": "curate.batch_size", "data_quality": "curate.batch_size",
    "finetune": "finetune.batch_size (training) or evaluate.batch_size (evaluation)",
    "zeroshot": "evaluate.batch_size", "generator_prompts_llm": "prompts.llm.batch_size",
    "world_clip": "world.clip.batch_size", "world_generator": "world.generator.vae_batch_size / unet_batch_size",
}


# ---------------------------------------------------------------- what to tell the user


def memory_remedy(rule: str, mem_mb: int | None) -> str:
    asked = f"the rule asks for mem_mb={mem_mb}" if mem_mb else "the rule asks for no mem_mb"
    more = 2 * mem_mb if mem_mb else 4000
    return (f"{asked}; raise it for this rule with `--set-resources {rule}:mem_mb={more}` (command line, or "
            f"`set-resources` in the profile) and run the same command again: finished jobs are not redone. "
            "On a shared machine, also give Snakemake its memory (`--resources mem_mb=...`) so that it runs "
            "fewer large jobs at once.")


def out_of_memory(exc: BaseException) -> str | None:
    """'cpu' or 'gpu' where ``exc`` is a failed allocation, else None."""
    if isinstance(exc, MemoryError):  # numpy's _ArrayMemoryError and pyarrow's ArrowMemoryError too
        return "cpu"
    text = str(exc).lower()
    if type(exc).__name__ == "OutOfMemoryError" or "cuda out of memory" in text:  # torch.OutOfMemoryError
        return "gpu"
    if isinstance(exc, RuntimeError) and any(t in text for t in CPU_OOM_TEXTS):
        return "cpu"
    return None


def free_bytes(path: str | os.PathLike) -> tuple[Path, int, int] | None:
    """(``path`` or its nearest existing parent, bytes free there to this user, the filesystem's size)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return p, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def full_disk(exc: BaseException, paths: Iterable[str]) -> str | None:
    """The message for a write that failed for want of space, else None. ``paths``: the job's outputs,
    log and temporary directory, checked for a full filesystem when the error itself does not name one."""
    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    kind = DISK_ERRNOS.get(code) or next((v for k, v in DISK_TEXTS.items() if k in text), None)
    if not kind and not isinstance(exc, (OSError, RuntimeError)):  # not a failed write (torch.save's is a RuntimeError)
        return None
    named = getattr(exc, "filename", None) if kind else None
    for path in ([named] if named else []) + list(paths):
        found = free_bytes(path)
        if found is None:
            continue
        directory, free, size = found
        if path == named or free < FULL_BYTES:
            return (f"{kind or 'no space left'} on the disk holding {path} ({mount_point(directory)}: "
                    f"{_mib(free)} free of {_mib(size)}). Free space there, or run the workflow in a directory "
                    "on a larger disk (`--directory`); then run the same command again: finished jobs are kept.")
    if kind:
        return (f"{kind} (the error names no file, and the disks of the job's outputs and temporary directory "
                "have space): free space where the job writes, and run the same command again.")
    return None


def explain(exc: BaseException, rule: str, mem_mb: int | None, paths: Iterable[str]) -> str | None:
    """One line for an exception that means a resource ran out; None for any other exception."""
    kind = out_of_memory(exc)
    if kind == "gpu":
        return (f"out of GPU memory ({type(exc).__name__}: {_first_line(exc)}): lower the batch size "
                f"({BATCH_KEYS.get(rule, 'of this stage in the config')}), or run on a GPU with more memory.")
    if kind == "cpu":
        return f"out of memory ({type(exc).__name__}: {_first_line(exc)}): {memory_remedy(rule, mem_mb)}"
    disk = full_disk(exc, paths)
    if disk:
        return f"{disk} ({type(exc).__name__}: {_first_line(exc)})"
    return None


def explain_kill(signum: int, peak_mib: float | None, oom_killed: bool | None, rule: str, mem_mb: int | None) -> str:
    """One line for a job process that died of a signal it did not handle."""
    try:
        name = signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name
        name = f"signal {signum}"
    peak = f" at a peak of {peak_mib:.0f} MiB" if peak_mib else ""
    if oom_killed:
        return f"killed by the kernel's out-of-memory killer ({name}){peak}: {memory_remedy(rule, mem_mb)}"
    if signum == signal.SIGKILL:
        return (f"killed by {name} from outside the job{peak}. The kernel's out-of-memory killer ends jobs so "
                f"when the machine or the job's memory limit runs out; if that is what happened, "
                f"{memory_remedy(rule, mem_mb)}")
    return f"killed by {name}{peak}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _mib(n: float) -> str:
    if n < 2**20:
        return f"{n / 2**10:,.0f} KiB"
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.1f} GiB"


# ---------------------------------------------------------------- the kernel's OOM-kill counters


def memory_cgroup(pid: int | str = "self") -> Path | None:
    """The directory of the memory cgroup ``pid`` is in (cgroup v1's memory hierarchy, else v2), if any."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_ROOT / "memory" / path.lstrip("/")
        if controllers == "":
            unified = path
    if unified is not None:
        for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
            if (root / "cgroup.controllers").exists() and "memory" in (root / "cgroup.controllers").read_text():
                return root / unified.lstrip("/")
    return None


def oom_kills(cgroup: Path | None) -> int | None:
    """How many processes of ``cgroup`` the OOM killer has ended (v2 memory.events, v1 memory.oom_control)."""
    if cgroup is None:
        return None
    for name in ("memory.events", "memory.oom_control"):
        try:
            for line in (cgroup / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def oom_killed_since(cgroup: Path | None, before: int | None) -> bool | None:
    """Whether the OOM killer ended a process of ``cgroup`` since its counter read ``before``; None where
    the counter cannot be read."""
    after = oom_kills(cgroup)
    return None if before is None or after is None else after > before


def prefer_for_oom_kill() -> None:
    """Make this process (a job) the OOM killer's first choice over its supervisor or the job server."""
    try:
        Path("/proc/self/oom_score_adj").write_text("500")
    except OSError:
        pass


# ---------------------------------------------------------------- holding a local job to its mem_mb


def enforcement() -> bool:
    """Whether SYNRET_ENFORCE_MEM_MB asks to hold every job to its mem_mb."""
    value = os.environ.get(ENFORCE_ENV, "").strip().lower()
    if value in ("", "0", "no", "false"):
        return False
    if value in ("1", "yes", "true"):
        return True
    raise ValueError(f"{ENFORCE_ENV}={value!r}: use 1 (hold each job to its mem_mb in a memory cgroup) or 0")


def job_cgroup(mem_mb: int, name: str) -> Path | None:
    """Make a memory cgroup ``name`` under this process's own, limited to ``mem_mb`` without swap; None
    where the hierarchy is not writable (or cgroup v2 does not delegate the memory controller here)."""
    parent = memory_cgroup()
    if parent is None:
        return None
    limit = str(int(mem_mb) * 2**20)
    group = parent / name
    try:
        group.mkdir(exist_ok=True)
        if (group / "memory.max").exists():  # v2
            (group / "memory.max").write_text(limit)
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
        else:
            (group / "memory.limit_in_bytes").write_text(limit)
            if (group / "memory.swappiness").exists():
                (group / "memory.swappiness").write_text("0")
    except OSError:
        remove_cgroup(group)
        return None
    return group


def enter_cgroup(group: Path) -> None:
    (group / "cgroup.procs").write_text(str(os.getpid()))


def remove_cgroup(group: Path | None) -> None:
    if group is not None:
        try:
            group.rmdir()
        except OSError:
            pass
