"""Running out of memory or disk (synret.exhaustion): real failed allocations, real OOM kills in a memory
cgroup, real full filesystems; each job says what ran out and what to raise, and a rerun with more
finishes the grid without redoing the cells that had finished.

The cgroup tests need a writable memory cgroup hierarchy and the full-disk ones a tmpfs mount (root in
a container, as on CI); elsewhere they skip and say why."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from smoke_support import SMOKE, SNAKEMAKE, gone, wait_for_file
from synret.exhaustion import enter_cgroup, explain, job_cgroup, memory_cgroup, oom_kills, remove_cgroup

JOB = textwrap.dedent('''
    """A job script as Snakemake runs them: its `snakemake` object, then run_job."""
    import os, sys
    from types import SimpleNamespace

    from synret.workflow import run_job

    action, out, mode, mem_mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    amount = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    snakemake = SimpleNamespace(log=[out + ".log"], rule="probe", threads=1, output=[out],
                                resources={"_cores": 1, "mem_mb": mem_mb}, params=SimpleNamespace())


    def main(smk, log):
        if action == "allocate":  # far more than any machine has: the allocation itself fails
            import numpy as np

            np.ones(2**47, dtype=np.uint8)
        elif action == "touch":  # memory used page by page, as a job's arrays fill
            block = bytearray(amount * 2**20)
            log(f"touched {len(block)} bytes")
        elif action == "write":
            with open(out, "wb") as f:
                f.write(os.urandom(amount * 1024))
        elif action == "sleep":
            with open(out + ".pid", "w") as f:
                f.write(str(os.getpid()))
            import time

            time.sleep(120)
        with open(out, "w") as f:
            f.write("finished")


    served = mode == "served"
    run_job(snakemake, main, uses_torch=served, job_server=served)
''')


def clean_env(**extra) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SYNRET_JOB_SERVER", "SYNRET_ENFORCE"))}
    return {**base, **extra}


def run(root: Path, action: str, name: str, mode: str = "own", mem_mb: int = 1000, amount: int = 0,
        env: dict | None = None, preexec=None) -> tuple[subprocess.CompletedProcess, str]:
    out = root / name
    extra = {"SYNRET_JOB_SERVER": "0"} if mode == "own" else {}
    proc = subprocess.run([sys.executable, "job.py", action, str(out), mode, str(mem_mb), str(amount)], cwd=root,
                          env=clean_env(**extra, **(env or {})), capture_output=True, text=True, timeout=600,
                          preexec_fn=preexec)
    log = Path(str(out) + ".log")
    return proc, log.read_text() if log.exists() else ""


@pytest.fixture
def jobs(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    return tmp_path


def make_cgroup(mem_mb: int, name: str) -> Path:
    group = job_cgroup(mem_mb, f"synret-test-{name}-{os.getpid()}")
    if group is None:
        pytest.skip("no writable memory cgroup here (needs root or a delegated cgroup v2 subtree)")
    return group


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs, filled to the last byte; yields (mount point, the filler file)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        filler = mount / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
        assert shutil.disk_usage(mount).free == 0
        yield mount, filler
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ---------------------------------------------------------------- the messages, on real errors


def test_a_real_failed_allocation_names_mem_mb():
    import numpy as np

    with pytest.raises(MemoryError) as caught:
        np.ones(2**47, dtype=np.uint8)
    message = explain(caught.value, "finetune", 1900, [])
    assert message.startswith("out of memory (")
    assert "mem_mb=1900" in message and "--set-resources finetune:mem_mb=3800" in message


def test_a_real_full_disk_names_the_path_and_what_is_free(full_disk):
    mount, _ = full_disk
    target = mount / "predictions.parquet"
    with pytest.raises(OSError) as caught:
        with open(target, "wb") as f:
            f.write(b"x" * 8192)
    message = explain(caught.value, "finetune", 1900, [str(target)])
    assert message.startswith("no space left on the disk holding")
    assert str(target) in message and str(mount) in message and "0 KiB free of 64 KiB" in message


def test_a_full_disk_under_an_output_explains_an_error_that_names_no_file(full_disk):
    """torch.save and pyarrow fail with errors that name neither the file nor ENOSPC in errno: the
    output's full filesystem is found anyway."""
    mount, _ = full_disk
    message = explain(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
                      "world_clip", 4000, [str(mount / "model.safetensors")])
    assert message and "on the disk holding" in message and str(mount) in message
    assert explain(ValueError("a bad label"), "curate", 100, [str(mount / "x")]) is None  # not a write


def test_gpu_out_of_memory_names_the_batch_size_key():
    """(A real CUDA OOM is in tests/test_gpu.py; here its exception type, as torch defines it.)"""
    import torch

    message = explain(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "synthesize_shard",
                      16000, [])
    assert message.startswith("out of GPU memory") and "synthetic.batch_size" in message and "mem_mb" not in message


