"""The SLURM profile against a real SLURM cluster (.ci/slurm_up.sh starts a one-node one in CI).

The smoke grid goes through `--workflow-profile profiles/slurm` with a small CI overlay (partition,
status checks via squeue, short delays); the controller's own records must show every job, with the
resources the rules ask for, and the table must equal that of the local run of the same config. A job
that keeps failing is resubmitted with more memory and then reported, and a second submission does
nothing. No part of SLURM is mocked.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from smoke_support import REPO, SMOKE, SNAKEMAKE

PROFILE = REPO / "profiles" / "slurm"
TIMEOUT = 1800  # seconds for a whole run; snakemake gets SIGINT then (it ignores SIGTERM while polling SLURM)


def _controller_problem() -> str | None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    if not shutil.which("sbatch"):
        return "no SLURM client tools (sbatch); .ci/slurm_up.sh installs and starts a one-node cluster"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out"
    if "UP" not in ping.stdout:
        return f"no SLURM controller answers `scontrol ping` ({(ping.stdout + ping.stderr).strip()}); " \
               "start one with .ci/slurm_up.sh"
    return None


PROBLEM = _controller_problem()
# skipped where no cluster answers, except in CI, whose .ci/run starts one: there that is a failure
pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(PROBLEM is not None and not os.environ.get("CI"), reason=str(PROBLEM))]


@pytest.fixture(autouse=True)
def _cluster():
    assert PROBLEM is None, PROBLEM


def _default_partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    return next((p.rstrip("*") for p in out if p.endswith("*")), out[0])


def _node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()
    return max(int(c.rstrip("+")) for c in out)


def ci_overlay() -> list[str]:
    """What the CI cluster needs on top of profiles/slurm: the test's equivalent of a site's settings."""
    return [
        "--slurm-status-command", "squeue",  # no accounting database on the CI cluster, so no sacct
        "--slurm-init-seconds-before-status-checks", "2",  # first status check after 2 s, not 40
        "--max-threads", str(_node_cpus()),  # the CI node has 2 CPUs; the world's training asks for 8
        "--latency-wait", "5",  # one machine, no shared filesystem to wait for
        "--resources", "gpu=1",  # a local GPU cap (as profiles/local sets) must not throttle cluster jobs
    ]


def run_through_slurm(workdir: Path, args: list[str], snakefile: list[str] | None = None) -> tuple[int, str]:
    """Run snakemake with the SLURM profile under a timeout that it obeys (SIGINT); returns (rc, log)."""
    env = {**os.environ, "SYNRET_SLURM_PARTITION": _default_partition()}
    cmd = ["timeout", "-s", "INT", "-k", "60", str(TIMEOUT)] + (snakefile or SNAKEMAKE) + [
        "--directory", str(workdir), "--workflow-profile", str(PROFILE), *args, *ci_overlay()]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    (workdir / f"snakemake-{time.time():.0f}.log").write_text(proc.stdout)
    return proc.returncode, proc.stdout


def submissions(log: str) -> list[tuple[str, str]]:
    """(rule, SLURM job id) of every job the SLURM plugin submitted, from snakemake's log."""
    found = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: [^)]*?/rule_(\w+)/", log)
    return [(rule, jobid) for jobid, rule in found]


def controller_record(jobid: str) -> dict[str, str]:
    """The controller's record of a job (`scontrol show job`), as key=value pairs."""
    out = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+(?:/\w+)?)=(\S*)", out))


@pytest.fixture(scope="module")
def slurm_run(smoke_run, tmp_path_factory):
    """The smoke grid through profiles/slurm, with the same config as the local run (same pool port)."""
    local, _ = smoke_run
    workdir = tmp_path_factory.mktemp("slurm")
    shutil.copy(local / "port.yaml", workdir / "port.yaml")
    start = time.time()
    rc, log = run_through_slurm(
        workdir, ["results/tables/all.csv", "--configfile", str(SMOKE), str(workdir / "port.yaml")])
    seconds = time.time() - start
    print(f"smoke grid through SLURM: {seconds:.0f} s")
    assert rc == 0, log[-8000:]
    return workdir, log, seconds


