"""The img2img source: a curated source's kept images through the tiny pipeline's image-to-image sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from synret.curate import nested_subset
from synret.img2img import check_strength, img2img_shard, load_img2img_pipeline, selected_images
from synret.shards import decode_image, encode_image, iter_images, write_shard
from synret.sources import effective_steps

CLASSNAMES = [f"shape{i}" for i in range(10)]
SAMPLING = {"batch_size": 3, "scheduler": "ddim", "steps": 4, "guidance_scale": 3.0, "height": 16, "width": 16,
            "save_size": 32, "image_format": "png", "seed": 7, "strength": 0.5, "prompt": "a photo of {a/an} {c}"}


@pytest.fixture(scope="module")
def curated(tmp_path_factory, shape_images) -> pd.DataFrame:
    """A parent's curated manifest over a shard of rendered 32 px images, every third one dropped."""
    images, labels = shape_images
    out = tmp_path_factory.mktemp("parent")
    keys = [f"r{i}-c{int(y)}" for i, y in enumerate(labels[:24])]
    write_shard(out / "00000.tar", [(k, encode_image(img, "png"), "png", {}) for k, img in zip(keys, images)])
    return pd.DataFrame({"key": keys, "label": labels[:24].astype(int), "shard": str(out / "00000.tar"),
                         "member": keys, "kept": [i % 3 != 2 for i in range(24)]})


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    return load_img2img_pipeline(pipeline_dir, "ddim")


def _shard(pipe, rows, cfg, path):
    img2img_shard(pipe, rows, CLASSNAMES, cfg, path, path.with_suffix(".parquet"), log=lambda m: None)
    return {key: data for key, _, data in iter_images(path)}, pq.read_table(path.with_suffix(".parquet")).to_pandas()


def test_it_transforms_the_first_images_of_the_parents_nested_order(curated):
    rows = selected_images(curated, 10, shard_size=4)
    first = nested_subset(curated, 10, seed=0)  # what the parent's seed-0 cell at scale 10 trains on
    assert list(rows["source_key"]) == list(first["key"]) and list(rows["label"]) == list(first["label"])
    assert list(rows["key"]) == [f"i{j:07d}" for j in range(10)] and list(rows["shard"]) == [0] * 4 + [1] * 4 + [2] * 2
    assert list(selected_images(curated, 10, 4, shard=2)["key"]) == ["i0000008", "i0000009"]
    assert len(selected_images(curated, 100, 40)) == curated["kept"].sum()  # fewer where the parent kept fewer


def test_a_shard_has_one_image_per_parent_image_with_its_label(pipe, curated, tmp_path):
    rows = selected_images(curated, 5, shard_size=5, shard=0)
    images, manifest = _shard(pipe, rows, SAMPLING, tmp_path / "s.tar")
    assert list(manifest["key"]) == list(rows["key"]) and set(images) == set(rows["key"])
    assert list(manifest["label"]) == list(rows["label"]) and list(manifest["source_key"]) == list(rows["source_key"])
    assert list(manifest["prompt"]) == [f"a photo of a {CLASSNAMES[y]}" for y in rows["label"]]
    assert list(manifest["seed"]) == [7 + j for j in range(5)] and (manifest["strength"] == 0.5).all()
    assert (manifest["shard"] == str(tmp_path / "s.tar")).all() and manifest["sha256"].str.len().eq(64).all()
    assert decode_image(images["i0000000"]).size == (32, 32)  # made at 16 px, saved at save_size


def test_the_same_bits_twice_and_whatever_the_batch(pipe, curated, tmp_path):
    rows = selected_images(curated, 4, shard_size=4)
    once, _ = _shard(pipe, rows, SAMPLING, tmp_path / "a.tar")
    again, _ = _shard(pipe, rows, SAMPLING, tmp_path / "b.tar")
    assert once == again
    alone, _ = _shard(pipe, rows, {**SAMPLING, "batch_size": 1}, tmp_path / "c.tar")
    for key in once:  # batched convolutions may round differently
        assert np.abs(np.asarray(decode_image(once[key]), int) - np.asarray(decode_image(alone[key]), int)).max() <= 2


def test_a_higher_strength_moves_further_from_the_input(pipe, curated, tmp_path):
    rows = selected_images(curated, 6, shard_size=6)
    parent = {key: data for key, _, data in iter_images(curated["shard"][0])}
    inputs = {row.key: np.asarray(decode_image(parent[row.source_key]).convert("RGB"), float)
              for row in rows.itertuples()}
    distance = {}
    for strength in (0.25, 1.0):
        out, _ = _shard(pipe, rows, {**SAMPLING, "steps": 8, "strength": strength}, tmp_path / f"{strength}.tar")
        distance[strength] = np.mean([np.abs(np.asarray(decode_image(out[k]), float) - inputs[k]).mean() for k in out])
    assert distance[0.25] < distance[1.0], distance
    assert effective_steps(8, 0.25) == 2 and effective_steps(8, 1.0) == 8 and effective_steps(4, 0.1) == 0


@pytest.mark.parametrize("strength, steps", [(0.0, 4), (1.5, 4), (0.1, 4)])
def test_a_strength_out_of_range_names_the_key(pipe, curated, tmp_path, strength, steps):
    with pytest.raises(ValueError, match=r"config key 'source_settings.probe.strength'"):
        check_strength(strength, steps, "source_settings.probe")
    rows = selected_images(curated, 2, shard_size=2)
    with pytest.raises(ValueError, match=r"source_settings.img2img.strength"):
        img2img_shard(pipe, rows, CLASSNAMES, {**SAMPLING, "strength": strength, "steps": steps}, tmp_path / "x.tar",
                      tmp_path / "x.parquet", log=lambda m: None)


def test_an_empty_shard_is_written(pipe, curated, tmp_path):
    images, manifest = _shard(pipe, selected_images(curated, 2, 2, shard=3), SAMPLING, tmp_path / "e.tar")
    assert images == {} and len(manifest) == 0 and "source_key" in manifest.columns
