"""The data-quality panel's measures, its sample picks and figures (synret.quality)."""

import copy
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from synret.quality import (
    class_vendi,
    data_quality,
    frechet_distance,
    pick_samples,
    plot_quality,
    plot_samples,
    quality_rows,
    sample_classes,
    samples_table,
    truth_fidelity,
    vendi_score,
    within_class_similarity,
    world_truth,
)
from synret.config import world_truth_of

ROOT = Path(__file__).resolve().parents[1]


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_within_class_similarity_alike_and_orthogonal():
    same = unit(np.ones((4, 3)))
    eye = unit(np.eye(3))
    emb = np.concatenate([same, eye])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    assert within_class_similarity(same, np.zeros(4, int)) == pytest.approx(1.0, abs=1e-6)
    assert within_class_similarity(eye, np.zeros(3, int)) == pytest.approx(0.0, abs=1e-6)
    assert within_class_similarity(emb, labels) == pytest.approx(0.5, abs=1e-6)  # mean over the two classes
    assert within_class_similarity(eye[:1], np.zeros(1, int)) is None  # no class with two images


def test_vendi_counts_distinct_images():
    assert vendi_score(unit(np.ones((5, 4)))) == pytest.approx(1.0, abs=1e-6)
    assert vendi_score(unit(np.eye(4))) == pytest.approx(4.0, abs=1e-6)
    two = unit(np.array([[1, 0], [1, 0], [0, 1], [0, 1]]))
    assert vendi_score(two) == pytest.approx(2.0, abs=1e-6)
    # the per-class score caps the images a class counts, so a larger set is not more diverse by size alone
    emb = unit(np.eye(10))
    assert class_vendi(emb, np.zeros(10, int), per_class=3) == pytest.approx(3.0, abs=1e-6)
    assert class_vendi(emb, np.zeros(10, int), per_class=20) == pytest.approx(10.0, abs=1e-6)


def test_frechet_distance_is_zero_on_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([3.0, 0, 0, 0, 0])
    assert frechet_distance(a, shifted) == pytest.approx(9.0, rel=1e-6)  # same covariance: the mean term
    assert frechet_distance(a, a * 2) > 1.0  # a wider spread is further away
    assert frechet_distance(a[:1], a) is None
    few = rng.normal(size=(10, 64))  # fewer images than dimensions: a singular covariance still gives a number
    assert np.isfinite(frechet_distance(few, rng.normal(size=(50, 64))))


def test_truth_fidelity_by_kind():
    rows = pd.DataFrame({"origin": ["u1", "u2", "u3", "u4"], "classname": ["red circle"] * 4})
    truth = {"u1": "red circle", "u2": "blue circle", "u3": "red circle"}
    assert truth_fidelity(rows, truth, "retrieved") == pytest.approx(2 / 3)  # u4 unknown: not counted
    assert truth_fidelity(rows, truth, "synthetic") is None  # a generated image has no ground truth
    assert truth_fidelity(rows, truth, "real") == 1.0
    assert truth_fidelity(rows, None, "retrieved") is None


def test_world_truth_reads_the_pools_true_columns(tmp_path):
    pq.write_table(pa.table({"URL": ["a", "b"], "true_color": ["red", "blue"], "true_shape": ["star", "circle"],
                             "true_pattern": ["plain", "striped"]}), tmp_path / "part-00000.parquet")
    pq.write_table(pa.table({"URL": ["c"], "true_color": ["green"], "true_shape": ["square"], "true_pattern": ["dotted"]}),
                   tmp_path / "part-00001.parquet")
    parts = sorted(map(str, tmp_path.glob("*.parquet")))
    assert world_truth(parts, ["color", "shape"], "URL") == {"a": "red star", "b": "blue circle", "c": "green square"}
    assert world_truth(parts, ["shape"], "URL")["c"] == "square"


def test_world_truth_of_knows_the_worlds_datasets_only():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert world_truth_of(config, "shapes") == {"factors": ["shape"]}
    assert world_truth_of(config, "colored_shapes") == {"factors": ["color", "shape"]}
    other = copy.deepcopy(config)
    other["task_settings"]["shapes"]["dataset"] = {"format": "imagefolder", "root": "/data/my_shapes"}
    assert world_truth_of(other, "shapes") is None
    assert world_truth_of({**config, "world": None}, "shapes") is None


