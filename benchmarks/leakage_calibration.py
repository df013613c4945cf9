"""Calibrate the test-set dedup of a finished run: recall on planted copies, false positives on look-alikes.

    python benchmarks/leakage_calibration.py --workdir <run dir> [--config configs/paper.yaml ...]

For every task of the run, ``--originals`` test images each get six kinds of copy (exact, resized,
JPEG at quality 10-30, letterboxed, cropped 10-20% per side, colour-jittered; see synret.leakage),
stored the way each arm stores its images, among ``--lookalikes`` of the arm's own curated images;
the run's own dedup settings (descriptor, threshold, splits) decide. The figures go to
``benchmarks/results/leakage_calibration_<name>.json`` with the machine described.

On the demo world (config.yaml) this runs on CPU in a few minutes. For the paper config it needs
the run's results and the ISC weights file (curate.dedup.weights), and a GPU for speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="the finished run's directory (holds results/)")
    parser.add_argument("--config", nargs="*", default=[], help="overlays on config.yaml, as given to snakemake")
    parser.add_argument("--originals", type=int, default=100, help="test images copied per task")
    parser.add_argument("--lookalikes", type=int, default=1000, help="look-alike images per arm and task")
    parser.add_argument("--name", default="demo", help="results file suffix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/leakage_calibration_<name>.json)")
    args = parser.parse_args()

    from synret.config import deep_merge
    from synret.leakage import calibrate_run
    from synret.synthesize import pick_device
    from workflow_speed import machine

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for overlay in args.config:
        config = deep_merge(config, yaml.safe_load(Path(overlay).read_text()))
    start = time.time()
    tasks = [calibrate_run(config, task, args.originals, args.lookalikes, args.seed, root=args.workdir,
                           device=pick_device()) for task in config["tasks"]]
    out = {
        "benchmark": "leakage_calibration", "config": ["config.yaml", *args.config], "workdir": args.workdir,
        "originals_per_task": args.originals, "lookalikes_per_arm": args.lookalikes, "seed": args.seed,
        "seconds": round(time.time() - start, 1), "machine": machine(), "tasks": tasks,
        "target": ">= 0.99 of planted copies removed in both arms, at a reported false-positive rate",
    }
    for arm in config["sources"]:
        results = [t[arm] for t in tasks if arm in t]
        if results:
            copies = sum(r["copies"] for r in results)
            out[f"{arm}_recall"] = round(sum(r["recall"] * r["copies"] for r in results) / copies, 4)
            looks = sum(r["lookalikes"] for r in results)
            out[f"{arm}_false_positive_rate"] = round(
                sum((r["false_positive_rate"] or 0) * r["lookalikes"] for r in results) / max(looks, 1), 4)
    path = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"leakage_calibration_{args.name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("tasks", "machine")}, indent=2))
    for t in tasks:
        for arm in config["sources"]:
            if arm in t:
                r = t[arm]
                print(t["task"], arm, "recall", round(r["recall"], 3),
                      {k: round(v, 2) for k, v in r["recall_by_kind"].items()},
                      "FPR", r["false_positive_rate"], "threshold for 99%:", r["threshold_for_99_recall"],
                      "FPR there:", r["false_positive_rate_at_99_recall"])


if __name__ == "__main__":
    main()
