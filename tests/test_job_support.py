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


def threads_in_fresh_process(threads: int, cores: int | None, compute: int | None = None,
                              env: dict | None = None) -> tuple[str, int]:
    code = ("import os; from synret.workflow import configure_threads; n = configure_threads(%d, %r, %r); "
            "import torch; print(os.environ['OMP_WAIT_POLICY'], n, torch.get_num_threads())" % (threads, cores, compute))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}).stdout.split()
    assert out[1] == out[2]
    return out[0], int(out[1])


def test_training_jobs_compute_on_the_configured_threads_whatever_the_cores():
    cpus = len(os.sched_getaffinity(0))
    # the same count alone on the machine, sharing it under a large --cores, and with no --cores at all
    assert threads_in_fresh_process(8, 8, compute=2)[1] == 2
    assert threads_in_fresh_process(1, 64, compute=2) == ("PASSIVE", 2)
    assert threads_in_fresh_process(1, None, compute=3)[1] == 3
    assert threads_in_fresh_process(cpus, cpus, compute=1) == ("ACTIVE", 1)


def kernel_settings(env: dict) -> dict:
    code = ("import os, json; from synret.workflow import configure_threads; configure_threads(1, 1); "
            "import torch; print(json.dumps({k: os.environ.get(k) for k in "
            "('ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'ONEDNN_MAX_CPU_ISA')} | "
            "{'capability': torch.backends.cpu.get_cpu_capability()}))")
    clean = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**clean, **env})
    return json.loads(out.stdout)


def test_cpu_kernels_are_pinned_to_avx2():
    from synret.workflow import _cpu_flags

    if not {"avx2", "fma"} <= _cpu_flags():
        pytest.skip("this CPU has no AVX2: the libraries keep their own kernels")
    pinned = kernel_settings({})
    assert pinned == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                      "capability": "AVX2"}
    # a user's own choice is kept, and SYNRET_NATIVE_KERNELS leaves every library its default
    assert kernel_settings({"ATEN_CPU_CAPABILITY": "default"})["capability"] == "DEFAULT"
    native = kernel_settings({"SYNRET_NATIVE_KERNELS": "1"})
    assert native["MKL_CBWR"] is None and native["ATEN_CPU_CAPABILITY"] is None


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
