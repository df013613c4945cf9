"""What every job adapter relies on: thread set-up before torch, atomic JSON, clean errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from synret.config import ConfigError
from synret.workflow import run_job, write_json


def threads_in_fresh_process(threads: int, cores: int | None) -> tuple[str, int]:
    code = ("import os; from synret.workflow import configure_threads; n = configure_threads(%d, %r); "
            "import torch; print(os.environ['OMP_WAIT_POLICY'], n, torch.get_num_threads())" % (threads, cores))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == out[2]
    return out[0], int(out[1])


def test_threads_are_capped_and_wait_policy_follows_exclusivity():
    cpus = len(os.sched_getaffinity(0))
    assert threads_in_fresh_process(64, 64) == ("ACTIVE", cpus)  # holds every core of the workflow
    assert threads_in_fresh_process(1, 8) == ("PASSIVE", 1)  # shares the machine with other jobs


def test_shared_jobs_get_their_share_of_the_real_cpus():
    cpus = len(os.sched_getaffinity(0))
    # --cores promises four times the machine: a 2-thread job gets half a CPU's worth, i.e. one thread
    assert threads_in_fresh_process(2, 4 * cpus) == ("PASSIVE", 1)
    # --cores twice the machine: a job gets half the threads it asked for
    assert threads_in_fresh_process(cpus, 2 * cpus) == ("PASSIVE", max(1, cpus // 2))


def test_configure_threads_refuses_after_torch_is_imported():
    import torch  # noqa: F401 - pytest has it loaded already; the point is the guard

    from synret.workflow import configure_threads

    with pytest.raises(RuntimeError, match="before torch"):
        configure_threads(1, 1)


def test_write_json_is_atomic(tmp_path):
    write_json(tmp_path / "a" / "m.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "a" / "m.json").read_text()) == {"a": [1, 2], "b": 1}
    assert not list((tmp_path / "a").glob("*.partial"))


def fake_job(tmp_path):
    return SimpleNamespace(log=[str(tmp_path / "job.log")], rule="demo", threads=1, resources={"_cores": 1})


def test_expected_errors_become_one_line_in_the_log(tmp_path, capsys):
    def main(smk, log):
        raise ConfigError("config key 'x': bad")

    stdout, stderr = sys.stdout, sys.stderr
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_job(fake_job(tmp_path), main, uses_torch=False)
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    assert exit_info.value.code == 1
    text = (tmp_path / "job.log").read_text()
    assert "ERROR in rule demo: ConfigError: config key 'x': bad" in text
    assert "Traceback" not in text


def test_successful_job_logs_done_with_its_cpu_time_and_memory(tmp_path):
    def main(smk, log):
        log("working")
        subprocess.run([sys.executable, "-c", "sum(range(3_000_000)); bytearray(300 * 2**20)"], check=True)

    stdout, stderr = sys.stdout, sys.stderr
    try:
        run_job(fake_job(tmp_path), main, uses_torch=False)
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    lines = (tmp_path / "job.log").read_text().splitlines()
    assert lines[0].endswith("working")
    match = re.search(r"done: ([\d.]+) CPU s, peak RSS (\d+) MiB$", lines[-1])
    assert match, lines[-1]
    # the child's work and its 300 MiB buffer are counted
    assert float(match.group(1)) > 0.0 and int(match.group(2)) >= 300
