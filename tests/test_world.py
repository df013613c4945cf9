"""The demo world: rendering, captions, the LAION-style pool and the benchmark datasets, tiny CLIP training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from synret.clip import load_clip
from synret.world.build import DatasetSpec, build_world_data, image_relpath
from synret.world.captions import captions
from synret.world.clip_train import ClipTrainConfig, train_clip
from synret.world.render import COLORS, SHAPES, Style, render, sample_attributes, shape_mask


def test_every_shape_has_its_own_mask():
    grid = np.linspace(-1.2, 1.2, 64)
    u, v = np.meshgrid(grid, grid)
    masks = {name: shape_mask(name, u, v) for name in SHAPES}
    for name, mask in masks.items():
        assert 0.05 < mask.mean() < 0.6, name
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (masks[a] != masks[b]).mean() > 0.03, (a, b)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("blob", u, v)


def test_render_is_deterministic_and_draws_the_colour():
    style = Style(color_jitter=0.0, pixel_noise=0.0, backgrounds=("plain",))
    n = len(COLORS)
    fixed = {"shape": np.zeros(n, int), "color": np.arange(n), "pattern": np.zeros(n, int)}
    a = render(sample_attributes(np.random.default_rng(0), n, style, fixed=fixed), 32, np.random.default_rng(1), style)
    b = render(sample_attributes(np.random.default_rng(0), n, style, fixed=fixed), 32, np.random.default_rng(1), style)
    assert a.dtype == np.uint8 and a.shape == (n, 32, 32, 3)
    assert np.array_equal(a, b)
    for i, rgb in enumerate(COLORS.values()):  # a plain circle shows its colour exactly
        pixels = a[i].reshape(-1, 3)
        assert (np.abs(pixels.astype(int) - rgb).sum(axis=1) == 0).sum() > 50


def test_captions_are_noisy_but_mostly_on_topic():
    rng = np.random.default_rng(0)
    attrs = sample_attributes(rng, 4000, Style())
    texts = captions(attrs, rng, off_topic=0.1, wrong_color=0.08, upper=0.1)
    shapes = attrs.names("shape")
    mentions = np.mean([s in t.lower() for s, t in zip(shapes, texts)])
    assert 0.75 < mentions < 0.92  # off-topic captions and colour-only templates leave the shape out
    assert 0.05 < np.mean([t.isupper() for t in texts]) < 0.15
    assert len(set(texts)) > 1000


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    cfg = yaml.safe_load(open("config.yaml"))["world"]
    cfg["pool"].update(size=600, parts=3, near_duplicates=4)
    for d in cfg["datasets"].values():
        d["per_class"] = {"train": 1, "val": 1, "test": 2}
    root = tmp_path_factory.mktemp("world")
    summary = build_world_data(cfg, root / "pool", root / "datasets")
    return cfg, root, summary


def test_pool_is_stored_like_laion(small_world):
    cfg, root, summary = small_world
    parts = sorted((root / "pool" / "metadata").glob("part-*.parquet"))
    assert len(parts) == 3
    meta = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    assert {"SAMPLE_ID", "URL", "TEXT", "HEIGHT", "WIDTH", "LICENSE", "NSFW"} <= set(meta.columns)
    assert meta["SAMPLE_ID"].tolist() == list(range(len(meta)))  # contiguous ids across parts
    n_planted = 4 * len(cfg["datasets"])
    assert len(meta) == 600 + n_planted == summary["pool_images"]
    assert set(meta["NSFW"]) <= {"NSFW", "UNSURE", "UNLIKELY"}
    row = meta.iloc[17]
    assert row["URL"] == f"{cfg['base_url']}/{image_relpath(17)}"
    images = np.load(root / "pool" / "images.npy")
    assert images.shape == (len(meta), 32, 32, 3)
    assert np.array_equal(np.asarray(Image.open(root / "pool" / image_relpath(17))), images[17])


def test_planted_duplicates_copy_test_images(small_world):
    cfg, root, summary = small_world
    meta = pd.concat([pq.read_table(p).to_pandas() for p in sorted((root / "pool" / "metadata").glob("*.parquet"))])
    planted = meta[meta["planted_from"].notna()]
    assert len(planted) == summary["planted_near_duplicates"] == 4 * len(cfg["datasets"])
    images = np.load(root / "pool" / "images.npy")
    for _, row in planted.iterrows():
        dataset, rel = row["planted_from"].split("/", 1)
        original = np.asarray(Image.open(root / "datasets" / dataset / rel), dtype=np.float32)
        copy = images[row["SAMPLE_ID"]].astype(np.float32)
        assert np.corrcoef(original.ravel(), copy.ravel())[0, 1] > 0.95


def test_datasets_are_image_folders(small_world):
    cfg, root, _ = small_world
    spec = DatasetSpec.from_config("colored_shapes", cfg["datasets"]["colored_shapes"])
    names = (root / "datasets" / "colored_shapes" / "classnames.txt").read_text().split("\n")[:-1]
    assert names == spec.classnames() and len(names) == 40 and names[0] == "red circle"
    for split, n in (("train", 1), ("val", 1), ("test", 2)):
        files = list((root / "datasets" / "colored_shapes" / split).glob("*/*.png"))
        assert len(files) == 40 * n
    with pytest.raises(ValueError, match="unknown factor"):
        DatasetSpec.from_config("x", {"factors": ["size"], "per_class": {"train": 1, "val": 1, "test": 1}})


def test_tiny_clip_trains_and_reloads_through_open_clip(tmp_path, shape_images):
    images, labels = shape_images
    texts = [f"a {SHAPES[y]}" for y in labels]
    cfg = ClipTrainConfig(model_cfg={
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }, steps=30, batch_size=60, lr=2e-3, warmup=5, seed=0)
    stats = train_clip(images, texts, cfg, str(tmp_path / "clip"), log=lambda m: None)
    assert stats["steps"] == 30 and stats["final_loss"] < stats["initial_loss"]
    assert json.loads((tmp_path / "clip" / "open_clip_config.json").read_text())["model_cfg"] == cfg.model_cfg
    clip = load_clip(f"local-dir:{tmp_path / 'clip'}")  # the same call as hf-hub:... or local-dir: of ViT-B-16
    assert clip.image_size == 32
    assert clip.tokenizer(["a circle"]).shape == (1, 20)
