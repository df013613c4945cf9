"""Cross-check against the real CLIP_benchmark (``clip_benchmark`` 1.6.2, LAION-AI/CLIP_benchmark).

A tiny CLIP, built as the tests' demo models are (open_clip's own model-config mechanism, saved in its
hub layout and loaded as ``local-dir:``), and a small labelled set of rendered demo images exported in
CLIP_benchmark's webdataset layout. ``clip_benchmark eval`` (in its own venv: it needs numpy<2,
pycocoevalcap and scikit-learn; made by .ci/clip_benchmark_env.sh from envs/clip-benchmark.yaml) and
synret's own path (the ``clip_benchmark`` task format, then a zero-shot cell) evaluate the same files:
the class embeddings, top-1, top-5 and mean per-class recall must agree exactly. Then
``clip_benchmark build`` reads synret's clip-benchmark JSON of that cell into its CSV.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from synret import clip_benchmark as cb

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("SYNRET_CLIP_BENCHMARK_VENV", REPO / ".venvs" / "clip-benchmark"))
SHAPES = ["circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ring", "heart", "crescent"]
TEMPLATES = ["a photo of a {c}.", "a {c}.", "a drawing of a {c}."]

pytestmark = pytest.mark.skipif(
    not (VENV / "bin" / "clip_benchmark").exists(),
    reason=f"no clip-benchmark venv at {VENV} (create it with .ci/clip_benchmark_env.sh)",
)


def _clip_benchmark(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)  # its own packages only
    proc = subprocess.run([str(VENV / "bin" / "clip_benchmark"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained_clip_dir(tmp_path_factory) -> str:
    """A tiny CLIP trained briefly as the demo world trains its own (synret.world.clip_train), on rendered
    shapes with captions: it tells some shapes apart, so that the cross-check compares varied predictions."""
    from conftest import TINY_CLIP_CFG
    from synret.world.clip_train import ClipTrainConfig, train_clip
    from synret.world.render import Style, render, sample_attributes

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 30)
    images = render(sample_attributes(rng, len(labels), Style(), fixed={"shape": labels}), 32, rng, Style())
    texts = [f"a photo of a {SHAPES[y]}." for y in labels]
    out = tmp_path_factory.mktemp("trained_clip")
    cfg = ClipTrainConfig(model_cfg=TINY_CLIP_CFG, steps=80, batch_size=64, lr=2e-3, warmup=5, seed=0)
    train_clip(images, texts, cfg, str(out), log=lambda m: None)
    return str(out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shape_images):
    """The rendered shapes (10 classes x 12) in CLIP_benchmark's layout, two shards of a test split."""
    from synret.shards import encode_image

    images, labels = shape_images
    root = tmp_path_factory.mktemp("wds_shapes")
    cb.write_metadata(root, SHAPES, TEMPLATES)
    cb.write_split(root, "test", ((f"s{i:04d}", encode_image(img, "png"), int(y))
                                  for i, (img, y) in enumerate(zip(images, labels))), shard_size=64)
    return root


def test_zero_shot_accuracy_equals_clip_benchmarks_on_the_same_files(trained_clip_dir, exported, tmp_path):
    tiny_clip_dir = trained_clip_dir
    from synret.aggregate import clip_benchmark_results
    from synret.cells import run_cell
    from synret.clip import load_clip, zero_shot_weights
    from synret.tasks import build_task

    # synret: the clip_benchmark task format, then the task's zero-shot cell, in fp32 on the CPU
    dataset = {"format": "clip_benchmark", "root": str(exported), "splits": {"train": "train", "val": "test",
                                                                             "test": "test"}}
    task = build_task("shapes", {"dataset": dataset, "templates": None, "retrieval_templates": None,
                                 "filter_templates": None, "queries": {}}, tmp_path / "task")
    assert task["templates"] == TEMPLATES  # from the dataset's template file, as clip_benchmark takes them
    import pyarrow.parquet as pq

    test = pq.read_table(tmp_path / "task" / "test.parquet").to_pandas()
    clip_cfg = {"model": f"local-dir:{tiny_clip_dir}", "pretrained": None, "cache_dir": None, "precision": "fp32"}
    cell = {"task": "shapes", "source": "zeroshot", "scale": 0, "seed": 0}
    record, _, predictions = run_cell(task, cell, clip_cfg, {"test": test}, {"batch_size": 64, "splits": ["test"]},
                                      log=lambda m: None)
    ours = record["evaluation"]["test"]
    assert len(set(predictions.column("pred").to_pylist())) >= 3  # predictions that differ: a check with teeth

    # clip_benchmark: the same files, the model as open_clip loads a local checkpoint folder, no autocast
    start = time.time()
    _clip_benchmark("eval", "--dataset", "wds/shapes", "--dataset_root", str(exported), "--split", "test",
                    "--task", "zeroshot_classification", "--model", f"local-dir:{tiny_clip_dir}",
                    "--pretrained", str(Path(tiny_clip_dir) / "open_clip_model.safetensors"),
                    "--no_amp", "--num_workers", "0", "--batch_size", "64", "--save_clf", str(tmp_path / "clf.pt"),
                    "--output", str(tmp_path / "theirs.json"), "--quiet", cwd=tmp_path)
    seconds = time.time() - start
    theirs = json.loads((tmp_path / "theirs.json").read_text())
    assert theirs["task"] == "zeroshot_classification" and theirs["dataset"] == "wds/shapes"
    # the zero-shot classifier: the same class embeddings
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    classifier = torch.load(tmp_path / "clf.pt", map_location="cpu")  # (embed_dim, classes)
    torch.testing.assert_close(classifier.T, zero_shot_weights(clip, SHAPES, TEMPLATES), rtol=0, atol=1e-6)
    # and the accuracies, exactly
    assert theirs["metrics"]["acc1"] == ours["top1"]
    assert theirs["metrics"]["acc5"] == ours["top5"]
    assert theirs["metrics"]["mean_per_class_recall"] == pytest.approx(ours["mean_per_class"], abs=1e-12)
    print(f"\nclip_benchmark eval: {seconds:.1f} s; acc1 {theirs['metrics']['acc1']:.4f} = synret top1 "
          f"{ours['top1']:.4f}; mean per-class {ours['mean_per_class']:.4f}; acc5 {ours['top5']:.4f}")

    # clip_benchmark build reads synret's JSON of this cell next to its own
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(record))
    results = tmp_path / "results"
    clip_benchmark_results([metrics], results, {"model": f"local-dir:{tiny_clip_dir}", "pretrained": None})
    (results / "theirs.json").write_text((tmp_path / "theirs.json").read_text())
    _clip_benchmark("build", str(results), "--output", str(tmp_path / "benchmark.csv"), cwd=tmp_path)
    with open(tmp_path / "benchmark.csv") as f:
        rows = {row["dataset"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"shapes/test", "wds/shapes"}
    for column in ("acc1", "acc5", "mean_per_class_recall"):
        assert float(rows["shapes/test"][column]) == pytest.approx(float(rows["wds/shapes"][column]), abs=1e-12)
    assert rows["shapes/test"]["model_fullname"] == f"local-dir:{tiny_clip_dir} -/zeroshot"
    assert rows["shapes/test"]["task"] == "zeroshot_classification"
