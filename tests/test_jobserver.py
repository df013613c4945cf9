"""The fork server that runs short torch jobs: real server processes, real forks, real job scripts.

Every test runs job scripts as Snakemake does (a fresh ``python script.py``) in one working
directory, so they share one server, started by the first job that needs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smoke_support import gone, wait_for_file

JOB = textwrap.dedent('''
    """A job script like the adapters: builds its `snakemake` object, then run_job(..., job_server=True)."""
    import json, os, sys
    from types import SimpleNamespace

    from synret.workflow import run_job

    action, out = sys.argv[1], sys.argv[2]
    snakemake = SimpleNamespace(log=[out + ".log"], rule="probe", threads=1, resources={"_cores": 1},
                                params=SimpleNamespace(compute_threads=int(sys.argv[3]) if len(sys.argv) > 3 else None))


    def main(smk, log):
        import torch

        record = {"pid": os.getpid(), "ppid": os.getppid(), "served": os.environ.get("SYNRET_JOB_SERVER_CHILD"),
                  "threads": torch.get_num_threads(), "cwd": os.getcwd(), "marker": os.environ.get("PROBE_MARKER")}
        if action == "train":  # a few AdamW steps: the bits depend on kernels and threads, not on the fork
            import hashlib

            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 10))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            g = torch.Generator().manual_seed(0)
            for _ in range(20):
                x, y = torch.randn(512, 64, generator=g), torch.randint(0, 10, (512,), generator=g)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
            record["digest"] = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
        elif action == "loader":  # data-loader workers forked from the job, after multi-threaded torch work
            import hashlib, io
            import numpy as np
            from PIL import Image
            from torchvision import transforms
            from synret.embed import ImageDataset, image_loader

            x = torch.randn(256, 256)
            for _ in range(20):  # the OpenMP pool of the job's threads is up when the workers are forked
                x = torch.tanh(x @ x) / 16
            rng = np.random.default_rng(0)
            items = []
            for i in range(23):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (40 + i, 37, 3), dtype=np.uint8)).save(buffer, "PNG")
                items.append(buffer.getvalue())
            transform = transforms.Compose([transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC),
                                            transforms.CenterCrop(32), transforms.ToTensor()])

            class Where(ImageDataset):  # each image with the process that decoded it
                def __getitem__(self, i):
                    return super().__getitem__(i), os.getpid(), os.getppid()

            record["digests"], record["workers"] = [], []
            for workers in (0, 2):
                batches = list(image_loader(Where(items, transform), batch_size=5, num_workers=workers))
                record["digests"].append(hashlib.sha256(b"".join(b[0].numpy().tobytes() for b in batches)).hexdigest())
                record["workers"].append(sorted({(int(pid), int(ppid)) for b in batches for pid, ppid in zip(b[1], b[2])}))
        elif action == "fail":
            raise ValueError("a bad input file")
        elif action == "exit3":
            sys.exit(3)
        elif action == "sleep":
            with open(out + ".pid", "w") as f:
                f.write(str(os.getpid()))
            import time
            time.sleep(120)
        print("to stdout", flush=True)
        with open(out, "w") as f:
            json.dump(record, f)


    run_job(snakemake, main, job_server=True)
''')


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One working directory (one server) for the module; the server is told to exit at the end."""
    root = tmp_path_factory.mktemp("jobs")
    (root / "job.py").write_text(JOB)
    yield root
    run_in(root, "import synret.jobserver as j; print(j.shutdown())")


def env(**extra) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYNRET_JOB_SERVER")}
    return {**base, **extra}


def run_in(root: Path, code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env(), capture_output=True, text=True,
                          check=True).stdout