def test_every_job_went_through_sbatch(slurm_run):
    workdir, log, _ = slurm_run
    jobs = submissions(log)
    rules = Counter(rule for rule, _ in jobs)
    # every job of the grid except the local rules (the aggregate runs on the submit host)
    planned = Counter(re.findall(r"^rule (\w+):", log, re.M))
    assert rules == planned and sum(rules.values()) > 30
    assert re.search(r"^localrule aggregate:", log, re.M)
    for rule, jobid in jobs:
        record = controller_record(jobid)
        assert record["JobState"] == "COMPLETED", (rule, record)
        assert record["WorkDir"] == str(workdir)
        assert record["Comment"].startswith(f"rule_{rule}")
        gpus = record.get("TresPerJob", "")
        if rule in ("synthesize_shard", "img2img_shard", "curate", "finetune", "zeroshot"):
            assert gpus == "gres:gpu:1", (rule, record)  # from the rule's gpu=1, as --gpus=1
        else:
            assert "gpu" not in gpus, (rule, record)
    # the local cap of one GPU job at a time did not serialise the cluster's GPU jobs (gpu is a local resource)
    spans = [(record["SubmitTime"], record["EndTime"]) for record in
             (controller_record(jobid) for rule, jobid in jobs if rule == "finetune")]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:]), spans
    # memory and walltime are what the rules size from the config (synret.resources), not a site default
    from synret.config import deep_merge
    from synret.resources import estimate

    config = deep_merge(yaml.safe_load(open(REPO / "config.yaml")), yaml.safe_load(open(SMOKE)))
    for rule, job in (("world_clip", "world"), ("zeroshot", "zeroshot")):
        want = estimate(job, config, {"task": config["tasks"][0]})
        for jobid in (jobid for r, jobid in jobs if r == rule):
            record = controller_record(jobid)
            assert record["MinMemoryNode"] == f"{want['mem_mb']}M"
            assert record["TimeLimit"] == f"{want['runtime'] // 60:02d}:{want['runtime'] % 60:02d}:00"


def test_table_equals_the_local_run(smoke_run, slurm_run):
    local, _ = smoke_run
    workdir, _, _ = slurm_run
    here = pd.read_csv(local / "results" / "tables" / "all.csv")
    there = pd.read_csv(workdir / "results" / "tables" / "all.csv")
    timing = ["wall_seconds"]  # the only column that may differ: how long each cell took
    pd.testing.assert_frame_equal(here.drop(columns=timing), there.drop(columns=timing))


def test_second_submission_does_nothing(slurm_run):
    workdir, _, _ = slurm_run
    rc, log = run_through_slurm(
        workdir, ["results/tables/all.csv", "--configfile", str(SMOKE), str(workdir / "port.yaml")])
    assert rc == 0, log[-5000:]
    assert "Nothing to be done" in log
    assert not submissions(log)


FAILING = """
rule all:
    input: "fails.txt", "works.txt"

rule fails:
    output: "fails.txt"
    resources: mem_mb=lambda wildcards, attempt: 100 * attempt, runtime=1
    shell: "echo $SLURM_JOB_ID >> attempts.txt; exit 3"

rule works:
    output: "works.txt"
    resources: mem_mb=100, runtime=1
    shell: "echo $SLURM_JOB_ID > {output}"
"""


def test_failing_job_is_retried_with_more_memory_then_reported(tmp_path):
    (tmp_path / "Snakefile").write_text(FAILING)
    rc, log = run_through_slurm(tmp_path, [], snakefile=[sys.executable, "-m", "snakemake", "-s",
                                                       str(tmp_path / "Snakefile")])
    assert rc != 0
    failed = [jobid for rule, jobid in submissions(log) if rule == "fails"]
    assert len(failed) == 3  # the first try and the profile's two retries
    memory = [controller_record(jobid)["MinMemoryNode"] for jobid in failed]
    assert memory == ["100M", "200M", "300M"]  # each attempt asks for more
    assert all(controller_record(jobid)["JobState"] == "FAILED" for jobid in failed)
    assert (tmp_path / "attempts.txt").read_text().split() == failed  # it really ran, in those SLURM jobs
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'FAILED'", log)
    assert "Error in rule fails" in log
    # keep-going: the job that works still ran, through SLURM
    assert (tmp_path / "works.txt").read_text().strip().isdigit()
