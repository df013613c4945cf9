"""Tests of synret.leakage: planted copies of test images, stored as each arm stores images, and the
dedup's recall and false-positive rate on them; on the smoke run, the demo world's descriptor."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from synret.config import deep_merge
from synret.leakage import COPY_KINDS, arm_storage, calibrate, calibrate_run, make_copy, plant_copies

PIXELS = {"descriptor": "pixels", "pixel_size": 16, "threshold": 0.97, "splits": ["test"]}


def _image(shape_images, i: int) -> Image.Image:
    return Image.fromarray(shape_images[0][i])


def test_copy_kinds_change_the_image_as_named(shape_images):
    original = _image(shape_images, 0).resize((64, 64))
    rng = np.random.default_rng(0)
    pixels = np.asarray(original, dtype=float)
    copies = {kind: make_copy(original, kind, rng) for kind in COPY_KINDS}
    assert np.array_equal(np.asarray(copies["exact"]), np.asarray(original))
    w, h = copies["resized"].size
    assert w == h and 32 <= w <= 128 and w != 64
    jpeg = np.asarray(copies["jpeg"], dtype=float)
    assert jpeg.shape == pixels.shape and 0 < np.abs(jpeg - pixels).mean() < 40
    w, h = copies["letterbox"].size
    assert sorted((w, h)) == [64, round(64 * 4 / 3)]
    w, h = copies["crop"].size
    assert 0.8 * 64 - 1 <= w <= 0.9 * 64 + 1 and 0.8 * 64 - 1 <= h <= 0.9 * 64 + 1
    jitter = np.asarray(copies["colour_jitter"], dtype=float)
    assert jitter.shape == pixels.shape and np.abs(jitter - pixels).mean() > 1
    with pytest.raises(ValueError, match="unknown copy kind 'mirror'"):
        make_copy(original, "mirror", rng)


def test_plant_copies_is_seeded():
    images = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(3)]
    a, b = plant_copies(images, COPY_KINDS, 5), plant_copies(images, COPY_KINDS, 5)
    assert [(i, k) for i, k, _ in a] == [(i, k) for i in range(3) for k in COPY_KINDS]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, _, x), (_, _, y) in zip(a, b))


def test_each_arm_stores_a_copy_as_it_stores_its_images(shape_images):
    wide = make_copy(_image(shape_images, 1).resize((48, 48)), "letterbox", np.random.default_rng(1))
    stored = arm_storage("retrieved", {"image_size": 32, "resize_mode": "border", "encode_format": "png"})(wide)
    assert Image.open(io.BytesIO(stored)).size == (32, 32)  # img2dataset's resizer, border mode
    stored = arm_storage("retrieved", {"image_size": 24, "resize_mode": "center_crop", "encode_format": "jpg"})(wide)
    assert Image.open(io.BytesIO(stored)).format == "JPEG" and Image.open(io.BytesIO(stored)).size == (24, 24)
    stored = arm_storage("synthetic", {"save_size": 20, "image_format": "png"})(wide)
    assert Image.open(io.BytesIO(stored)).size == (20, 20)
    with pytest.raises(ValueError, match="unknown source"):
        arm_storage("blended", {})
    with pytest.raises(ValueError, match="stores no incoming images"):  # a mix draws on others' stored images
        arm_storage("mixed", {})


def test_calibrate_counts_recall_and_false_positives(shape_images, tmp_path):
    """Exact copies are caught and matched to their own original; a look-alike that is in fact a copy
    counts as a false positive, a different image does not."""
    paths = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        _image(shape_images, i).save(path)
        paths.append(str(path))
    originals = [2, 5]
    copies = [(0, "exact", _image(shape_images, 2)), (1, "exact", _image(shape_images, 5))]
    lookalikes = [(tmp_path / "3.png").read_bytes(), _png(_image(shape_images, 40)), _png(_image(shape_images, 41))]
    store = arm_storage("synthetic", {"save_size": 32, "image_format": "png"})
    result = calibrate(None, PIXELS, paths, originals, copies, lookalikes, store)
    assert result["copies"] == 2 and result["recall"] == 1.0 and result["recall_by_kind"] == {"exact": 1.0}
    assert result["matched_own_original"] == 1.0
    assert result["lookalikes"] == 3 and result["false_positive_rate"] == pytest.approx(1 / 3)
    assert result["copy_similarity"]["0.0"] == pytest.approx(1.0, abs=1e-4)
    assert result["threshold_for_99_recall"] == pytest.approx(1.0, abs=1e-3)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _smoke_config(workdir) -> dict:
    from smoke_support import SMOKE

    root = SMOKE.parents[1]
    config = deep_merge(yaml.safe_load((root / "config.yaml").read_text()), yaml.safe_load(SMOKE.read_text()))
    return deep_merge(config, yaml.safe_load((workdir / "port.yaml").read_text()))


def _check_demo_descriptor(figures: dict) -> None:
    """What the demo world's descriptor (the image at 16 x 16 px, correlation > 0.97) is built to catch:
    exact, resized and recoloured copies (the demo pool's planted copies are recoloured and noised), with
    next to no false positives. Re-encoded at JPEG quality 10-30, letterboxed or cropped copies of 32 px
    images mostly escape it (README, "Leakage calibration")."""
    for arm in ("retrieved", "synthetic"):
        result = figures[arm]
        print(arm, json.dumps({k: result[k] for k in ("recall", "recall_by_kind", "false_positive_rate",
                                                       "threshold_for_99_recall", "false_positive_rate_at_99_recall")}))
        by_kind = result["recall_by_kind"]
        assert by_kind["exact"] == 1.0 and by_kind["resized"] >= 0.8 and by_kind["colour_jitter"] >= 0.9
        assert result["matched_own_original"] >= 0.99
        assert result["false_positive_rate"] <= 0.02
        assert result["lookalikes"] > 0 and result["copies"] == figures["originals"] * len(COPY_KINDS)


@pytest.mark.slow
def test_demo_descriptor_calibration_on_the_smoke_run(smoke_run):
    """Reduced schedule: 8 test images x 6 kinds of copy in each arm, 150 look-alikes per arm."""
    workdir, _ = smoke_run
    config = _smoke_config(workdir)
    assert config["curate"]["dedup"]["descriptor"] == "pixels"
    figures = calibrate_run(config, config["tasks"][0], originals=8, lookalikes=150, root=str(workdir))
    _check_demo_descriptor(figures)


@pytest.mark.full
def test_demo_descriptor_calibration_full(smoke_run):
    """Full schedule (pytest -m full): every task, 60 test images x 6 kinds, 1000 look-alikes per arm."""
    workdir, _ = smoke_run
    config = _smoke_config(workdir)
    for task in config["tasks"]:
        _check_demo_descriptor(calibrate_run(config, task, originals=60, lookalikes=1000, root=str(workdir)))
