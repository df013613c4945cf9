"""The synthetic arm: a real diffusers pipeline (tiny, trained for a few steps) generating a shard."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from synret.prompts import generator_prompts
from synret.shards import decode_image, iter_images
from synret.synthesize import generate_shard, load_pipeline

SAMPLING = {"batch_size": 3, "scheduler": "ddim", "steps": 2, "guidance_scale": 3.0, "height": 16, "width": 16,
            "save_size": 32, "image_format": "png", "seed": 7}


def test_generate_shard_writes_images_and_manifest(pipeline_dir, tmp_path):
    prompts = generator_prompts(["circle", "square"], {"images": 5, "templates": ["a {c}"], "seed": 0}, shard_size=5)
    pipe = load_pipeline(pipeline_dir, "ddim")
    lines = []
    stats = generate_shard(pipe, prompts, SAMPLING, tmp_path / "s.tar", tmp_path / "s.parquet", log=lines.append)
    assert stats["images"] == 5
    assert lines[-1].startswith("generate: done, 5 images in ")  # a short job: only the final progress line
    manifest = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert [m["key"] for m in manifest] == prompts.column("key").to_pylist()
    assert [m["label"] for m in manifest] == [0, 1, 0, 1, 0]
    assert all(m["shard"] == str(tmp_path / "s.tar") and len(m["sha256"]) == 64 for m in manifest)
    images = {key: data for key, _, data in iter_images(tmp_path / "s.tar")}
    assert set(images) == {m["key"] for m in manifest}
    assert decode_image(images["s0000000"]).size == (32, 32)  # generated at 16 px, saved at save_size
    with tarfile.open(tmp_path / "s.tar") as tar:
        meta = json.loads(tar.extractfile("s0000001.json").read())
    assert meta["prompt"] == "a square" and meta["seed"] == 7 + 1


def test_an_image_does_not_depend_on_its_batch(pipeline_dir, tmp_path):
    prompts = generator_prompts(["circle", "square"], {"images": 4, "templates": ["a {c}"], "seed": 0}, shard_size=4)
    pipe = load_pipeline(pipeline_dir, "ddim")
    shards = []
    for batch_size in (1, 4):
        path = tmp_path / f"b{batch_size}.tar"
        generate_shard(pipe, prompts, {**SAMPLING, "batch_size": batch_size}, path, tmp_path / "m.parquet",
                       log=lambda m: None)
        shards.append({k: np.asarray(decode_image(d), dtype=int) for k, _, d in iter_images(path)})
    for key in shards[0]:
        assert np.abs(shards[0][key] - shards[1][key]).max() <= 2  # batched convolutions may round differently


@pytest.mark.parametrize("scheduler", ["ddim", "dpm", "euler"])
def test_every_sampler_loads_from_the_pipeline_config(pipeline_dir, scheduler):
    pipe = load_pipeline(pipeline_dir, scheduler)
    out = pipe(prompt=["a circle"], num_inference_steps=3, guidance_scale=2.0, height=16, width=16,
               output_type="np").images
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()


def test_missing_pipeline_names_the_path(tmp_path):
    with pytest.raises(OSError, match="no_such_pipeline"):
        load_pipeline(str(tmp_path / "no_such_pipeline"), "ddim")
