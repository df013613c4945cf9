"""Per-job start-up: how long a job that loads CLIP or the generator takes before its first useful work.

    python benchmarks/job_overhead.py [--repeats 5]

Issue 11's target: at most 1.5x the start-up of ``python -c "import torch"``, measured in the same run.
Each job is a real workflow job script in miniature: Snakemake's script preamble (``snakemake.script``),
``synret.workflow.run_job`` with its thread set-up, then the model loaded by the workflow's own loader
(``synret.clip.load_clip`` for a CLIP job, ``synret.synthesize.load_pipeline`` for a generator job) from
tiny models saved in the real formats (open_clip local-dir, diffusers folder). Start-up is the wall time
from launching the process to the model being ready; the models are tiny, so it is almost all imports.

Two ways a job starts, both timed, interleaved with the ``import torch`` baseline so that they share
the machine's noise:
- ``fresh``: a process of its own that imports everything (SLURM jobs, GPU machines, or
  ``SYNRET_JOB_SERVER=0``);
- ``served``: the job hands its script to the workflow's fork server (``synret.jobserver``), which
  imported the libraries once per workflow run; timed with the server already up, plus the one-off
  cost of the server's own start, paid by the first job of a run.

Writes ``benchmarks/results/job_overhead.json``: medians, each as a multiple of the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
TARGET = 1.5

JOB = '''\
import json, sys, time
from snakemake import script  # what Snakemake's preamble imports before the job's own code

from synret.workflow import run_job

kind, model, ready_file, served = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"


class Job:
    rule, threads, log = f"bench_{kind}", 1, []
    resources, params = {"_cores": 2}, type("Params", (), {})()


def main(smk, log):
    if kind == "clip":
        from synret.clip import load_clip
        load_clip(f"local-dir:{model}")
    else:
        from synret.synthesize import load_pipeline
        load_pipeline(model, "ddim", dtype="fp32", device="cpu")
    with open(ready_file, "w") as f:
        json.dump({"ready": time.time()}, f)


run_job(Job(), main, job_server=served)
'''


def make_models(root: Path) -> dict[str, Path]:
    import open_clip
    import torch

    from synret.architectures import TINY_VIT, save_sd15
    from synret.clip import save_clip_local_dir

    torch.manual_seed(0)
    clip_dir = save_clip_local_dir(open_clip.CLIP(**TINY_VIT), TINY_VIT, root / "clip",
                                   {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    return {"clip": clip_dir, "generator": save_sd15(root / "generator", tiny=True)}


def time_import_torch(env: dict) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, env=env)
    return time.time() - start


def time_job(work: Path, kind: str, model: Path, served: bool, env: dict) -> float:
    ready = work / f"ready-{kind}-{int(served)}.json"
    ready.unlink(missing_ok=True)
    env = dict(env, SYNRET_JOB_SERVER="1" if served else "0")
    start = time.time()
    subprocess.run([sys.executable, str(work / "job.py"), kind, str(model), str(ready), "1" if served else "0"],
                   check=True, cwd=work, env=env, stdout=subprocess.DEVNULL)
    return json.loads(ready.read_text())["ready"] - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "job_overhead.json"))
    args = ap.parse_args()

    from synret import jobserver
    from workflow_speed import machine

    before = machine()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="synret-job-overhead-") as tmp:
        work = Path(tmp)
        (work / "job.py").write_text(JOB)
        models = make_models(work)
        # the server's first start, paid once per workflow run by its first served job
        first_served = time_job(work, "clip", models["clip"], True, env)
        times: dict[str, list[float]] = {"import_torch": []}
        for _ in range(args.repeats):
            times["import_torch"].append(time_import_torch(env))
            for kind, model in models.items():
                for served in (False, True):
                    key = f"{kind}_{'served' if served else 'fresh'}"
                    times.setdefault(key, []).append(time_job(work, kind, model, served, env))
        stopped = subprocess.run([sys.executable, "-c", "from synret import jobserver; print(jobserver.shutdown())"],
                                 cwd=work, env=env, capture_output=True, text=True).stdout.strip()
    base = statistics.median(times["import_torch"])
    jobs = {key: {"median_seconds": round(statistics.median(v), 3), "runs": [round(x, 3) for x in v],
                  "ratio_to_import_torch": round(statistics.median(v) / base, 2),
                  "met": statistics.median(v) / base <= TARGET}
            for key, v in times.items() if key != "import_torch"}
    result = {
        "benchmark": "job_overhead",
        "what": "wall seconds from launching a job process to its model being loaded (tiny models: the rest is "
                "start-up), against `python -c 'import torch'`, interleaved in one run",
        "baseline_import_torch": {"median_seconds": round(base, 3), "runs": [round(x, 3) for x in times["import_torch"]]},
        "jobs": jobs,
        "server_first_start_seconds": round(first_served, 3),
        "server_shut_down": stopped,
        "target_ratio": TARGET,
        "repeats": args.repeats,
        "job_server_preloads": jobserver.PRELOAD,
        "machine": before,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "job_server_preloads")}, indent=2))


if __name__ == "__main__":
    main()
