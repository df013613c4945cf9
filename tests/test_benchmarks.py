"""The benchmark scripts run: the GPU and kNN ones on toy sizes (--check), the leakage calibration on the smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIP_RETRIEVAL_VENV = Path(os.environ.get("SYNRET_CLIP_RETRIEVAL_VENV", REPO / ".venvs" / "clip-retrieval"))


@pytest.mark.slow
def test_gpu_benchmark_runs_its_check_mode(tmp_path):
    """The same code as on a GPU (the workflow's load_pipeline, the FLOP-counted training step), on toy
    architectures; a GPU run (without --check) also runs pytest -m gpu and reports against the targets."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--check", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["check"] is True and result["machine"]["cores"] >= 1
    (gen,) = result["generation"]
    assert gen["images_per_second"] > 0 and gen["steps"] == 2
    vit = result["vit_b16"]
    for label in ("bf16", "fp32"):
        assert vit[f"finetune_images_per_second_{label}"] > 0 and vit[f"eval_images_per_second_{label}"] > 0
        assert vit[f"finetune_gflop_per_image_{label}"] > 0
    assert set(result["targets"]) == {"generation_images_per_second_50_steps", "finetune_images_per_second_bf16"}


def test_gpu_benchmark_refuses_to_run_without_a_gpu_unless_checking():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_leakage_calibration_script_on_the_smoke_run(smoke_run, tmp_path):
    workdir, _ = smoke_run
    out = tmp_path / "leakage.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "leakage_calibration.py"), "--workdir", str(workdir),
         "--config", str(REPO / "configs" / "smoke.yaml"), str(workdir / "port.yaml"),
         "--originals", "4", "--lookalikes", "40", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [t["task"] for t in result["tasks"]] == ["shapes", "colored_shapes"]
    for arm in ("retrieved", "synthetic"):
        assert 0 <= result[f"{arm}_recall"] <= 1 and result[f"{arm}_false_positive_rate"] == 0
        assert all(t[arm]["recall_by_kind"]["exact"] == 1.0 for t in result["tasks"])


@pytest.mark.slow
def test_image_loading_benchmark_runs_on_a_few_images(tmp_path):
    """The script's shards, passes and JSON on a few images; its speeds are recorded, never asserted."""
    out = tmp_path / "image_loading.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "image_loading.py"), "--images", "12", "--rounds",
                           "1", "--batch-size", "4", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["formats"]) == {"jpg", "png"} and result["crop_size"] == [224, 224]
    for fmt in result["formats"].values():
        assert fmt["with_workers"]["num_workers"] == 1
        assert fmt["one_core"]["fast"]["images_per_cpu_second"] > 0
        assert fmt["difference"]["max_levels"] <= 2 and fmt["difference"]["images"] == 12


@pytest.mark.slow
@pytest.mark.skipif(not (CLIP_RETRIEVAL_VENV / "bin" / "python").exists(),
                    reason=f"no clip-retrieval venv (autofaiss) at {CLIP_RETRIEVAL_VENV}")
def test_knn_benchmark_runs_its_check_mode(tmp_path):
    """20,000 vectors and a small OPQ-IVF-HNSW-PQ factory, through autofaiss' choices and the workflow's
    KnnIndex, memory-mapped (about a minute on 2 cores)."""
    out = tmp_path / "knn.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "knn.py"), "--check", "--out", str(out),
                           "--autofaiss-python", str(CLIP_RETRIEVAL_VENV / "bin" / "python")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["check"] is True and result["machine"]["cores"] >= 1
    build, found, summary = result["build"], result["mmapped"], result["summary"]
    assert build["factory"] == result["settings"]["factory"] and build["autofaiss_pick"].startswith("OPQ")
    assert build["stored_nprobe"] == found["stored_nprobe"] == summary["stored_nprobe"] >= 1
    assert found["invlists"] == "OnDiskInvertedLists"  # memory-mapped, not read into memory
    for name in ("text", "image"):
        assert 0 <= found["stored"][name]["recall@500"] <= 1 and found["stored"][name]["qps"] > 0
    nprobes = [row["nprobe"] for row in found["sweep"]]
    assert nprobes == sorted(nprobes) and nprobes[-1] == found["nlist"]
    assert found["every_list"]["nprobe"] == found["nlist"] and 0 <= found["every_list"]["text"]["recall@500"] <= 1
    assert result["exact_flat_baseline"]["qps_batched"] > 0 and summary["index_file_mib"] > 0
    assert summary["rss_mib_mmapped_after_search"] > 0 and "stored_meets_target" in summary
