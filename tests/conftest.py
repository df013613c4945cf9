"""Shared fixtures: a tiny real CLIP in open_clip's hub layout, and small rendered images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

def pytest_collection_modifyitems(config, items):
    """Tests marked ``full`` (the full schedules of slow calibrations) run only when ``-m`` names them."""
    if "full" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="full schedule: run with pytest -m full")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> str:
    """A randomly initialised tiny CLIP saved as ``local-dir:`` loads it (no training, no network)."""
    import open_clip

    from synret.clip import save_clip_local_dir
    from synret.world.clip_train import OPENAI_MEAN, OPENAI_STD

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    out = tmp_path_factory.mktemp("tiny_clip")
    save_clip_local_dir(model, TINY_CLIP_CFG, out, {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)})
    return str(out)


@pytest.fixture(scope="session")
def shape_images():
    """Rendered 32 px images of each shape (10 classes x 12), with their labels."""
    from synret.world.render import Style, render, sample_attributes

    rng = np.random.default_rng(0)
    style = Style()
    labels = np.repeat(np.arange(10), 12)
    attrs = sample_attributes(rng, len(labels), style, fixed={"shape": labels})
    return render(attrs, 32, rng, style), labels


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory, tiny_clip_dir, shape_images) -> str:
    """A tiny Stable-Diffusion pipeline trained for a few steps, saved with save_pretrained (the generator
    tests of text-to-image and image-to-image sampling share it). Its VAE trains long enough (40 steps, a few
    seconds) that a round trip resembles the input, which the image-to-image strength test measures against."""
    from synret.world.generator import GeneratorConfig, train_generator

    images, labels = shape_images
    out = tmp_path_factory.mktemp("pipe")
    cfg = GeneratorConfig(vae_steps=40, unet_steps=2, unet_block_out_channels=(16, 32, 32), unet_norm_num_groups=8)
    train_generator(images, [f"a shape {y}" for y in labels], tiny_clip_dir, str(out), cfg, log=lambda m: None)
    return str(out)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One local run of configs/smoke.yaml (minutes): the end-to-end tests inspect it, and the SLURM test
    compares its own run against it. Returns (workdir, wall seconds)."""
    from smoke_support import local_smoke_run

    return local_smoke_run(tmp_path_factory.mktemp("smoke"))


@pytest.fixture
def one_thread():
    """Tiny models take many small steps: more threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
