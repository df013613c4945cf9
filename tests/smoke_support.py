"""Running the workflow on configs/smoke.yaml from tests, as a user would: the Snakemake CLI in a
temporary working directory. Shared by the local end-to-end tests and the SLURM test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snakemake(workdir: Path, *args: str, overlays: list[dict] = (), timeout: int = 1200,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run snakemake on the smoke config (plus overlay dicts) in ``workdir`` (``env``: added variables)."""
    files = [str(SMOKE), str(workdir / "port.yaml")]
    for i, overlay in enumerate(overlays):
        path = workdir / f"overlay{i}.yaml"
        path.write_text(yaml.safe_dump(overlay))
        files.append(str(path))
    cmd = SNAKEMAKE + ["--directory", str(workdir), "--configfile", *files, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env} if env else None)


def local_smoke_run(workdir: Path) -> tuple[Path, float]:
    """The whole smoke grid on 2 local cores (the default target: the tables, and what the report shows), with
    the demo pool served on a free port."""
    (workdir / "port.yaml").write_text(yaml.safe_dump({"world": {"base_url": f"http://127.0.0.1:{free_port()}"}}))
    start = time.time()
    proc = snakemake(workdir, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return workdir, time.time() - start


REPRODUCIBLE = [  # what must be the same to the bit whatever --cores is and whatever shares the machine
    "results/world/clip/*.safetensors",
    "results/world/generator/*/*.safetensors",
    "results/synthetic/*/shard-*.tar",
    "results/synthetic/*/shard-*.parquet",
    "results/world/generator_early/*/*.safetensors",
    "results/synthetic_early/*/shard-*.tar",
    "results/img2img/*/shard-*.tar",
    "results/img2img/*/shard-*.parquet",
    "results/random/*/download_manifest.parquet",
    "results/curated/*/*/manifest.parquet",
    "results/cells/**/predictions.parquet",
    "results/cells/**/train_manifest.parquet",
    "results/tables/summary.csv",
    "results/tables/paired.csv",
    "results/tables/sources.csv",
    "results/tables/exchange.csv",
]


def wait_for_file(path: Path, timeout: float) -> bool:
    """Whether ``path`` appeared within ``timeout`` seconds (a job writes its pid there once started)."""
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    return path.exists()


def gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` ended within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