def png(color, size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def curated(tmp_path):
    """A curated manifest whose images are files: class 0 red, class 1 blue; some dropped."""
    colors = {0: (250, 0, 0), 1: (0, 0, 250)}
    rows = []
    for i in range(12):
        label = i % 2
        path = tmp_path / f"img{i}.png"
        shade = tuple(max(0, c - 10 * i) for c in colors[label])
        path.write_bytes(png(shade))
        reason = None if i < 8 else ["clip_score", "near_duplicate_of_eval", "download_failed", "clip_score"][i - 8]
        rows.append({"key": f"k{i}", "label": label, "classname": ["red", "blue"][label], "source": "s",
                     "origin": f"u{i}", "text": f"caption {i}", "shard": None,
                     "member": None if reason == "download_failed" else str(path), "clip_score": 0.1 * i,
                     "kept": reason is None, "drop_reason": reason})
    return pd.DataFrame(rows)


def mean_color(items):
    """A stand-in CLIP image tower for tests: each image's mean colour, unit length."""
    out = []
    for x in items:
        im = Image.open(io.BytesIO(x) if isinstance(x, bytes) else x).convert("RGB")
        out.append(np.asarray(im, np.float32).reshape(-1, 3).mean(0) + 1.0)
    return unit(np.stack(out))


def test_data_quality_record(curated, tmp_path):
    train = curated[curated["kept"]][["member", "label"]].rename(columns={"member": "path"})
    test = train.copy()
    zeroshot = unit(np.array([[1, 0, 0], [0, 0, 1]]))
    summary = {"candidates": 12, "dropped": {"clip_score": 2, "near_duplicate_of_eval": 1, "download_failed": 1},
               "planted_copies_removed": 1, "planted_copies_kept": 0}
    q = data_quality(curated, summary, "retrieved", mean_color, train, test, 2, per_class=3, zeroshot=zeroshot,
                     truth={f"u{i}": ["red", "blue"][i % 2] if i != 0 else "blue" for i in range(12)})
    assert q["kept"] == 8 and q["classes_with_images"] == 2 and q["classes"] == 2
    assert q["label_fidelity_zeroshot"] == 1.0  # red images score red, blue ones blue
    assert q["label_fidelity_truth"] == pytest.approx(7 / 8)  # u0 is truly blue
    assert q["frechet_to_test"] == pytest.approx(0.0, abs=1e-6)  # the same images as the test set
    assert 0.9 < q["within_class_similarity"] <= 1.0  # shades of one colour
    assert q["dropped"]["clip_score"] == 2 and q["leakage_removed"] == 1
    assert q["clip_score_kept"]["n"] == 8 and q["clip_score_kept"]["q50"] == pytest.approx(0.35)


def test_samples_keep_and_drop_with_reasons(curated):
    picked = pick_samples(curated, [0, 1], kept_per_class=2, dropped_per_class=2)
    assert (picked.groupby("label")["kept"].sum() == 2).all()
    dropped = picked[~picked["kept"]]
    assert "download_failed" not in set(dropped["drop_reason"])  # no image to show
    assert set(dropped[dropped["label"] == 1]["drop_reason"]) == {"clip_score", "near_duplicate_of_eval"}  # one of each
    assert list(dropped[dropped["label"] == 0]["drop_reason"]) == ["clip_score"]  # the only one with an image
    table = samples_table(picked)
    assert table.column_names == ["key", "label", "classname", "text", "clip_score", "kept", "drop_reason", "image"]
    assert Image.open(io.BytesIO(table.column("image")[0].as_py())).size == (8, 8)
    assert sample_classes(40, 4, seed=0) == sample_classes(40, 4, seed=0) and len(set(sample_classes(40, 4))) == 4


def nonblank(path) -> bool:
    pixels = np.asarray(Image.open(path).convert("L"))
    return (pixels < 200).mean() > 0.01


def test_figures(curated, tmp_path):
    records = {("t", "a"): {"kept": 8, "label_fidelity_zeroshot": 0.5, "label_fidelity_truth": None,
                            "within_class_similarity": 0.9, "within_class_similarity_real": 0.7,
                            "vendi_per_class": 1.5, "frechet_to_test": 0.2, "dropped": {"clip_score": 3},
                            "clip_score_kept": {"q50": 0.3}},
               ("t", "b"): {"kept": 5, "label_fidelity_zeroshot": 0.8, "label_fidelity_truth": 0.9,
                            "within_class_similarity": 0.5, "vendi_per_class": 2.5, "frechet_to_test": 0.1}}
    summary = pd.DataFrame({"task": ["t", "t", "t"], "source": ["a", "a", "b"], "scale": [50, 100, 50],
                            "top1": [0.2, 0.25, 0.4]})
    table = quality_rows(records, summary)
    assert list(table["source"]) == ["a", "b"]
    assert table.loc[0, "top1"] == 0.25 and table.loc[0, "scale"] == 100  # its largest scale
    assert table.loc[0, "dropped_clip_score"] == 3 and table.loc[0, "clip_score_kept_median"] == 0.3
    plot_quality(table, tmp_path / "q.png", {"a": {"color": "#ff0000"}})
    assert nonblank(tmp_path / "q.png")
    samples = samples_table(pick_samples(curated, [0, 1], 2, 1))
    test = curated[curated["kept"]][["member", "label"]].rename(columns={"member": "path"})
    plot_samples({"classnames": ["red", "blue"]}, {"s": samples.to_pandas()}, test, [0, 1], {"s": "source s"},
                 tmp_path / "grid.png")
    assert nonblank(tmp_path / "grid.png")
