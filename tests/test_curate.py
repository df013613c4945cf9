"""CLIP-score filtering, test-set dedup and nested subsets, with a real (tiny) open_clip model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synret.clip import load_clip
from synret.curate import (
    MANIFEST_COLUMNS, class_filter, copies_of, curate, nested_subset, pixel_descriptor,
)
from synret.shards import encode_image, write_shard
from synret.sources import SYNTHETIC
from synret.world.render import perturb

CFG = {
    "filter": {"top_fraction": 0.5, "min_score": None, "max_per_class": None},
    "dedup": {"descriptor": "pixels", "pixel_size": 16, "threshold": 0.97, "splits": ["test"]},
    "batch_size": 64,
}


def test_class_filter_top_fraction_threshold_and_cap():
    scores = pd.Series([0.1, 0.5, 0.3, 0.9, 0.7, 0.2], index=[10, 11, 12, 13, 14, 15])
    keep = class_filter(scores, 0.5, None, None)
    assert set(scores.index[keep]) == {11, 13, 14}
    keep = class_filter(scores, 1.0, 0.25, None)
    assert set(scores.index[keep]) == {11, 12, 13, 14}
    keep = class_filter(scores, 1.0, None, 2)
    assert set(scores.index[keep]) == {13, 14}


def test_nested_subsets_nest_and_depend_on_seed():
    manifest = pd.DataFrame({"key": [f"k{i:03d}" for i in range(100)], "kept": [i % 4 != 0 for i in range(100)]})
    small, large = nested_subset(manifest, 10, seed=0), nested_subset(manifest, 40, seed=0)
    assert set(small["key"]) <= set(large["key"]) and len(large) == 40
    assert large["kept"].all()
    assert list(nested_subset(manifest, 40, seed=0)["key"]) == list(large["key"])
    assert set(nested_subset(manifest, 10, seed=1)["key"]) != set(small["key"])
    # row order in the manifest does not matter, only the keys
    shuffled = manifest.sample(frac=1, random_state=3)
    assert list(nested_subset(shuffled, 10, seed=0)["key"]) == list(small["key"])
    assert len(nested_subset(manifest, 500, seed=0)) == 75


def test_pixel_descriptor_separates_copies_from_lookalikes(shape_images):
    images, labels = shape_images
    rng = np.random.default_rng(1)
    copies = perturb(images[:10], rng)
    desc = lambda arr: np.stack([pixel_descriptor(Image.fromarray(a), 16) for a in arr])  # noqa: E731
    originals, dupes = desc(images), desc(copies)
    assert (np.einsum("nd,nd->n", dupes, originals[:10]) > 0.97).all()
    same_class_other = originals[1:12] @ originals[0]  # other circles
    assert (same_class_other[1:] < 0.97).all()


@pytest.fixture()
def curation_inputs(tmp_path, shape_images):
    """A synthetic-style source: 6 classes x 8 images, plus a copy of an eval image and an exact repeat."""
    images, labels = shape_images
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    eval_paths = []
    for i in range(6):
        path = eval_dir / f"{i}.png"
        Image.fromarray(images[i * 12 + 11]).save(path)
        eval_paths.append(str(path))
    evals = pd.DataFrame({"key": [f"test/{i}" for i in range(6)], "label": range(6), "path": eval_paths})
    samples, manifest = [], []
    for c in range(6):
        for j in range(8):
            img = images[c * 12 + j]
            key = f"s{c}{j}"
            data = encode_image(img, "png")
            samples.append((key, data, "png", {}))
            manifest.append({"key": key, "label": c, "prompt": f"a shape {c}", "shard": str(tmp_path / "s.tar"), "sha256": None})
    copy = perturb(images[11:12], np.random.default_rng(2))[0]  # a re-encoded copy of eval image 0
    samples.append(("copy", encode_image(copy, "png"), "png", {}))
    manifest.append({"key": "copy", "label": 0, "prompt": "p", "shard": str(tmp_path / "s.tar"), "sha256": None})
    samples.append(("repeat", samples[0][1], "png", {}))  # the same bytes as s00, same class
    manifest.append({"key": "repeat", "label": 0, "prompt": "p", "shard": str(tmp_path / "s.tar"), "sha256": None})
    write_shard(tmp_path / "s.tar", samples)
    task = {"classnames": ["circle", "square", "triangle", "pentagon", "hexagon", "star"],
            "filter_templates": ["a photo of a {c}."]}
    return SYNTHETIC.candidates(pd.DataFrame(manifest)), task, evals


def test_curate_reasons_and_manifest(curation_inputs, tiny_clip_dir):
    rows, task, evals = curation_inputs
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    lines = []
    table, summary = curate(rows, task, clip, evals, CFG, log=lines.append)
    assert sum(line.startswith("describe: done, ") for line in lines) == 1, lines
    df = table.to_pandas()
    assert list(df.columns) == MANIFEST_COLUMNS
    assert len(df) == 50 and df["key"].is_unique
    by_key = df.set_index("key")
    assert by_key.loc["copy", "drop_reason"] == "near_duplicate_of_eval"
    assert by_key.loc["copy", "dedup_match"] == "test/0"
    assert by_key.loc["repeat", "drop_reason"] == "duplicate_image"
    assert by_key.loc["s00", "sha256"] == by_key.loc["repeat", "sha256"]
    # half of each class survives the CLIP-score cut, and the kept ones score higher than the dropped
    kept = df[df["kept"]]
    assert kept.groupby("label").size().tolist() == [4] * 6
    for label, group in df[df["kept"] | (df["drop_reason"] == "clip_score")].groupby("label"):
        assert group[group["kept"]]["clip_score"].min() >= group[~group["kept"]]["clip_score"].max()
    assert df["drop_reason"].isna().equals(df["kept"])
    assert summary["kept"] == 24
    assert summary["dropped"] == {"clip_score": 24, "duplicate_image": 1, "near_duplicate_of_eval": 1}
    # label fidelity: the task's zero-shot class of every image, and the share that agrees with its label
    from synret.clip import zero_shot_weights
    from synret.embed import embed_images
    from synret.shards import read_images

    data = read_images(df["shard"].iloc[0], df["member"])
    by_hand = (embed_images(clip, [data[m] for m in df["member"]]) @ zero_shot_weights(
        clip, task["classnames"], task["filter_templates"]).numpy().T).argmax(axis=1)
    assert df["zeroshot_label"].tolist() == by_hand.tolist()
    assert summary["label_fidelity"] == pytest.approx((by_hand == df["label"]).mean())
    assert summary["label_fidelity_kept"] == pytest.approx((by_hand[df["kept"]] == df.loc[df["kept"], "label"]).mean())


def test_known_planted_copies_are_counted(curation_inputs, tiny_clip_dir):
    """Where the pool names the evaluation image a row copies (pool.columns.planted_from), the summary
    says how many such copies reached the dedup, how many it removed and how many were kept."""
    rows, task, evals = curation_inputs
    rows = rows.copy()
    name = evals["path"].iloc[0].split("/")
    rows.loc[rows["key"] == "copy", "planted_from"] = "/".join(name[-2:])       # eval/0.png: removed
    rows.loc[rows["key"] == "s11", "planted_from"] = "/".join(name[-2:-1] + ["1.png"])  # not a pixel copy
    rows.loc[rows["key"] == "s21", "planted_from"] = "elsewhere/9.png"  # some other task's test image
    table, summary = curate(rows, task, load_clip(f"local-dir:{tiny_clip_dir}"), evals, CFG, log=lambda m: None)
    df = table.to_pandas().set_index("key")
    assert df.loc["copy", "planted_from"] == "eval/0.png" and df["planted_from"].notna().sum() == 3
    assert summary["planted_copies"] == 2 and summary["planted_copies_removed"] == 1
    assert summary["planted_copy_recall"] == 0.5
    assert summary["planted_copies_kept"] == int(df.loc["s11", "kept"])


def test_copies_of_matches_paths_and_path_suffixes():
    paths = pd.Series(["/data/shapes/test/circle/000.png", "results/d/colors/test/red/001.png"])
    planted = pd.Series(["shapes/test/circle/000.png", "test/red/001.png", "/data/shapes/test/circle/000.png",
                         "circle/000.png", "hapes/test/circle/000.png", "colors/test/red/000.png", None])
    assert copies_of(planted, paths).tolist() == [True, True, True, True, False, False, False]


def test_curate_with_clip_descriptor_runs(curation_inputs, tiny_clip_dir):
    rows, task, evals = curation_inputs
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    cfg = {**CFG, "dedup": {**CFG["dedup"], "descriptor": "clip", "threshold": 0.9999}}
    table, summary = curate(rows, task, clip, evals, cfg, log=lambda m: None)
    assert table.num_rows == 50
    assert -1 <= np.nanmin(table.column("dedup_similarity").to_numpy(zero_copy_only=False)) <= 1


@pytest.mark.parametrize("descriptor", ["pixels", "clip"])
def test_curation_in_loader_workers_gives_the_bits_of_the_job_process(curation_inputs, tiny_clip_dir, descriptor):
    """Candidates (bytes read from a shard) and evaluation images (files) decoded by two forked worker
    processes: the same embeddings, in the same order, and the same manifest and summary."""
    from synret.embed import embed_images
    from synret.shards import read_images

    rows, task, evals = curation_inputs
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    data = list(read_images(rows["shard"].iloc[0], rows["member"]).values())
    assert np.array_equal(embed_images(clip, data, batch_size=9), embed_images(clip, data, batch_size=9, num_workers=2))
    cfg = {**CFG, "dedup": {**CFG["dedup"], "descriptor": descriptor, "threshold": 0.97}}
    (first, first_summary), (second, second_summary) = (
        curate(rows, task, clip, evals, cfg, log=lambda m: None, num_workers=workers) for workers in (0, 2))
    pd.testing.assert_frame_equal(first.to_pandas(), second.to_pandas(), check_exact=True)
    assert first_summary == second_summary and first_summary["candidates"] == 50


@pytest.mark.parametrize("average", ["raw", "normalized"])
def test_clip_score_against_the_class_text_averaged_as_configured(curation_inputs, tiny_clip_dir, average):
    """The reference's filter averages its templates' raw text embeddings and normalises once;
    CLIP's zero-shot classifier averages unit ones. The CLIP score is the image's cosine with either."""
    import torch.nn.functional as F

    from synret.clip import encode_texts, zero_shot_weights
    from synret.embed import embed_images
    from synret.shards import read_images
    from synret.templates import fill_template

    rows, task, evals = curation_inputs
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    cfg = {**CFG, "filter": {**CFG["filter"], "template_average": average}}
    df = curate(rows, task, clip, evals, cfg, log=lambda m: None)[0].to_pandas()
    texts = []
    for name in task["classnames"]:
        emb = encode_texts(clip, [fill_template(t, name) for t in task["filter_templates"]], normalize=average != "raw")
        texts.append(F.normalize(emb.mean(dim=0), dim=-1))
    text = np.stack([t.numpy() for t in texts])
    np.testing.assert_allclose(text, zero_shot_weights(clip, task["classnames"], task["filter_templates"],
                                                       average=average).numpy(), atol=1e-6)
    have = df[df["shard"].notna()]
    images = read_images(have["shard"].iloc[0], have["member"])
    emb = embed_images(clip, [images[m] for m in have["member"]])
    np.testing.assert_allclose(have["clip_score"], np.einsum("nd,nd->n", emb, text[have["label"]]), atol=1e-5)


def test_filter_first_dedups_among_the_kept(curation_inputs, tiny_clip_dir):
    """The reference's order: the CLIP-score cut over all of a class's images, then the dedup among the
    kept; a copy of an evaluation image below the cut is dropped for its score, not as a copy."""
    rows, task, evals = curation_inputs
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    first, _ = curate(rows, task, clip, evals, CFG, log=lambda m: None)
    later, summary = curate(rows, task, clip, evals, {**CFG, "order": "filter_first"}, log=lambda m: None)
    a, b = first.to_pandas().set_index("key"), later.to_pandas().set_index("key")
    # class 0 holds the copy: its cut is taken over all its images, the copy among them
    zero = b[(b["label"] == 0) & (b["drop_reason"] != "duplicate_image")]
    f = CFG["filter"]
    passed = class_filter(zero["clip_score"], f["top_fraction"], f.get("min_score"), f.get("max_per_class"))
    assert b.loc["copy", "drop_reason"] == ("near_duplicate_of_eval" if passed["copy"] else "clip_score")
    assert b.loc[zero.index, "kept"].equals(passed & (zero.index != "copy"))
    # other classes are the same either way
    others = a["label"] != 0
    assert a.loc[others, "kept"].equals(b.loc[others, "kept"])
    assert summary["planted_copies"] == 0
    with pytest.raises(ValueError, match="'curate.order'"):
        curate(rows, task, clip, evals, {**CFG, "order": "whenever"}, log=lambda m: None)


def test_unlabelled_images_take_the_task_s_zero_shot_class(curation_inputs, tiny_clip_dir):
    """The random source's candidates carry label -1: curation gives each its zero-shot class, then
    filters and dedups them like any labelled source; a failed download stays unlabelled and dropped."""
    rows, task, evals = curation_inputs
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    labelled, _ = curate(rows, task, clip, evals, CFG, log=lambda m: None)
    unlabelled = rows.assign(label=-1)
    unlabelled.loc[len(unlabelled)] = {**unlabelled.iloc[0].to_dict(), "key": "failed", "status": "failed_to_download"}
    table, summary = curate(unlabelled, task, clip, evals, CFG, log=lambda m: None)
    df, ref = table.to_pandas().set_index("key"), labelled.to_pandas().set_index("key")
    assert (df.loc[ref.index, "label"] == ref["zeroshot_label"].astype(int)).all()
    assert (df.loc[ref.index, "zeroshot_label"] == df.loc[ref.index, "label"]).all()
    assert summary["label_fidelity"] == 1.0
    assert df.loc["failed", "label"] == -1 and df.loc["failed", "drop_reason"] == "download_failed"
    assert df.loc["copy", "drop_reason"] == "near_duplicate_of_eval"
    assert summary["kept"] > 0 and sum(summary["kept_per_class"]) == summary["kept"]
