"""Wall time of the workflow end to end, and of a no-op rerun, written as JSON with the machine described.

    python benchmarks/workflow_speed.py --config smoke     # configs/smoke.yaml, <= 3 min on 2 cores
    python benchmarks/workflow_speed.py --config demo      # config.yaml, <= 10 min on 2 cores

Each run starts from an empty working directory (nothing cached), runs
`snakemake --cores 8 results/tables/all.csv`, then runs it again and times that no-op rerun
(Snakemake's own wall time: the process from start to "Nothing to be done").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"smoke": 180.0, "demo": 900.0}  # seconds, from the issues (the demo: 15 minutes with every source, issue 12)
NOOP_TARGET = 2.0


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    cpu, cpu_id, isa = "", "", []
    if Path("/proc/cpuinfo").exists():
        info = Path("/proc/cpuinfo").read_text()
        field = lambda name: (re.search(rf"^{name}\s*:\s*(.*)$", info, re.M) or [None, ""])[1]  # noqa: E731
        cpu = field("model name")
        # "AMD EPYC" names several generations: family/model tell them apart, the ISA which kernels run
        cpu_id = f"family {field('cpu family')} model {field('model')} stepping {field('stepping')}"
        isa = sorted(set(field("flags").split()) & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"})
    mem = ""
    if Path("/proc/meminfo").exists():
        kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 2**20:.1f} GiB"
    return {
        "cpu": cpu, "cpu_id": cpu_id, "isa": isa, "matmul_gflops_1_thread": matmul_gflops(), "cores": os.cpu_count(), "memory": mem, "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_before": os.getloadavg(),
    }


def matmul_gflops() -> float:
    """One thread's fp32 matmul rate now: hosts of one name and a shared host's load differ."""
    out = subprocess.run([sys.executable, "-c", (
        "import time, torch; torch.set_num_threads(1); a = torch.randn(1024, 1024); a @ a; t = time.perf_counter()\n"
        "for _ in range(20): a @ a\n"
        "print(20 * 2 * 1024 ** 3 / (time.perf_counter() - t) / 1e9)")], capture_output=True, text=True)
    return round(float(out.stdout), 1) if out.returncode == 0 else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.time()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def cpu_seconds(workdir: Path) -> dict:
    """CPU seconds per stage, summed over its jobs, from the last line of each job's log (what the
    2 cores were spent on; summed wall seconds count a job's waiting on the other jobs too)."""
    totals: dict[str, float] = {}
    for path in (workdir / "logs").rglob("*.log"):
        match = re.search(r"done: ([0-9.]+) CPU s", path.read_text())
        if match:
            parts = path.relative_to(workdir / "logs").parts
            key = ("/".join(parts[:2]) if parts[0] == "world" else parts[0]).removesuffix(".log")
            totals[key] = round(totals.get(key, 0.0) + float(match.group(1)), 1)
    return dict(sorted(totals.items()))


def served_and_own_cpu(workdir: Path) -> tuple[float, float]:
    """CPU seconds of the jobs the job server ran (its forks: not children of Snakemake) and of every job,
    from the jobs' own log lines."""
    served = total = 0.0
    for path in (workdir / "logs").rglob("*.log"):
        text = path.read_text()
        for match in re.finditer(r"done: ([0-9.]+) CPU s", text):
            total += float(match.group(1))
            if "served by the job server" in text:
                served += float(match.group(1))
    return round(served, 1), round(total, 1)


def timeline(workdir: Path) -> dict:
    """Per rule, when its first job started and its last ended (seconds from the run's start), from
    Snakemake's log of the first run: which stages overlap and which wait."""
    from datetime import datetime

    log = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))[0]
    stamp, rule, started, spans, t0 = None, None, {}, {}, None
    for line in log.read_text().splitlines():
        if m := re.match(r"\[(\w{3} \w{3}\s+\d+ [\d:]+ \d{4})\]", line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            t0 = t0 or stamp
        elif m := re.match(r"(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif (m := re.match(r"\s+jobid: (\d+)", line)) and rule:
            started[m.group(1)], rule = (rule, (stamp - t0).total_seconds()), None
        elif (m := re.match(r"Finished jobid: (\d+)", line.strip())) and m.group(1) in started:
            name, start = started[m.group(1)]
            first, last, jobs = spans.get(name, (start, 0.0, 0))
            spans[name] = (min(first, start), max(last, (stamp - t0).total_seconds()), jobs + 1)
    return {name: {"first_start": a, "last_end": b, "jobs": n} for name, (a, b, n) in sorted(spans.items(), key=lambda x: x[1])}


def job_seconds(workdir: Path) -> dict:
    """Wall seconds per rule, summed over its jobs, from Snakemake's benchmark records."""
    totals: dict[str, float] = {}
    for tsv in (workdir / "results" / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(workdir / "results" / "benchmarks").parts[0:2]
        seconds = float(tsv.read_text().splitlines()[1].split("\t")[0])
        key = "/".join(rule) if rule[0] == "world" else rule[0]
        totals[key] = round(totals.get(key, 0.0) + seconds, 1)
    return dict(sorted(totals.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(TARGETS), default="smoke")
    parser.add_argument("--cores", default="8")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()

    info = {"benchmark": f"workflow_speed/{args.config}", "machine": machine()}
    workdir = Path(tempfile.mkdtemp(prefix=f"synret-bench-{args.config}-"))
    port = workdir / "port.yaml"
    port.write_text(f"world: {{base_url: 'http://127.0.0.1:{free_port()}'}}\n")
    configs = ([str(REPO / "configs" / "smoke.yaml")] if args.config == "smoke" else []) + [str(port)]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", *configs, "--cores", args.cores, "results/tables/all.csv"]

    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    info["end_to_end_seconds"], _ = run(cmd, REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    children = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    info["noop_rerun_seconds"], out = run(cmd, REPO)
    assert "Nothing to be done" in out, "the second run should have nothing to do"
    info["seconds_by_rule"] = job_seconds(workdir)
    info["cpu_seconds_by_stage"] = cpu_seconds(workdir)
    # all the CPU the run used: Snakemake and its job processes (children), and the job server's forks
    served, in_jobs = served_and_own_cpu(workdir)
    info["cpu_seconds"] = {"total": round(children + served, 1), "in_jobs": in_jobs,
                           "outside_jobs": round(children + served - in_jobs, 1),  # Snakemake, job processes' start, the server's imports
                           "available": round(info["end_to_end_seconds"] * (os.cpu_count() or 1), 1)}
    info["timeline"] = timeline(workdir)
    info["targets"] = {"end_to_end_seconds": TARGETS[args.config], "noop_rerun_seconds": NOOP_TARGET}
    info["met"] = {"end_to_end": info["end_to_end_seconds"] <= TARGETS[args.config],
                   "noop_rerun": info["noop_rerun_seconds"] <= NOOP_TARGET}
    info["results_table"] = (workdir / "results" / "tables" / "all.csv").read_text()
    info["workdir"] = str(workdir) if args.keep else None
    out_path = REPO / "benchmarks" / "results" / f"workflow_speed_{args.config}.json"
    out_path.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: info[k] for k in ("end_to_end_seconds", "noop_rerun_seconds", "met")}, indent=2))
    if not args.keep:
        subprocess.run(["rm", "-rf", str(workdir)])


if __name__ == "__main__":
    main()