def test_other_errors_are_not_explained_as_exhaustion(tmp_path):
    assert explain(KeyError("label"), "curate", 100, [str(tmp_path / "out")]) is None
    assert explain(OSError(2, "No such file or directory"), "curate", 100, [str(tmp_path / "out")]) is None


# ---------------------------------------------------------------- jobs in their own processes


@pytest.mark.parametrize("mode", ["own", "served"])
def test_a_job_whose_allocation_fails_says_out_of_memory(jobs, mode):
    proc, log = run(jobs, "allocate", f"alloc-{mode}", mode=mode, mem_mb=700)
    assert proc.returncode == 1
    assert "ERROR in rule probe: out of memory (MemoryError" in proc.stderr
    assert "--set-resources probe:mem_mb=1400" in proc.stderr and "Traceback" not in proc.stderr
    assert "out of memory" in log
    if mode == "served":
        assert "served by the job server" in log
        subprocess.run([sys.executable, "-c", "import synret.jobserver as j; j.shutdown()"], cwd=jobs,
                       env=clean_env(), check=True)


def test_a_job_over_its_mem_mb_is_killed_and_says_so(jobs):
    """SYNRET_ENFORCE_MEM_MB=1: the job's own cgroup holds it to mem_mb, as a cluster would; the
    kernel kills it, and its supervising parent reports the kill, the peak and what to raise."""
    make_cgroup(10, "probe-writable").rmdir()
    proc, log = run(jobs, "touch", "big", mem_mb=150, amount=600, env={"SYNRET_ENFORCE_MEM_MB": "1"})
    assert proc.returncode == 128 + signal.SIGKILL, proc.stderr
    assert "ERROR in rule probe: killed by the kernel's out-of-memory killer (SIGKILL) at a peak of" in proc.stderr
    assert "--set-resources probe:mem_mb=300" in proc.stderr
    assert not (jobs / "big").exists()
    # the same job with what it needs
    proc, log = run(jobs, "touch", "big", mem_mb=900, amount=600, env={"SYNRET_ENFORCE_MEM_MB": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "touched" in log and "done:" in log
    parent = memory_cgroup()
    assert not [p for p in parent.iterdir() if p.name.startswith("synret-job-")]  # each job's cgroup removed


def test_a_job_killed_from_outside_is_reported_without_claiming_oom(jobs):
    out = jobs / "slept"
    proc = subprocess.Popen([sys.executable, "job.py", "sleep", str(out), "own", "500"], cwd=jobs,
                            env=clean_env(SYNRET_JOB_SERVER="0"), stderr=subprocess.PIPE, text=True)
    pid_file = Path(str(out) + ".pid")
    assert wait_for_file(pid_file, 60)
    child = int(pid_file.read_text())
    assert child != proc.pid  # the job runs in a child of the process Snakemake started
    os.kill(child, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL
    assert "killed by SIGKILL from outside the job" in err and "--set-resources probe:mem_mb=1000" in err
    assert "out-of-memory killer (" not in err


def test_killing_the_supervisor_takes_the_job_with_it(jobs):
    out = jobs / "orphan"
    proc = subprocess.Popen([sys.executable, "job.py", "sleep", str(out), "own", "500"], cwd=jobs,
                            env=clean_env(SYNRET_JOB_SERVER="0"))
    pid_file = Path(str(out) + ".pid")
    assert wait_for_file(pid_file, 60)
    child = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)  # as a kill of the job process Snakemake started
    proc.wait()
    assert gone(child, 10), "the job went on writing after its supervising process was killed"


def test_a_served_job_killed_by_the_oom_killer_says_so(jobs):
    """The job server's child runs out of its cgroup's memory; the server reaps it and tells the job
    process, which reports it (the child itself cannot)."""
    group = make_cgroup(3000, "served")
    try:
        before = oom_kills(group)
        proc, log = run(jobs, "touch", "served-big", mode="served", mem_mb=2000, amount=4000,
                        preexec=lambda: enter_cgroup(group))
        assert proc.returncode == 128 + signal.SIGKILL, proc.stderr
        assert "ERROR in rule probe: killed by the kernel's out-of-memory killer (SIGKILL)" in proc.stderr
        assert "--set-resources probe:mem_mb=4000" in proc.stderr
        assert oom_kills(group) > before
        # the server survived the kill of its child, and serves the next job
        proc, log = run(jobs, "touch", "served-small", mode="served", mem_mb=2000, amount=10)
        assert proc.returncode == 0 and "served by the job server" in log, proc.stderr
    finally:
        subprocess.run([sys.executable, "-c", "import synret.jobserver as j; j.shutdown()"], cwd=jobs,
                       env=clean_env(), check=False)
        deadline = time.time() + 30
        while (group / "cgroup.procs").read_text().strip() and time.time() < deadline:
            time.sleep(0.2)
        remove_cgroup(group)


def test_a_job_that_fills_its_disk_names_the_path(jobs, full_disk):
    mount, filler = full_disk
    out = mount / "shard.bin"
    proc = subprocess.run([sys.executable, str(jobs / "job.py"), "write", str(out), "own", "500", "32"], cwd=jobs,
                          env=clean_env(SYNRET_JOB_SERVER="0"), capture_output=True, text=True, timeout=120)
    # the log went to the full disk too: the message is in stderr, which Snakemake shows
    assert proc.returncode == 1
    assert f"ERROR in rule probe: no space left on the disk holding {out} ({mount}: 0 KiB free" in proc.stderr
    filler.unlink()  # space freed: the same job finishes
    proc = subprocess.run([sys.executable, str(jobs / "job.py"), "write", str(out), "own", "500", "32"], cwd=jobs,
                          env=clean_env(SYNRET_JOB_SERVER="0"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- the workflow: fail, raise, rerun


def snapshot(root: Path, skip: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    files = {}
    for path in sorted((root / "results").rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_file() and not rel.startswith(skip):
            files[rel] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return files


@pytest.mark.slow
def test_out_of_memory_then_out_of_disk_then_a_rerun_with_more(smoke_run, tmp_path):
    """Two cells of the finished smoke grid are to be redone (their outputs and the table removed). Held
    to a mem_mb that is too small, they are killed and the message names `--set-resources finetune:mem_mb`;
    with their default mem_mb, one cannot write to its full disk and the message names that disk; once
    space is freed, the same command finishes. The two cells come out as in the uninterrupted run, and
    nothing else that had finished was redone."""
    make_cgroup(10, "wf-writable").rmdir()
    reference, _ = smoke_run
    work = tmp_path / "work"
    shutil.copytree(reference, work, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    cells = ["results/cells/shapes/synthetic/n30/seed0", "results/cells/colored_shapes/retrieved/n30/seed1"]
    for cell in cells:
        for f in (work / cell).iterdir():
            f.unlink()
    (work / "results/tables/all.csv").unlink()
    # what the aggregate and the report write anew from every cell (rewritten; compared as tables below)
    downstream = ("results/tables", "results/plots", "results/report", "results/benchmarks", "results/clip_benchmark",
                  *cells)
    before = snapshot(work, downstream)
    command = SNAKEMAKE + ["--directory", str(work), "--configfile", str(SMOKE), str(work / "port.yaml"),
                           "--cores", "2"]
    enforce = clean_env(SYNRET_ENFORCE_MEM_MB="1")

    low = subprocess.run(command + ["--set-resources", "finetune:mem_mb=300"], env=enforce, capture_output=True,
                         text=True, timeout=1200)
    assert low.returncode != 0
    said = low.stdout + low.stderr
    assert "ERROR in rule finetune: killed by the kernel's out-of-memory killer (SIGKILL)" in said
    assert "the rule asks for mem_mb=300; raise it for this rule with `--set-resources finetune:mem_mb=600`" in said
    assert "Traceback" not in said

    disk = work / cells[1]
    disk.mkdir(parents=True, exist_ok=True)  # Snakemake removed the failed job's empty directory
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k"], capture_output=True)
        full = subprocess.run(command, env=enforce, capture_output=True, text=True, timeout=1200)
        assert full.returncode != 0
        said = full.stdout + full.stderr
        assert f"ERROR in rule finetune: no space left on the disk holding {cells[1]}/" in said
        assert f"({disk}: 0 KiB free of 64 KiB)" in said and "Traceback" not in said

        (disk / "filler").unlink()
        done = subprocess.run(command, env=enforce, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        for cell in cells:
            for name in ("predictions.parquet", "train_manifest.parquet"):
                assert (work / cell / name).read_bytes() == (reference / cell / name).read_bytes(), f"{cell}/{name}"
        after = snapshot(work, downstream)
        rewritten = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not rewritten, f"finished outputs redone or removed: {rewritten[:10]}"
        ours, theirs = pd.read_csv(work / "results/tables/all.csv"), pd.read_csv(reference / "results/tables/all.csv")
        timing = [c for c in ours.columns if "seconds" in c]
        pd.testing.assert_frame_equal(ours.drop(columns=timing), theirs.drop(columns=timing))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_write_that_fills_the_disk_leaves_no_partial_file(full_disk):
    """The atomic writers (JSON, parquet, the tables' CSV) clean up after a failed write: the space goes back, nothing half-written stays."""
    import pyarrow as pa

    from synret.aggregate import write_csv
    from synret.workflow import write_json, write_parquet

    mount, filler = full_disk
    filler.unlink()
    (mount / "ballast").write_bytes(b"\0" * (60 * 1024))  # 4 KiB left
    table = pa.table({"x": pa.array(os.urandom(64 * 1024))})
    with pytest.raises(OSError):
        write_parquet(table, mount / "big.parquet")
    with pytest.raises(OSError):
        write_json(mount / "big.json", {"x": "y" * 64 * 1024})
    with pytest.raises(OSError):
        write_csv(pd.DataFrame({"x": ["y" * 1024] * 64}), mount / "big.csv")
    assert sorted(p.name for p in mount.iterdir()) == ["ballast"]
