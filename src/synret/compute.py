"""Compute accounting: what each source's data and each cell's training cost, from the jobs' own records.

Every job that does real work writes a Snakemake benchmark record (``results/benchmarks/<job>.tsv``:
wall seconds ``s``, ``cpu_time``, peak memory) and a log (``logs/<job>.log``) whose last line says
whether it ran on a GPU (``synret.workflow.gpu_usage``). Here they are added up:

- per (task, source), the data: generation (a generator's shards), retrieval (kNN query, caption
  scan, candidate list, or a random source's pool sample), download, curation;
- per cell, training and evaluation;
- per cell, the total: the cell's own job plus its share of its source's data, the source's cost per
  kept image times the images the cell trains on (a mix: each part at its own source's rate). Cells of
  the same source share one curated set, so this is what a point would cost if it were the only one.

The work that serves every source alike (the demo world, the task's splits, the zero-shot cell) is
listed apart and in no source's total. For a config that has not run (the paper's grid), the same
tables come from the resource cost model (``synret.resources``), marked as estimated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from .workflow import GPU_MARK

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported where a table is made: the Snakefile imports this module at every start

DATA_STAGES = ("generation", "retrieval", "download", "curation")


def read_benchmark(path: str | Path) -> dict:
    """A Snakemake benchmark record: wall seconds, CPU seconds, peak resident memory (MB). Where a job ran
    more than once (``benchmark: repeat``), the mean."""
    import pandas as pd

    t = pd.read_csv(path, sep="\t")
    if not len(t) or "s" not in t:
        raise ValueError(f"{path}: not a Snakemake benchmark record (no 's' column)")
    return {"wall_s": float(t["s"].mean()), "cpu_s": float(t["cpu_time"].mean()) if "cpu_time" in t else None,
            "max_rss_mb": float(t["max_rss"].mean()) if "max_rss" in t else None}


def log_of(benchmark: str | Path) -> Path:
    """The log a job's benchmark record belongs to: ``results/benchmarks/X.tsv`` -> ``logs/X.log``."""
    p = Path(benchmark)
    parts = p.parts
    i = parts.index("benchmarks")
    return Path(*parts[: max(i - 1, 0)], "logs", *parts[i + 1 :]).with_suffix(".log") if i > 0 else p.with_suffix(".log")


def log_usage(log: str | Path) -> tuple[float | None, int]:
    """(CPU seconds, GPUs) from the job's last ``done:`` line (``synret.workflow.run_job``): the CPU time of
    the process that did the work and its children, also where a job ran in the fork server, whose
    benchmark record measured only the process that handed the job over. (None, 0) without such a line."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return None, 0
    for line in reversed(lines):
        if "] done: " in line:
            done = line.split("] done: ", 1)[1]
            cpu = re.match(r"([0-9.]+) CPU s", done)
            gpus = int(done.split(GPU_MARK, 1)[1].split(" x ", 1)[0]) if GPU_MARK in done else 0
            return (float(cpu.group(1)) if cpu else None), gpus
    return None, 0


def job_record(path: str | Path) -> dict:
    """A benchmark record with the CPU seconds and GPUs its log reports (GPU-seconds: wall seconds times
    GPUs); the record's own ``cpu_time`` where the log has none."""
    rec = read_benchmark(path)
    cpu, gpus = log_usage(log_of(path))
    if cpu is not None:
        rec["cpu_s"] = cpu
    rec["gpu_s"] = rec["wall_s"] * gpus
    return rec


def _sum(records: Sequence[dict]) -> dict:
    out = {"jobs": len(records)}
    for key in ("wall_s", "cpu_s", "gpu_s"):
        values = [r[key] for r in records if r.get(key) is not None]
        out[key] = float(sum(values)) if values else 0.0
    return out


def data_table(plan: Mapping[str, Mapping[str, dict]], kept: Mapping[tuple[str, str], int]) -> pd.DataFrame:
    """One row per (task, source, stage): jobs, wall / CPU / GPU seconds summed over the stage's records.
    ``plan``: task -> source -> {"kind", "stages": {stage: [benchmark paths]}}; a missing record is an
    error naming it (the jobs ran, so Snakemake wrote it). ``kept``: the curated images of each source."""
    import pandas as pd

    rows = []
    for task, sources in plan.items():
        for name, entry in sources.items():
            for stage in DATA_STAGES:
                paths = [job["benchmark"] for job in entry["stages"].get(stage, [])]
                if not paths:
                    continue
                missing = [p for p in paths if not Path(p).is_file()]
                if missing:
                    raise FileNotFoundError(f"benchmark record {missing[0]} is missing ({len(missing)} of stage "
                                            f"{stage!r} of source {name!r}, task {task!r}): rerun that job")
                rows.append({"task": task, "source": name, "kind": entry["kind"], "stage": stage,
                             **_sum([job_record(p) for p in paths]), "kept": kept.get((task, name))})
    return pd.DataFrame(rows, columns=["task", "source", "kind", "stage", "jobs", "wall_s", "cpu_s", "gpu_s", "kept"])


