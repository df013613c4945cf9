"""Crash consistency: the smoke grid killed again and again, at seeded points spread over its rules (the
whole workflow: the snakemake process and its jobs, or a single job mid-write), each time recovered with
exactly what README ("When something goes wrong") tells users to run; in the end every table and
manifest is identical to the uninterrupted run's, and after every kill no output that Snakemake would
keep is a partial file.

SYNRET_CRASH_KILLS sets how many kills (CI: 6; before resolving issue 14: 24, `pytest -m slow
tests/test_crash.py` with SYNRET_CRASH_KILLS=24)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from smoke_support import REPRODUCIBLE, SMOKE, SNAKEMAKE

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("SYNRET_CRASH_KILLS", "6"))
SEED = int(os.environ.get("SYNRET_CRASH_SEED", "0"))
TABLES = ["all", "summary", "paired", "sources", "exchange", "quality"]
TIMING_COLUMNS = {"wall_seconds"}


def command(workdir: Path, *extra: str) -> list[str]:
    return SNAKEMAKE + ["--directory", str(workdir), "--configfile", str(SMOKE), str(workdir / "port.yaml"),
                        "--cores", "2", *extra]


def recover(workdir: Path) -> subprocess.Popen:
    """README: run the same command again; if Snakemake says the directory is locked, once with --unlock."""
    probe = subprocess.run(command(workdir, "-n"), capture_output=True, text=True)
    if "cannot be locked" in probe.stdout + probe.stderr or "LockException" in probe.stdout + probe.stderr:
        unlock = subprocess.run(command(workdir, "--unlock"), capture_output=True, text=True)
        assert unlock.returncode == 0, unlock.stdout + unlock.stderr
    return subprocess.Popen(command(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def running_jobs(pid: int) -> dict[int, str]:
    """The job processes of a snakemake run (pid -> the job's script name), from /proc."""
    jobs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            sid = os.getsid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
        script = next((c.decode() for c in cmdline if b".snakemake/scripts/" in c), None)
        if script and sid == pid:
            jobs[int(entry.name)] = re.sub(r"^tmp[^.]+\.", "", Path(script).name).removesuffix(".py")
    return jobs


def planned_outputs(workdir: Path) -> set[str]:
    """The outputs a dry run would (re)make: those Snakemake will not keep as they are."""
    proc = subprocess.run(command(workdir, "-n", "--nolock"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = set()
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("output:"):
            out.update(p.strip() for p in line[len("output:"):].split(","))
    return out


def planned_outputs_jobs(workdir: Path) -> list[str]:
    """The jobs a dry run of a fresh directory plans (their rule names)."""
    proc = subprocess.run(command(workdir, "-n", "--nolock"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return re.findall(r"^(?:local)?rule (\w+):", proc.stdout, re.M)


def finished_jobs(workdir: Path) -> int:
    """Jobs finished so far over every run in the directory (Snakemake's own logs)."""
    return sum(p.read_text(errors="replace").count("Finished jobid") for p in (workdir / ".snakemake" / "log").glob("*.log"))


def unreadable(path: Path) -> bool:
    try:
        if path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".tar":
            with tarfile.open(path) as tar:
                tar.getmembers()
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".png":
            Image.open(path).load()
        return False
    except Exception:
        return True


def partial_files_kept(workdir: Path) -> list[str]:
    """Files under results/ that do not parse although Snakemake would keep them."""
    planned = planned_outputs(workdir)
    bad = []
    for path in (workdir / "results").rglob("*"):
        rel = str(path.relative_to(workdir))
        if path.is_file() and path.suffix in (".parquet", ".json", ".tar", ".csv", ".png") and unreadable(path):
            if not any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in planned):
                bad.append(rel)
    return bad


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for pattern in REPRODUCIBLE for p in sorted(root.glob(pattern))}


def test_killed_anywhere_and_rerun_as_readme_says_gives_the_same_results(smoke_run, tmp_path):
    reference, _ = smoke_run
    workdir = tmp_path / "crashed"
    workdir.mkdir()
    (workdir / "port.yaml").write_text((reference / "port.yaml").read_text())  # the same pool URLs
    rng = random.Random(SEED)
    # kill i comes once the run (over all its restarts) has finished thresholds[i] jobs: spread over the grid
    total = len(planned_outputs_jobs(workdir))
    thresholds = sorted(rng.sample(range(0, max(total - 2, KILLS)), KILLS))
    kills: list[dict] = []
    proc = recover(workdir)
    for threshold in thresholds:
        deadline = time.time() + 900
        jobs = {}
        while time.time() < deadline and proc.poll() is None:
            if finished_jobs(workdir) >= threshold:
                jobs = running_jobs(proc.pid)
                if jobs:
                    break
            time.sleep(0.05)
        if proc.poll() is not None:
            break  # the run finished before the schedule did
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside the job(s) now running
        jobs = running_jobs(proc.pid) or jobs
        mode = "job" if rng.random() < 0.3 and jobs else "workflow"
        if mode == "job":
            victim = rng.choice(sorted(jobs))
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
            proc.wait(timeout=900)  # the run fails on its killed job (the others finish)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kills.append({"after_jobs": threshold, "mode": mode, "jobs": sorted(set(jobs.values()))})
        bad = partial_files_kept(workdir)
        assert not bad, f"after kill {len(kills)} ({kills[-1]}) these partial files would be kept: {bad}"
        proc = recover(workdir)
    assert proc.wait(timeout=1800) == 0, "the last rerun completes"
    points = sorted({job for k in kills for job in k["jobs"]})
    print(f"{len(kills)} kills at: {kills}\nscripts hit: {points}")
    assert len(points) >= min(KILLS, 10) // 2, f"the kills should spread over the grid's rules, hit only {points}"
    assert len(kills) == KILLS, f"the run finished after {len(kills)} of {KILLS} kills"

    first, second = digests(reference), digests(workdir)
    assert len(first) > 20 and set(first) == set(second)
    differ = sorted(name for name in first if first[name] != second[name])
    assert not differ, f"differ from the uninterrupted run after {kills}: {differ}"
    for name in TABLES:
        a, b = (pd.read_csv(root / "results" / "tables" / f"{name}.csv") for root in (reference, workdir))
        pd.testing.assert_frame_equal(a.drop(columns=[c for c in TIMING_COLUMNS if c in a]),
                                      b.drop(columns=[c for c in TIMING_COLUMNS if c in b]))

