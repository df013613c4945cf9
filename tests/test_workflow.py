"""The whole workflow on configs/smoke.yaml: one real end-to-end run, then what reruns after config edits.

These tests drive the Snakemake CLI in a temporary working directory, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from smoke_support import REPO, REPRODUCIBLE, SMOKE, SNAKEMAKE, free_port, snakemake
from synret import sources

pytestmark = pytest.mark.slow


def planned(workdir: Path, overlays: list[dict] = ()) -> list[tuple[str, dict]]:
    """The jobs a dry run would execute: (rule, wildcards) pairs."""
    proc = snakemake(workdir, "-n", "results/tables/all.csv", overlays=overlays)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        jobs.append((head.group(1), wildcards))
    return jobs


# smoke_run (one local run of the smoke grid, shared with the SLURM test) is in conftest.py


def smoke_config() -> dict:
    from synret.config import deep_merge

    return deep_merge(yaml.safe_load(open(REPO / "config.yaml")), yaml.safe_load(open(SMOKE)))


def test_results_table(smoke_run):
    workdir, _ = smoke_run
    cfg = smoke_config()
    table = pd.read_csv(workdir / "results" / "tables" / "all.csv")
    for column in ("task", "source", "scale", "seed", "top1", "mean_per_class", "n_train", "wall_seconds"):
        assert column in table.columns
    grid = {(c.task, c.source, c.size, c.seed) for c in sources.grid(cfg)}
    found = set(zip(table["task"], table["source"], table["size"].fillna(""), table["seed"]))
    # a task with exactly k training images a class (colored_shapes: 1) has its real kall cell as its k-cell:
    # the same point, reported once
    assert len(table) == len(found) and found <= grid and {c[2] for c in grid - found} <= {"kall"}
    assert table["top1"].between(0, 1).all() and table["mean_per_class"].between(0, 1).all()
    zero = table[table["source"] == "zeroshot"]
    assert (zero["scale"] == 0).all() and (zero["n_train"] == 0).all() and len(zero) == len(cfg["tasks"])
    cells = table[table["source"] != "zeroshot"]
    assert set(cells["source"]) == set(sources.cell_sources(cfg))
    assert set(cells.loc[cells["size"].str.startswith("n"), "scale"]) == set(cfg["scales"])
    assert (cells["n_train"] > 0).all() and (cells["n_train"] <= cells["scale"]).all()
    # every source trained on its own images: a second generator, the real source k per class, a mix by shares
    real = cells[cells["source"] == "real"].set_index(["task", "size"])
    for task in cfg["tasks"]:
        n_classes = len(json.loads((workdir / f"results/tasks/{task}/task.json").read_text())["classnames"])
        assert real.loc[(task, "k1"), "n_train"] == n_classes
        everything = real.loc[(task, "kall" if (task, "kall") in real.index else "k1"), "n_train"]
        assert everything == len(pq.read_table(workdir / f"results/tasks/{task}/train.parquet"))
        train = pq.read_table(workdir / f"results/cells/{task}/mixed-50/n60/seed0/train_manifest.parquet").to_pandas()
        assert Counter(train["source"]) == {"synthetic": 30, "retrieved": 30}
        early = pq.read_table(workdir / f"results/cells/{task}/synthetic_early/n30/seed0/train_manifest.parquet")
        assert set(early.column("source").to_pylist()) == {"synthetic_early"}
        random = pq.read_table(workdir / f"results/curated/{task}/random/manifest.parquet").to_pandas()
        have = random[random["drop_reason"] != "download_failed"]
        assert (have["label"] == have["zeroshot_label"]).all() and len(have) > 0
        # img2img: retrieved's first kept images (its seed-0 order), regenerated, then curated as its own source
        img2img = pq.read_table(workdir / f"results/curated/{task}/img2img/manifest.parquet").to_pandas()
        retrieved = pq.read_table(workdir / f"results/curated/{task}/retrieved/manifest.parquet").to_pandas()
        assert 0 < len(img2img) <= cfg["source_settings"]["img2img"]["images"]
        assert set(img2img["origin"]) <= set(retrieved.loc[retrieved["kept"], "key"])
        trained = pq.read_table(workdir / f"results/cells/{task}/img2img/n30/seed0/train_manifest.parquet")
        assert set(trained.column("source").to_pylist()) == {"img2img"}
    assert (cells["short"] == (cells["n_train"] < cells["scale"])).all()
    assert (table["wall_seconds"] > 0).all()
    assert (table["top1_lo"] <= table["top1"]).all() and (table["top1"] <= table["top1_hi"]).all()


def test_summary_and_paired_tables(smoke_run):
    workdir, _ = smoke_run
    cfg = smoke_config()
    table = pd.read_csv(workdir / "results" / "tables" / "all.csv")
    summary = pd.read_csv(workdir / "results" / "tables" / "summary.csv")
    main = summary[summary["source"].isin(["synthetic", "retrieved"])]
    assert len(main) == len(cfg["tasks"]) * 2 * len(cfg["scales"]) and (main["seeds"] == len(cfg["seeds"])).all()
    assert len(summary) == table.groupby(["task", "source", "scale"]).ngroups
    assert (summary["top1_lo"] <= summary["top1"]).all() and (summary["top1"] <= summary["top1_hi"]).all()
    paired = pd.read_csv(workdir / "results" / "tables" / "paired.csv", dtype={"seed": str})
    pairs = set(zip(paired["a"], paired["b"]))
    assert ("retrieved", "synthetic") in pairs and ("synthetic", "zeroshot") in pairs
    # a per-seed difference is the difference of the two cells' top-1 on the same test images
    row = paired[(paired["a"] == "retrieved") & (paired["b"] == "synthetic") & (paired["seed"] == "0")].iloc[0]
    cell = lambda source: table[(table["task"] == row["task"]) & (table["source"] == source)  # noqa: E731
                                & (table["scale"] == row["scale"]) & (table["seed"] == 0)]["top1"].item()
    assert row["diff_top1"] == pytest.approx(cell("retrieved") - cell("synthetic"), abs=1.5e-4)  # all rounded
    assert 0 <= row["mcnemar_p"] <= 1


def test_sources_table(smoke_run):
    """Per task and source: what the stages found and kept, and how often the kept images' labels are
    what the world CLIP sees in them."""
    workdir, _ = smoke_run
    cfg = smoke_config()
    curated = pd.read_csv(workdir / "results" / "tables" / "sources.csv")
    assert len(curated) == len(cfg["tasks"]) * 6  # every source with a curated set (a mix has none of its own)
    assert (curated["kept"] <= curated["candidates"]).all() and (curated["kept"] > 0).all()
    scored = curated[curated["source"] != "real"]  # the task's own images are kept as they are, unscored
    for column in ("label_fidelity", "label_fidelity_kept"):
        assert scored[column].between(0, 1).all()
    real = curated[curated["source"] == "real"]
    assert (real["kept"] == real["candidates"]).all()
    zeroshot = pd.read_csv(workdir / "results" / "tables" / "all.csv").query("source == 'zeroshot'")
    merged = curated.merge(zeroshot[["task", "top1"]], on="task")
    assert (merged["zeroshot_test_top1"] == merged["top1"]).all()


def test_every_cell_keeps_its_per_image_predictions(smoke_run):
    workdir, _ = smoke_run
    cfg = smoke_config()
    for task in cfg["tasks"]:
        test = pq.read_table(workdir / f"results/tasks/{task}/test.parquet").to_pandas()
        cells = [workdir / "results/cells" / cell.id for cell in sources.grid(cfg) if cell.task == task]
        for cell in cells:
            pred = pq.read_table(cell / "predictions.parquet").to_pandas()
            metrics = json.loads((cell / "metrics.json").read_text())
            assert set(pred["split"]) == set(cfg["evaluate"]["splits"]) | set(cfg["task_settings"][task].get("eval_sets") or {})
            on_test = pred[pred["split"] == "test"]
            assert sorted(on_test["key"]) == sorted(test["key"])
            assert (on_test["pred"] == on_test["label"]).mean() == pytest.approx(metrics["top1"])
            top5 = [label in ranked[:5] for label, ranked in zip(on_test["label"], on_test["ranked"])]
            assert sum(top5) / len(top5) == pytest.approx(metrics["top5"])


def test_plots_are_png(smoke_run):
    workdir, _ = smoke_run
    plots = sorted((workdir / "results" / "plots").glob("*.png"))
    tasks = smoke_config()["tasks"]
    assert {p.stem for p in plots} == set(tasks) | {f"{t}_mix" for t in tasks} | {"summary", "paired", "quality", "compute"}
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(plot) as im:
            im.verify()


def test_every_cell_is_evaluated_on_its_tasks_shifted_set(smoke_run):
    """The world's shifted sets, written in CLIP_benchmark's layout, read through the clip_benchmark format
    as each task's eval set 'shifted': a column of every cell, the summary's, and a figure per task."""
    workdir, _ = smoke_run
    cfg = smoke_config()
    table = pd.read_csv(workdir / "results" / "tables" / "all.csv")
    assert table["top1_shifted"].between(0, 1).all() and table["mean_per_class_shifted"].between(0, 1).all()
    for task in cfg["tasks"]:
        world = workdir / "results" / "world" / "shifted" / task
        assert (world / "test" / "0.tar").is_file() and (world / "zeroshot_classification_templates.txt").is_file()
        n = cfg["world"]["shifted"]["per_class"][task] * len((world / "classnames.txt").read_text().split("\n")[:-1])
        assert (table.loc[table["task"] == task, "n_shifted"] == n).all()
        assert (workdir / "results" / "plots" / "eval_sets" / task / "shifted.png").read_bytes()[:4] == b"\x89PNG"
        metrics = json.loads((workdir / "results" / "cells" / task / "zeroshot" / "metrics.json").read_text())
        assert metrics["eval_sets"]["shifted"]["n"] == n
    summary = pd.read_csv(workdir / "results" / "tables" / "summary.csv")
    assert summary["top1_shifted"].between(0, 1).all()


def test_every_training_set_has_a_per_image_manifest(smoke_run):
    workdir, _ = smoke_run
    cfg = smoke_config()
    for task in cfg["tasks"]:
        for source in [s.name for s in sources.curated_sources_of(cfg)]:
            curated = pq.read_table(workdir / f"results/curated/{task}/{source}/manifest.parquet").to_pandas()
            for column in ("key", "label", "origin", "sha256", "clip_score", "dedup_similarity", "kept", "drop_reason"):
                assert column in curated.columns
            assert curated["key"].is_unique
            assert (curated["kept"] == curated["drop_reason"].isna()).all()
            for cell in sources.grid(cfg):
                if cell.task == task and cell.source == source and cell.seed == 0:
                    train = pq.read_table(workdir / "results/cells" / cell.id / "train_manifest.parquet")
                    assert set(train.column("key").to_pylist()) <= set(curated.loc[curated["kept"], "key"])


def test_planted_test_copies_are_removed_from_the_retrieved_arm(smoke_run):
    workdir, _ = smoke_run
    meta = pd.concat(pq.read_table(p).to_pandas() for p in (workdir / "results/world/pool/metadata").glob("*.parquet"))
    planted = meta[meta["planted_from"].notna()].set_index("URL")["planted_from"]
    for task in smoke_config()["tasks"]:
        curated = pq.read_table(workdir / f"results/curated/{task}/retrieved/manifest.parquet").to_pandas()
        mine = curated[curated["origin"].map(planted).fillna("").str.startswith(f"{task}/")]
        downloaded = mine[mine["drop_reason"] != "download_failed"]
        assert len(downloaded) > 0, "retrieval should find some planted copies of the task's test images"
        assert (downloaded["drop_reason"] == "near_duplicate_of_eval").all()
        summary = json.loads((workdir / f"results/curated/{task}/retrieved/summary.json").read_text())
        assert summary["dropped"]["near_duplicate_of_eval"] >= len(downloaded)
        # the pool's planted_from column reached the manifest, and the tables count the same copies
        assert (curated.loc[mine.index, "planted_from"] == mine["origin"].map(planted)).all()
        examined = downloaded[downloaded["drop_reason"] != "duplicate_image"]
        assert summary["planted_copies"] == len(examined) and summary["planted_copy_recall"] == 1.0
        sources = pd.read_csv(workdir / "results/tables/sources.csv").set_index(["task", "source"])
        row = sources.loc[(task, "retrieved")]
        assert (row["planted_copies"], row["planted_copy_recall"], row["planted_copies_kept"]) == (len(examined), 1.0, 0)


def test_downloads_went_through_img2dataset(smoke_run):
    workdir, _ = smoke_run
    for task in smoke_config()["tasks"]:
        stats = list((workdir / f"results/retrieval/{task}/download/shards").glob("*_stats.json"))
        assert stats, "img2dataset's per-shard stats are kept"
        counts = json.loads((workdir / f"results/retrieval/{task}/download.json").read_text())
        assert counts["status"].get("success", 0) > 0




def test_same_bits_whatever_the_cores(smoke_run, tmp_path):
    """A second run at --cores 8 on this machine (jobs share the CPUs, each on fewer threads than the
    --cores 2 run gave them), each job in a fresh process instead of the fork server, reproduces every
    model, shard, manifest, prediction and table exactly."""
    import hashlib

    workdir, _ = smoke_run
    other = tmp_path / "other"
    other.mkdir()
    (other / "port.yaml").write_text((workdir / "port.yaml").read_text())  # the same pool URLs
    proc = snakemake(other, "--cores", "8", "results/tables/all.csv", env={"SYNRET_JOB_SERVER": "0"})
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    served = [p for p in (workdir / "logs").rglob("*.log") if "served by the job server" in p.read_text()]
    assert len(served) > 10, "the first run's short torch jobs ran in the fork server"
    assert not [p for p in (other / "logs").rglob("*.log") if "served by the job server" in p.read_text()]

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for pattern in REPRODUCIBLE for p in sorted(root.glob(pattern))}

    first, second = digests(workdir), digests(other)
    assert len(first) > 20 and set(first) == set(second)
    differ = sorted(name for name in first if first[name] != second[name])
    assert not differ, f"differ between --cores 2 and --cores 8: {differ}"
    # all.csv too, but for the cells' wall time
    tables = [pd.read_csv(root / "results/tables/all.csv").drop(columns="wall_seconds") for root in (workdir, other)]
    pd.testing.assert_frame_equal(*tables)


def test_second_run_does_nothing(smoke_run):
    workdir, _ = smoke_run
    proc = snakemake(workdir, "--cores", "2", "results/tables/all.csv")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_adding_a_scale_adds_only_its_cells(smoke_run):
    workdir, _ = smoke_run
    cfg = smoke_config()
    jobs = planned(workdir, [{"scales": cfg["scales"] + [20]}])
    rules = Counter(rule for rule, _ in jobs)
    new = set(sources.grid({**cfg, "scales": cfg["scales"] + [20]})) - set(sources.grid(cfg))
    assert rules == Counter({"finetune": len(new), "aggregate": 1})
    assert {wc["size"] for rule, wc in jobs if rule == "finetune"} == {"n20"}
    # every source on the grid's scales gains them; the mix and the real source keep their own
    assert {wc["source"] for rule, wc in jobs if rule == "finetune"} == {"synthetic", "synthetic_early", "retrieved",
                                                                          "random", "img2img"}


def test_one_tasks_learning_rate_reruns_only_that_tasks_cells(smoke_run):
    workdir, _ = smoke_run
    cfg = smoke_config()
    task = cfg["tasks"][0]
    lr = smoke_config()["finetune"]["lr"] * 3
    jobs = planned(workdir, [{"task_settings": {task: {"finetune": {"lr": lr}}}}])
    rules = Counter(rule for rule, _ in jobs)
    cells = [c for c in sources.grid(cfg) if c.task == task and c.source != "zeroshot"]
    assert rules == Counter({"finetune": len(cells), "aggregate": 1})
    assert {wc["task"] for rule, wc in jobs if rule == "finetune"} == {task}


def test_generator_steps_rerun_synthesis_not_retrieval(smoke_run):
    workdir, _ = smoke_run
    jobs = planned(workdir, [{"synthetic": {"steps": smoke_config()["synthetic"]["steps"] + 1}}])
    rules = set(rule for rule, _ in jobs)
    assert {"synthesize_shard", "img2img_shard", "curate", "finetune", "aggregate"} <= rules
    assert not rules & {"knn_query", "substring_scan", "retrieval_candidates", "fetch_retrieved", "zeroshot",
                        "world_generator", "generator_prompts"}
    # both generators and img2img sample with the synthetic block; the mix draws on the synthetic source
    assert {wc["source"] for rule, wc in jobs if rule in ("curate", "finetune")} == {"synthetic", "synthetic_early",
                                                                                     "img2img", "mixed-50"}


def test_retrieval_k_reruns_retrieval_not_synthesis(smoke_run):
    workdir, _ = smoke_run
    jobs = planned(workdir, [{"retrieval": {"knn": {"k": smoke_config()["retrieval"]["knn"]["k"] + 1}}}])
    rules = set(rule for rule, _ in jobs)
    assert {"knn_query", "retrieval_candidates", "fetch_retrieved", "curate", "finetune", "aggregate"} <= rules
    assert not rules & {"synthesize_shard", "substring_scan", "generator_prompts", "world_index", "zeroshot"}
    # img2img regenerates retrieved's images: it reruns with them
    assert {wc["source"] for rule, wc in jobs if rule in ("curate", "finetune")} == {"retrieved", "img2img", "mixed-50"}
    assert "img2img_shard" in rules


@pytest.mark.parametrize(
    "overlay, message",
    [
        ({"finetune": {"learning_rate": 1e-4}}, "config key 'finetune': unknown key(s) 'learning_rate'"),
        ({"finetune": {"lr": "fast"}}, "config key 'finetune.lr': 'fast' is not of type 'number'"),
        ({"tasks": []}, "config key 'tasks'"),
        ({"world": None, "clip": {"model": "local-dir:/no/such/clip"}}, "'/no/such/clip' does not exist"),
    ],
)
def test_config_errors_stop_before_any_job(tmp_path, overlay, message):
    (tmp_path / "port.yaml").write_text("{}")
    proc = snakemake(tmp_path, "--cores", "1", "results/tables/all.csv", overlays=[overlay])
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_killed_job_leaves_nothing_to_consume(tmp_path):
    (tmp_path / "port.yaml").write_text(yaml.safe_dump({"world": {"base_url": f"http://127.0.0.1:{free_port()}"}}))
    files = [str(SMOKE), str(tmp_path / "port.yaml")]
    target = "results/world/pool/summary.json"
    cmd = SNAKEMAKE + ["--directory", str(tmp_path), "--configfile", *files, "--cores", "2", target]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    images = tmp_path / "results" / "world" / "pool" / "images"
    deadline = time.time() + 120
    while time.time() < deadline and not images.exists():
        time.sleep(0.05)
    assert images.exists(), "the world job should have started writing"
    os.killpg(proc.pid, signal.SIGKILL)  # the run dies midway through the job, as on a walltime kill
    proc.wait()
    assert not (tmp_path / target).exists()
    # the next invocation redoes the job instead of consuming its half-written outputs
    dry = subprocess.run(SNAKEMAKE + ["--directory", str(tmp_path), "--configfile", *files, "-n", target],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "rule world_data:" in dry.stdout
