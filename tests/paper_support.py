"""configs/paper.yaml without its data: empty stand-ins at every local path it names, for dry runs
(tests/test_paper_dryrun.py, benchmarks/scheduling.py)."""

from __future__ import annotations

from pathlib import Path

from synret.preflight import preflight_spec

POOL_PARTS = 3


def stand_ins(workdir: Path, config: dict) -> None:
    """Empty files and folders at every local path the config names."""
    for task in config["tasks"]:
        Path(workdir, config["task_settings"][task]["dataset"]["root"]).mkdir(parents=True, exist_ok=True)
    metadata = Path(workdir, config["pool"]["metadata"])
    metadata.parent.mkdir(parents=True, exist_ok=True)
    for i in range(POOL_PARTS):
        (metadata.parent / f"part-{i:05d}.parquet").touch()
    Path(workdir, config["pool"]["knn_index"]).mkdir(parents=True, exist_ok=True)
    for entry in preflight_spec(config)["caption_files"]:  # the reference's caption files
        Path(workdir, entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        Path(workdir, entry["path"]).touch()
    weights = Path(workdir, config["curate"]["dedup"]["weights"])  # the ISC dedup descriptor's
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.touch()