def per_image_cost(data: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """(task, source) -> seconds of data work per kept image (wall, CPU, GPU)."""
    out = {}
    for (task, name), group in data.groupby(["task", "source"], sort=False):
        kept = group["kept"].iloc[0]
        out[(task, name)] = {k: (float(group[k].sum()) / kept if kept else float("nan")) for k in ("wall_s", "cpu_s", "gpu_s")}
    return out


def cell_table(cells: pd.DataFrame, data: pd.DataFrame, cell_dir) -> pd.DataFrame:
    """One row per cell of ``cells`` (all.csv's task, source, scale, size, seed, top1): the cell's own job
    and its share of the data it trained on, each image at its source's per-image cost (a mix's images each
    at their own source's; the task's own images cost no data work here). ``cell_dir(row)``: the folder
    names of the cell under results/cells (``task/source/size/seed<seed>``): its benchmark record is
    ``results/benchmarks/cells/<that>.tsv`` and ``results/cells/<that>/train_manifest.parquet`` lists the
    images it trained on."""
    import pandas as pd

    import pyarrow.parquet as pq

    rate = per_image_cost(data)
    rows = []
    for cell in cells.itertuples(index=False):
        name = cell_dir(cell)
        rec = job_record(Path("results/benchmarks/cells") / f"{name}.tsv")
        used = pq.read_table(Path("results/cells") / name / "train_manifest.parquet", columns=["source"]).column("source")
        counts = pd.Series(used.to_pylist()).value_counts()
        share = {k: 0.0 for k in ("wall_s", "cpu_s", "gpu_s")}
        for source_name, count in counts.items():
            per = rate.get((cell.task, source_name))
            for k in share:
                share[k] += (per[k] * count) if per is not None else 0.0
        rows.append({
            "task": cell.task, "source": cell.source, "scale": cell.scale, "seed": cell.seed, "top1": cell.top1,
            "train_images": int(counts.sum()),
            "train_wall_s": rec["wall_s"], "train_cpu_s": rec["cpu_s"], "train_gpu_s": rec["gpu_s"],
            "data_wall_s": share["wall_s"], "data_cpu_s": share["cpu_s"], "data_gpu_s": share["gpu_s"],
            "total_wall_s": rec["wall_s"] + share["wall_s"],
            "total_cpu_s": (rec["cpu_s"] or 0.0) + share["cpu_s"],
            "total_gpu_s": rec["gpu_s"] + share["gpu_s"],
        })
    return pd.DataFrame(rows)


def plot_compute(cells: pd.DataFrame, tasks: Sequence[str], path: str | Path, styles: Mapping[str, dict],
                 measure: str = "total_cpu_s", zeroshot: Mapping[str, float] | None = None) -> None:
    """Accuracy against the compute behind each point (mean over seeds), one panel per task, one line per
    source: sources compared at equal cost as well as at equal count."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    label = {"total_cpu_s": "CPU seconds", "total_wall_s": "wall seconds", "total_gpu_s": "GPU seconds"}[measure]
    for ax, task in zip(axes[0], tasks):
        mine = cells[cells["task"] == task]
        points = mine.groupby(["source", "scale"], sort=True)[[measure, "top1"]].mean().reset_index()
        for name, group in points.groupby("source", sort=False):
            style = styles.get(name, {})
            group = group.sort_values(measure)
            ax.plot(group[measure], group["top1"], marker=style.get("marker", "o"), color=style.get("color"),
                    label=style.get("label", name))
        if zeroshot and task in zeroshot:
            ax.axhline(zeroshot[task], color="grey", linestyle="--", linewidth=1, label="zero-shot")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(task)
        ax.set_xlabel(f"{label} per point (data share + training)")
        ax.set_ylabel("top-1 accuracy (test)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


GPU_RULES = ("synthesize_shard", "img2img_shard", "curate", "finetune", "zeroshot", "generator_prompts_llm")


def _job(rule: str, benchmark: str, **wildcards) -> dict:
    return {"rule": rule, "wildcards": wildcards, "benchmark": f"results/benchmarks/{benchmark}.tsv"}


def data_plan(config: dict, tasks: Sequence[str], pool_parts: int) -> dict:
    """task -> curated source -> {"kind", "stages": {stage: [jobs]}}: the jobs whose work made each source's
    images, each as its rule, wildcards and benchmark record (``results/benchmarks/<log path>.tsv``)."""
    from .config import stage_settings
    from .sources import curated_sources_of, img2img_shard_ids, synthetic_shard_ids

    plan: dict = {}
    for task in tasks:
        plan[task] = {}
        for src in curated_sources_of(config):
            stages: dict[str, list[dict]] = {}
            if src.kind in ("synthetic", "img2img"):
                rule, ids = (("synthesize_shard", synthetic_shard_ids(config, task)) if src.kind == "synthetic" else
                             ("img2img_shard", img2img_shard_ids(src, config, task)))
                key = "generator" if src.kind == "synthetic" else "source"
                stages["generation"] = [_job(rule, f"{src.name}/{task}/shard-{i}", task=task, shard=i, **{key: src.name})
                                        for i in ids]
            elif src.kind == "retrieved":
                retrieval = stage_settings(config, "retrieval", task)
                stages["retrieval"] = (
                    ([_job("knn_query", f"retrieval/{task}/knn", task=task)] if retrieval["knn"]["enabled"] else [])
                    + ([_job("substring_scan", f"retrieval/{task}/substring-{i:05d}", task=task, part=f"{i:05d}")
                        for i in range(pool_parts)] if retrieval["substring"]["enabled"] else [])
                    + [_job("retrieval_candidates", f"retrieval/{task}/candidates", task=task)])
                stages["download"] = [_job("fetch_retrieved", f"retrieval/{task}/fetch", task=task, fetched="retrieval")]
            elif src.kind == "random":
                stages["retrieval"] = [_job("random_sample", f"{src.name}/{task}/sample", task=task, sampled=src.name)]
                stages["download"] = [_job("fetch_retrieved", f"{src.name}/{task}/fetch", task=task, fetched=src.name)]
            if src.curation == "clip":
                stages["curation"] = [_job("curate", f"curate/{task}/{src.name}", task=task, source=src.name)]
            plan[task][src.name] = {"kind": src.kind, "stages": stages}
    return plan


def estimated_compute(config: dict, pool_parts: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For a config that has not run: the data and cell tables from the resource cost model, in hours, every
    row marked ``estimated``: the work seconds ``synret.resources`` sizes each job's walltime request from
    (its per-unit rates, with their margin, but not the minimum request or the rounding up to minutes).
    Jobs the model has no rate for (candidate lists, pool samples) count 0; a curation job is sized for
    the task's synthetic image count."""
    import pandas as pd

    from .resources import ESTIMATORS, JobInputs
    from .sources import grid

    def hours(rule: str, wildcards: dict) -> float:
        return ESTIMATORS[rule](config, wildcards, JobInputs())[1] / 3600 if rule in ESTIMATORS else 0.0

    rows = []
    for task, sources in data_plan(config, config["tasks"], pool_parts).items():
        for name, entry in sources.items():
            for stage, jobs in entry["stages"].items():
                h = sum(hours(j["rule"], j["wildcards"]) for j in jobs)
                gpu = sum(hours(j["rule"], j["wildcards"]) for j in jobs if j["rule"] in GPU_RULES)
                rows.append({"task": task, "source": name, "kind": entry["kind"], "stage": stage, "jobs": len(jobs),
                             "wall_h": h, "gpu_h": gpu, "estimated": True})
    cells = []
    for cell in grid(config):
        rule = "zeroshot" if not cell.size else "finetune"
        h = hours(rule, {"task": cell.task, "source": cell.source, "size": cell.size, "seed": str(cell.seed)})
        cells.append({"task": cell.task, "source": cell.source, "size": cell.size, "seed": cell.seed,
                      "wall_h": h, "gpu_h": h, "estimated": True})
    return pd.DataFrame(rows), pd.DataFrame(cells)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m synret.compute CONFIG [OVERLAY ...] --out DIR``: the estimated compute of a config's grid
    (configs/*.yaml are overlays over config.yaml, as Snakemake merges them)."""
    import argparse
    import glob

    import yaml

    from .config import deep_merge

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("configs", nargs="+", help="config.yaml, then overlays")
    parser.add_argument("--out", required=True, help="folder for compute_estimate_data.csv and compute_estimate_cells.csv")
    parser.add_argument("--pool-parts", type=int, default=None,
                        help="metadata parts of the pool (default: the files pool.metadata matches)")
    args = parser.parse_args(argv)
    config: dict = {}
    for path in args.configs:
        config = deep_merge(config, yaml.safe_load(Path(path).read_text()) or {})
    parts = args.pool_parts if args.pool_parts is not None else len(glob.glob(config["pool"]["metadata"]))
    data, cells = estimated_compute(config, parts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data.round(2).to_csv(out / "compute_estimate_data.csv", index=False)
    cells.round(3).to_csv(out / "compute_estimate_cells.csv", index=False)
    per_source = data.groupby(["source", "stage"])[["wall_h", "gpu_h"]].sum().round(1)
    print(per_source.to_string())
    print(f"cells: {len(cells)}, {cells['gpu_h'].sum():.1f} GPU-hours (estimated)")


if __name__ == "__main__":
    main()
