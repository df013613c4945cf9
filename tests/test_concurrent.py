"""Concurrent use: a second run in a working directory where one is executing jobs is refused with a
message naming the first, which finishes unharmed; download jobs of different tasks running at once
write the same files as when they run one after another."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from smoke_support import SMOKE, SNAKEMAKE, free_port

pytestmark = pytest.mark.slow


def command(workdir: Path, *args: str) -> list[str]:
    return SNAKEMAKE + ["--directory", str(workdir), "--configfile", str(SMOKE), str(workdir / "port.yaml"), *args]


def test_a_second_run_is_refused_and_the_first_is_unharmed(tmp_path):
    (tmp_path / "port.yaml").write_text(yaml.safe_dump({"world": {"base_url": f"http://127.0.0.1:{free_port()}"}}))
    target = "results/world/generator"  # a job of a minute or so on the smoke config
    first = subprocess.Popen(command(tmp_path, "--cores", "1", target), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "logs" / "world" / "generator.log"
    deadline = time.time() + 300
    while time.time() < deadline and not log.exists():
        time.sleep(0.2)
    assert log.exists(), "the first run should be training the generator by now"
    # the same command again: Snakemake's own lock refuses it ...
    second = subprocess.run(command(tmp_path, "--cores", "1", target), capture_output=True, text=True)
    assert second.returncode != 0 and "Directory cannot be locked" in second.stdout + second.stderr
    # ... and after --unlock (which a user may run, believing the lock stale) the workflow's own lock does
    subprocess.run(command(tmp_path, "--unlock"), capture_output=True, text=True, check=True)
    third = subprocess.run(command(tmp_path, "--cores", "1", target), capture_output=True, text=True)
    out = third.stdout + third.stderr
    assert third.returncode != 0
    assert re.search(rf"another run of this workflow is executing jobs in {re.escape(str(tmp_path.resolve()))}: "
                     rf"pid {first.pid}, started ", out), out[-2000:]
    assert "Traceback (most recent call last)" not in out
    # a dry run is not held back (it changes nothing)
    assert subprocess.run(command(tmp_path, "-n", "--nolock", target), capture_output=True).returncode == 0
    output, _ = first.communicate(timeout=900)
    assert first.returncode == 0, output[-3000:]
    assert (tmp_path / target / "model_index.json").is_file()
    # and once it is over, the directory is free again (the lock died with its process)
    again = subprocess.run(command(tmp_path, "--cores", "1", target), capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_downloads_of_two_tasks_at_once_match_the_sequential_run(smoke_run, tmp_path):
    reference, _ = smoke_run
    workdir = tmp_path / "parallel"
    workdir.mkdir()
    (workdir / "port.yaml").write_text((reference / "port.yaml").read_text())  # the same pool URLs
    targets = [f"results/curated/{task}/{source}/manifest.parquet"
               for task in ("shapes", "colored_shapes") for source in ("retrieved", "random")]
    proc = subprocess.run(command(workdir, "--cores", "8", *targets), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the four download jobs overlapped: some started before any of them finished
    log = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))[-1].read_text()
    events = re.findall(r"^(?:local)?rule (fetch_retrieved):|^Finished jobid: \d+ \(Rule: (fetch_retrieved)\)", log, re.M)
    started_before_first_finish = 0
    for start, finish in events:
        if finish:
            break
        started_before_first_finish += bool(start)
    assert started_before_first_finish >= 2, "the download jobs ran one at a time: no concurrency was tested"

    def digest(root: Path, rel: str) -> str:
        return hashlib.sha256((root / rel).read_bytes()).hexdigest()

    for rel in targets + [f"results/random/{task}/download_manifest.parquet" for task in ("shapes", "colored_shapes")]:
        assert digest(workdir, rel) == digest(reference, rel), rel
