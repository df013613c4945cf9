"""Compute accounting from the jobs' benchmark records and logs (synret.compute)."""

import copy
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from synret.compute import cell_table, data_plan, data_table, job_record, log_of, log_usage, plot_compute, read_benchmark
from synret.config import deep_merge
from synret.workflow import GPU_MARK

ROOT = Path(__file__).resolve().parents[1]
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def record(path: Path, wall: float, cpu: float, log: str | None = None) -> Path:
    """A benchmark record as Snakemake writes it, and (optionally) the job's log beside it under logs/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:01\t28.1\t32.9\t17.2\t18.5\t0.00\t0.03\t1.27\t{cpu}\n")
    if log is not None:
        lp = log_of(path)
        lp.parent.mkdir(parents=True, exist_ok=True)
        lp.write_text(log)
    return path


def test_log_of_mirrors_the_benchmark_path():
    assert log_of("results/benchmarks/cells/t/s/n50/seed0.tsv") == Path("logs/cells/t/s/n50/seed0.log")
    assert log_of("/w/results/benchmarks/curate/t/s.tsv") == Path("/w/logs/curate/t/s.log")


def test_a_jobs_cpu_and_gpu_seconds_come_from_its_log(tmp_path):
    bench = tmp_path / "results" / "benchmarks" / "synthetic" / "t" / "shard-00000.tsv"
    record(bench, 10.0, 0.2, log="[ 0.1s] 2 CPU thread(s)\n[ 9.9s] done: 7.5 CPU s, peak RSS 700 MiB"
                                 f"{GPU_MARK}2 x NVIDIA H200\n")
    assert read_benchmark(bench) == {"wall_s": 10.0, "cpu_s": 0.2, "max_rss_mb": 28.1}
    assert log_usage(log_of(bench)) == (7.5, 2)
    rec = job_record(bench)
    assert rec["cpu_s"] == 7.5 and rec["gpu_s"] == 20.0  # the job server's child did the work, on 2 GPUs
    other = record(tmp_path / "results" / "benchmarks" / "x.tsv", 3.0, 1.5)  # no log: the record's own CPU time
    assert job_record(other)["cpu_s"] == 1.5 and job_record(other)["gpu_s"] == 0.0
    (tmp_path / "bad.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="not a Snakemake benchmark record"):
        read_benchmark(tmp_path / "bad.tsv")


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A finished run's records: a generator and a retrieved source for one task, three cells."""
    monkeypatch.chdir(tmp_path)
    b = Path("results/benchmarks")
    done = "[ 1.0s] done: {} CPU s, peak RSS 1 MiB\n"
    def jobs(*paths):
        return [{"benchmark": str(p)} for p in paths]

    plan = {"t": {
        "synthetic": {"kind": "synthetic", "stages": {
            "generation": jobs(*(record(b / f"synthetic/t/shard-0000{i}.tsv", 50.0, 0, done.format(100)) for i in (0, 1))),
            "curation": jobs(record(b / "curate/t/synthetic.tsv", 5.0, 0, done.format(4)))}},
        "retrieved": {"kind": "retrieved", "stages": {
            "retrieval": jobs(record(b / "retrieval/t/knn.tsv", 2.0, 0, done.format(2))),
            "download": jobs(record(b / "retrieval/t/fetch.tsv", 20.0, 0, done.format(6))),
            "curation": jobs(record(b / "curate/t/retrieved.tsv", 5.0, 0, done.format(2)))}},
        "real": {"kind": "real", "stages": {}},
    }}
    kept = {("t", "synthetic"): 102, ("t", "retrieved"): 50, ("t", "real"): 10}
    cells = []
    for source, size, mix in (("synthetic", "n10", {"synthetic": 10}), ("retrieved", "n10", {"retrieved": 10}),
                              ("mixed-50", "n10", {"synthetic": 5, "retrieved": 5}), ("real", "kall", {"real": 10})):
        name = f"t/{source}/{size}/seed0"
        record(b / "cells" / f"{name}.tsv", 30.0, 0, done.format(25))
        Path("results/cells", name).mkdir(parents=True)
        pq.write_table(pa.table({"source": [s for s, n in mix.items() for _ in range(n)]}),
                       Path("results/cells", name, "train_manifest.parquet"))
        cells.append({"task": "t", "source": source, "scale": 10, "size": size, "seed": 0, "top1": 0.5})
    return plan, kept, pd.DataFrame(cells)