def job(root: Path, action: str, name: str, *args: str, extra_env: dict | None = None,
        timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = root / name
    proc = subprocess.run([sys.executable, "job.py", action, str(out), *args], cwd=root, env=env(**(extra_env or {})),
                          capture_output=True, text=True, timeout=timeout)
    record = json.loads(out.read_text()) if out.exists() else None
    return proc, record


def test_jobs_run_in_children_of_one_server(workdir):
    first_proc, first = job(workdir, "plain", "a.json", extra_env={"PROBE_MARKER": "one"})
    assert first_proc.returncode == 0, first_proc.stderr
    second_proc, second = job(workdir, "plain", "b.json", extra_env={"PROBE_MARKER": "two"})
    assert second_proc.returncode == 0, second_proc.stderr
    # both forked from the same server, neither is the job process Snakemake started
    assert first["served"] == second["served"] == "1"
    assert first["ppid"] == second["ppid"] and first["pid"] != second["pid"]
    # each child took on its own job's environment and working directory
    assert (first["marker"], second["marker"]) == ("one", "two")
    assert Path(first["cwd"]).resolve() == workdir.resolve()
    # the job's stdout reached the job's log, with the line that says where it ran
    log = (workdir / "b.json.log").read_text()
    assert "to stdout" in log and "served by the job server" in log
    assert (workdir / ".snakemake" / "log" / "synret-jobserver.log").exists()


def test_served_training_gives_the_bits_of_a_fresh_process(workdir):
    for threads in ("1", "2"):
        served_proc, served = job(workdir, "train", f"served{threads}.json", threads)
        fresh_proc, fresh = job(workdir, "train", f"fresh{threads}.json", threads, extra_env={"SYNRET_JOB_SERVER": "0"})
        assert served_proc.returncode == fresh_proc.returncode == 0, served_proc.stderr + fresh_proc.stderr
        assert served["served"] == "1" and fresh["served"] is None
        assert served["threads"] == fresh["threads"] == int(threads)
        assert served["digest"] == fresh["digest"]


def test_loader_workers_fork_from_a_served_job(workdir):
    """A served job (itself forked) forks data-loader workers after computing on two threads: they run,
    end, and decode the bits of an in-process loader, as in a job that runs in its own process."""
    records = {}
    for name, extra in (("served", None), ("fresh", {"SYNRET_JOB_SERVER": "0"})):
        proc, records[name] = job(workdir, "loader", f"loader-{name}.json", "2", extra_env=extra, timeout=300)
        assert proc.returncode == 0, proc.stderr
        record = records[name]
        assert record["threads"] == 2 and record["digests"][0] == record["digests"][1]
        assert record["workers"][0] == [[record["pid"], record["ppid"]]]  # in the job's own process
        assert len(record["workers"][1]) == 2 and {ppid for _, ppid in record["workers"][1]} == {record["pid"]}
    assert records["served"]["served"] == "1" and records["fresh"]["served"] is None
    assert records["served"]["digests"] == records["fresh"]["digests"]


def test_errors_and_exit_status_reach_the_job(workdir):
    proc, _ = job(workdir, "fail", "fail.json")
    assert proc.returncode == 1
    assert "ERROR in rule probe: ValueError: a bad input file" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc, _ = job(workdir, "exit3", "exit.json")
    assert proc.returncode == 3


def test_a_killed_job_takes_its_child_with_it(workdir):
    out = workdir / "sleep.json"
    proc = subprocess.Popen([sys.executable, "job.py", "sleep", str(out)], cwd=workdir, env=env())
    pid_file = Path(str(out) + ".pid")
    assert wait_for_file(pid_file, 300), "the served job should have started"
    child = int(pid_file.read_text())
    assert child != proc.pid
    os.kill(proc.pid, signal.SIGKILL)  # as a scheduler's kill, or a walltime
    proc.wait()
    assert gone(child, 10), "the child went on after its job process was killed"


def test_disabled_or_inside_slurm_runs_in_process(workdir):
    for extra in ({"SYNRET_JOB_SERVER": "0"}, {"SLURM_JOB_ID": "12345"}):
        proc, record = job(workdir, "plain", "inproc.json", extra_env=extra)
        assert proc.returncode == 0, proc.stderr
        assert record["served"] is None


def test_shutdown_stops_the_server(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    proc, record = job(tmp_path, "plain", "x.json")
    assert proc.returncode == 0 and record["served"] == "1"
    server = record["ppid"]
    assert run_in(tmp_path, "import synret.jobserver as j; print(j.shutdown())").strip() == "True"
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(server, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the server did not exit when told to")
    assert run_in(tmp_path, "import synret.jobserver as j; print(j.shutdown())").strip() == "False"
