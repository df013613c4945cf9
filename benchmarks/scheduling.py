"""Scheduling: a dry run and a no-op rerun of the whole paper grid (configs/paper.yaml), against Snakemake's floor.

    python benchmarks/scheduling.py [--repeats 3]

Issue 11's target: each at most 2 s. In a scratch directory with empty stand-ins at every path the paper
config names (tests/paper_support.py), times, interleaved so that they share the machine's noise:
- ``dry_run``: ``snakemake -n results/tables/all.csv`` on the paper grid, as a user types it (every job
  printed), and ``dry_run_quiet`` with ``-q``;
- ``noop_rerun``: ``snakemake --cores 16 results/tables/all.csv`` once every output exists (empty files
  made from the dry run's job list; nothing runs), i.e. what a rerun after the grid finished costs;
- Snakemake's floor on this machine: ``snakemake --version`` (its imports and plugin discovery), and a
  dry run of a trivial workflow with the same number of jobs, one rule, no input functions.

Writes ``benchmarks/results/scheduling.json``: wall and CPU seconds (medians), jobs planned, each time
against the 2 s target and against the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
TARGET_SECONDS = 2.0


def snakemake(workdir: Path, *args: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of one snakemake run, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout + done.stderr


def paper_workdir(root: Path) -> Path:
    from paper_support import stand_ins
    from synret.config import deep_merge

    def load(path: Path) -> dict:
        return yaml.safe_load(path.read_text())

    work = root / "paper"
    work.mkdir()
    stand_ins(work, deep_merge(load(REPO / "config.yaml"), load(REPO / "configs" / "paper.yaml")))
    return work


def make_outputs(work: Path, dry_run_output: str) -> int:
    """Empty files at every output the dry run lists (folders for directory outputs), all with one mtime."""
    outputs = []
    for line in dry_run_output.splitlines():
        m = re.match(r"\s+output: (.*)$", line)
        if m:
            outputs += [p.strip() for p in m.group(1).split(",")]
    stamp = time.time()
    for rel in outputs:
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch()
    for rel in outputs:
        os.utime(work / rel, (stamp, stamp))
    return len(outputs)


def jobs_planned(output: str) -> int:
    m = re.search(r"^total\s+(\d+)", output, re.M)
    return int(m.group(1)) if m else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scheduling.json"))
    args = ap.parse_args()

    from workflow_speed import machine

    before = machine()
    paper = ["-s", str(REPO / "Snakefile"), "--configfile", str(REPO / "configs" / "paper.yaml"), "--cores", "16"]
    with tempfile.TemporaryDirectory(prefix="synret-scheduling-") as tmp:
        work = paper_workdir(Path(tmp))
        _, _, listing = snakemake(work, *paper, "-n", "results/tables/all.csv")
        n_jobs = jobs_planned(listing)
        trivial = Path(tmp) / "trivial"
        trivial.mkdir()
        (trivial / "Snakefile").write_text(
            f'rule all:\n    input: expand("out/{{i}}.txt", i=range({n_jobs - 1}))\n\n'
            'rule one:\n    output: "out/{i}.txt"\n    shell: "touch {output}"\n')
        noop_dir = Path(tmp) / "noop"
        subprocess.run(["cp", "-a", str(work), str(noop_dir)], check=True)
        n_outputs = make_outputs(noop_dir, listing)
        _, _, check = snakemake(noop_dir, *paper, "-n", "results/tables/all.csv")
        if "Nothing to be done" not in check:
            raise SystemExit(f"the stand-in outputs do not make a finished grid:\n{check[-2000:]}")

        runs: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.repeats):
            runs.setdefault("snakemake_version", []).append(snakemake(trivial, "--version")[:2])
            runs.setdefault("trivial_dry_run", []).append(snakemake(trivial, "-n", "--cores", "16")[:2])
            runs.setdefault("dry_run", []).append(snakemake(work, *paper, "-n", "results/tables/all.csv")[:2])
            runs.setdefault("dry_run_quiet", []).append(
                snakemake(work, *paper, "-n", "-q", "all", "--", "results/tables/all.csv")[:2])
            runs.setdefault("noop_rerun", []).append(snakemake(noop_dir, *paper, "results/tables/all.csv")[:2])

    floor = statistics.median(w for w, _ in runs["trivial_dry_run"])
    figures = {}
    for key, values in runs.items():
        wall = statistics.median(w for w, _ in values)
        figures[key] = {"wall_seconds": round(wall, 3), "cpu_seconds": round(statistics.median(c for _, c in values), 3),
                        "runs_wall": [round(w, 3) for w, _ in values],
                        "fraction_of_target": round(wall / TARGET_SECONDS, 2),
                        "ratio_to_trivial_dry_run": round(wall / floor, 2)}
    result = {
        "benchmark": "scheduling",
        "workflow": "configs/paper.yaml, target results/tables/all.csv, stand-in inputs",
        "jobs_planned": n_jobs,
        "outputs_made_for_noop": n_outputs,
        "figures": figures,
        "target_seconds": TARGET_SECONDS,
        "met": {k: figures[k]["wall_seconds"] <= TARGET_SECONDS for k in ("dry_run", "dry_run_quiet", "noop_rerun")},
        "repeats": args.repeats,
        "snakemake": subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True,
                                    text=True).stdout.strip(),
        "machine": before,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