def test_data_and_cell_tables(run):
    plan, kept, cells = run
    data = data_table(plan, kept)
    gen = data[(data["source"] == "synthetic") & (data["stage"] == "generation")].iloc[0]
    assert gen["jobs"] == 2 and gen["wall_s"] == 100.0 and gen["cpu_s"] == 200.0
    assert set(data[data["source"] == "retrieved"]["stage"]) == {"retrieval", "download", "curation"}
    assert "real" not in set(data["source"])  # the task's own images: no data work
    costs = cell_table(cells, data, lambda c: f"{c.task}/{c.source}/{c.size}/seed{c.seed}").set_index("source")
    # synthetic: (200 + 4) CPU s over 102 kept images = 2 s an image; retrieved: 10 / 50 = 0.2
    assert costs.loc["synthetic", "data_cpu_s"] == pytest.approx(20.0)
    assert costs.loc["retrieved", "data_cpu_s"] == pytest.approx(2.0)
    assert costs.loc["mixed-50", "data_cpu_s"] == pytest.approx(5 * 2.0 + 5 * 0.2)  # each image at its source's rate
    assert costs.loc["real", "data_cpu_s"] == 0.0
    assert costs.loc["synthetic", "total_cpu_s"] == pytest.approx(45.0)  # + the cell's own 25
    assert (costs["train_wall_s"] == 30.0).all() and (costs["train_images"] == 10).all()


def test_a_missing_record_is_named(run):
    plan, kept, _ = run
    Path("results/benchmarks/retrieval/t/fetch.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="retrieval/t/fetch.tsv.*'download'.*'retrieved'"):
        data_table(plan, kept)


def test_compute_plot(run, tmp_path):
    plan, kept, cells = run
    costs = cell_table(cells, data_table(plan, kept), lambda c: f"{c.task}/{c.source}/{c.size}/seed{c.seed}")
    plot_compute(costs, ["t"], tmp_path / "c.png", {"synthetic": {"color": "#ff7f0e", "label": "synthetic"}},
                 zeroshot={"t": 0.4})
    assert (tmp_path / "c.png").stat().st_size > 5000


def test_data_plan_names_the_records_the_rules_write():
    config = deep_merge(yaml.safe_load((ROOT / "config.yaml").read_text()),
                        yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text()))
    full = data_plan(config, ["shapes"], pool_parts=2)["shapes"]
    plan = {name: {"kind": e["kind"], "stages": {stage: [j["benchmark"] for j in jobs] for stage, jobs in e["stages"].items()}}
            for name, e in full.items()}
    assert full["synthetic"]["stages"]["generation"][0]["rule"] == "synthesize_shard"
    assert full["synthetic"]["stages"]["generation"][0]["wildcards"] == {"task": "shapes", "shard": "00000", "generator": "synthetic"}
    assert plan["synthetic"]["stages"]["generation"] == ["results/benchmarks/synthetic/shapes/shard-00000.tsv"]
    assert plan["synthetic_early"]["stages"]["generation"] == ["results/benchmarks/synthetic_early/shapes/shard-00000.tsv"]
    assert plan["retrieved"]["stages"]["retrieval"] == [
        "results/benchmarks/retrieval/shapes/knn.tsv", "results/benchmarks/retrieval/shapes/substring-00000.tsv",
        "results/benchmarks/retrieval/shapes/substring-00001.tsv", "results/benchmarks/retrieval/shapes/candidates.tsv"]
    assert plan["random"]["stages"] == {"retrieval": ["results/benchmarks/random/shapes/sample.tsv"],
                                        "download": ["results/benchmarks/random/shapes/fetch.tsv"],
                                        "curation": ["results/benchmarks/curate/shapes/random.tsv"]}
    assert plan["real"] == {"kind": "real", "stages": {}}
    assert "mixed" not in plan  # no curated set of its own
    no_knn = copy.deepcopy(config)
    no_knn["retrieval"]["knn"]["enabled"] = False
    assert [j["rule"] for j in data_plan(no_knn, ["shapes"], 2)["shapes"]["retrieved"]["stages"]["retrieval"]] == [
        "substring_scan", "substring_scan", "retrieval_candidates"]


def test_paper_estimate(tmp_path):
    """The paper's grid from the cost model: every task and source, GPU hours for generation and training."""
    from synret.compute import main

    main([str(ROOT / "config.yaml"), str(ROOT / "configs" / "paper.yaml"), "--out", str(tmp_path), "--pool-parts", "4"])
    data = pd.read_csv(tmp_path / "compute_estimate_data.csv")
    cells = pd.read_csv(tmp_path / "compute_estimate_cells.csv")
    assert data["estimated"].all() and cells["estimated"].all()
    paper = deep_merge(yaml.safe_load((ROOT / "config.yaml").read_text()),
                       yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text()))
    assert set(data["task"]) == set(paper["tasks"])
    gen = data[data["stage"] == "generation"]
    assert (gen["gpu_h"] > 0).all() and (gen["gpu_h"] == gen["wall_h"]).all()
    assert (data[data["stage"] == "download"]["gpu_h"] == 0).all()
    assert (cells["gpu_h"] > 0).all()
