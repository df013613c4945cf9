"""The ISC-2021 copy-detection descriptor (synret.copydetect): the real architecture with random weights,
saved the way the released isc_ft_v107.pth.tar is (a DDP training checkpoint), loaded back offline.

A forward pass at the reference's 512 px takes ~1 s an image on 2 CPU cores, so the tests describe a few
images at most; checks of the network's composition run at 64 px (it is fully convolutional).
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from synret import copydetect
from synret.copydetect import (
    CONFIG_KEY,
    DIM,
    WEIGHTS_URL,
    WeightsError,
    build_model,
    describe,
    gem,
    load_detector,
    preprocess,
    read_checkpoint,
)
from synret.curate import dedup_descriptors
from synret.preflight import check_copydetect

ISC = {"descriptor": "isc", "threshold": copydetect.THRESHOLD, "splits": ["test"]}


def released_checkpoint(state: dict, input_size: int = 512, arch: str = "tf_efficientnetv2_m_in21ft1k") -> dict:
    """A checkpoint laid out as the release's: v107.py's save_checkpoint under DistributedDataParallel."""
    return {
        "epoch": 10,
        "arch": arch,
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.5, "momentum": 0.9, "params": [0, 1]}]},
        "args": argparse.Namespace(arch=arch, input_size=input_size, gem_p=1.0, gem_eval_p=1.0, lr=0.5),
    }


class Foreign:
    """An object ``weights_only`` loading refuses to unpickle."""


@pytest.fixture(scope="module")
def random_model():
    """The network with random weights, each residual branch's last batch norm scaled down (x0.2).

    Left as initialised, the 51 residual blocks of a random network amplify rounding differences
    exponentially: one image twice in a batch can get clearly different descriptors (cosine 0.65 seen).
    Trained weights, like damped residual branches, keep the network well-conditioned."""
    torch.manual_seed(0)
    model = build_model()
    with torch.no_grad():
        for block in model.backbone.blocks.modules():
            if getattr(block, "has_skip", False):
                last = getattr(block, "bn3", None) or getattr(block, "bn2", None) or block.bn1
                last.weight.mul_(0.2)
    return model.eval()


@pytest.fixture(scope="module")
def released(tmp_path_factory, random_model):
    """(path, state dict) of the random network saved in the released format."""
    state = {k: v.clone() for k, v in random_model.state_dict().items()}
    path = tmp_path_factory.mktemp("isc") / "isc_ft_v107.pth.tar"
    torch.save(released_checkpoint(state), path)
    return str(path), state


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two different images as PIL images, the first also as PNG bytes and as a PNG file."""
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    b = Image.fromarray(np.full((40, 40, 3), (200, 30, 90), dtype=np.uint8))
    buffer = io.BytesIO()
    a.save(buffer, format="PNG")
    path = tmp_path_factory.mktemp("images") / "a.png"
    a.save(path)
    return {"a": a, "b": b, "a_bytes": buffer.getvalue(), "a_path": str(path)}


# ---------------------------------------------------------------- the architecture


def test_architecture_is_the_releases(random_model):
    model = random_model
    assert model.backbone.feature_info.channels()[-1] == copydetect.FEATURE_DIM == 512
    assert model.fc.weight.shape == (DIM, 512) and model.fc.bias is None
    assert isinstance(model.bn, torch.nn.BatchNorm1d) and model.bn.num_features == DIM
    # create_model(weight_name='isc_ft_v107') keeps p = eval_p = 1.0, as v107 was trained and evaluated
    assert model.p == model.eval_p == 1.0
    # the TF port (same padding, BN eps 1e-3): not timm's own efficientnetv2_m
    assert model.backbone.bn1.eps == pytest.approx(1e-3)
    # the normalisation the package takes from the backbone's configuration
    assert tuple(model.backbone.pretrained_cfg["mean"]) == copydetect.MEAN == (0.5, 0.5, 0.5)
    assert tuple(model.backbone.pretrained_cfg["std"]) == copydetect.STD == (0.5, 0.5, 0.5)


def test_gem_clamps_then_takes_the_power_mean():
    x = torch.tensor([[[[-1.0, 2.0], [3.0, 0.5]]]])
    assert gem(x, p=1.0).item() == pytest.approx((1e-6 + 2.0 + 3.0 + 0.5) / 4)  # negatives count as ~0
    assert gem(x, p=3.0).item() == pytest.approx(((1e-18 + 8.0 + 27.0 + 0.125) / 4) ** (1 / 3))


def test_forward_is_gem_fc_bn_l2_with_the_eval_p(released):
    detector = load_detector(released[0])
    model = detector.model
    assert not model.training and model.eval_p == copydetect.GEM_P
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = gem(model.backbone(x)[-1], model.eval_p)
        expected = F.normalize(F.batch_norm(pooled @ model.fc.weight.T, model.bn.running_mean, model.bn.running_var,
                                            model.bn.weight, model.bn.bias, eps=model.bn.eps), dim=-1)
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_preprocessing_is_the_packages(images):
    """create_model's preprocessor: Resize((512, 512)), ToTensor, Normalize(backbone mean, std)."""
    from torchvision import transforms

    reference = transforms.Compose([transforms.Resize((512, 512)), transforms.ToTensor(),
                                    transforms.Normalize(mean=copydetect.MEAN, std=copydetect.STD)])
    for image in (images["a"], images["b"]):
        x = preprocess(image, 512)
        assert x.shape == (3, 512, 512) and x.dtype == torch.float32
        assert torch.allclose(x, reference(image), atol=1e-6)


# ---------------------------------------------------------------- loading


def test_released_format_loads_with_its_weights(released):
    path, state = released
    detector = load_detector(path)
    assert detector.input_size == 512  # from the checkpoint's args
    loaded = detector.model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert load_detector(path) is detector  # cached per file and device


def test_missing_file_names_the_file_the_key_and_the_url(tmp_path, images):
    missing = tmp_path / "nowhere" / "isc_ft_v107.pth.tar"
    with pytest.raises(WeightsError) as info:
        describe([images["a"]], str(missing))
    message = str(info.value)
    assert str(missing) in message and f"config key '{CONFIG_KEY}'" in message and WEIGHTS_URL in message


def test_unreadable_files_are_reported_not_unpickled(released, tmp_path):
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"<html>rate limited</html>")
    truncated = tmp_path / "truncated.pth.tar"
    with open(released[0], "rb") as f:
        truncated.write_bytes(f.read(100_000))  # an interrupted download
    for path in (garbage, truncated):
        with pytest.raises(WeightsError, match="is not a readable torch checkpoint"):
            load_detector(str(path))
    foreign = tmp_path / "foreign.pth.tar"
    torch.save({"state_dict": {}, "extra": Foreign()}, foreign)
    with pytest.raises(WeightsError) as info:
        load_detector(str(foreign))
    assert "it pickles test_copydetect.Foreign, which weights-only loading refuses" in str(info.value)
    assert "weights_only` set to `False" not in str(info.value)  # torch's advice is not passed on
    other_arch = tmp_path / "resnet.pth.tar"
    torch.save(released_checkpoint({}, arch="resnet50"), other_arch)
    with pytest.raises(WeightsError, match="checkpoint of 'resnet50'"):
        load_detector(str(other_arch))


def test_weights_of_another_network_list_the_mismatched_keys(released, tmp_path):
    _, state = released
    wrong = {k: v for k, v in state.items() if k != "fc.weight"}
    wrong["head.weight"] = torch.zeros(10, 512)
    wrong["bn.weight"] = torch.ones(128)
    path = tmp_path / "wrong.pth.tar"
    torch.save(released_checkpoint(wrong), path)
    with pytest.raises(WeightsError) as info:
        load_detector(str(path))
    message = str(info.value)
    assert "missing 1 key(s): fc.weight" in message and "unexpected 1 key(s): head.weight" in message
    assert "bn.weight (128,) vs (256,)" in message
    assert f"config key '{CONFIG_KEY}'" in message and str(path) in message and "Traceback" not in message


def test_a_bare_state_dict_is_read_too(released, tmp_path):
    _, state = released
    path = tmp_path / "bare.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    read, input_size = read_checkpoint(str(path))
    assert input_size == copydetect.INPUT_SIZE == 512
    assert set(read) == set(state) and torch.equal(read["fc.weight"], state["fc.weight"])


# ---------------------------------------------------------------- descriptors


def test_descriptors_shape_norm_and_identical_images(released, images):
    path, _ = released
    assert np.array_equal(np.asarray(copydetect.as_rgb(images["a"])), np.asarray(copydetect.as_rgb(images["a_bytes"])))
    # image a as bytes and as a file, in batches of different sizes and company: deterministic, and
    # independent of the batch
    desc = describe([images["a_bytes"], images["b"], images["a_path"]], path, batch_size=2)
    assert desc.shape == (3, DIM) and desc.dtype == np.float32
    assert np.allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    similarity = desc @ desc.T
    assert similarity[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert similarity[0, 1] < 1 - 1e-3
    assert describe([], path).shape == (0, DIM)


def test_descriptors_of_images_decoded_in_loader_workers_are_the_same(released, images):
    path, _ = released
    items = [images["a_bytes"], images["b"], images["a_path"]]
    assert np.array_equal(describe(items, path, batch_size=2), describe(items, path, batch_size=2, num_workers=2))


def test_curate_dispatches_to_the_isc_descriptor(released, images):
    path, _ = released
    desc = dedup_descriptors(None, [images["a_path"]], {**ISC, "weights": path}, batch_size=512, device="cpu",
                             clip_emb=np.zeros((1, 8), np.float32))  # CLIP embeddings are not used
    assert desc.shape == (1, DIM) and np.linalg.norm(desc) == pytest.approx(1.0, abs=1e-5)


def test_preflight_accepts_the_released_format_and_names_what_is_wrong(released, tmp_path):
    assert check_copydetect(CONFIG_KEY, released[0]) == []
    (problem,) = check_copydetect(CONFIG_KEY, str(tmp_path / "absent.pth.tar"))
    assert problem.key == CONFIG_KEY and "does not exist" in problem.what and WEIGHTS_URL in problem.how


def test_leakage_calibration_runs_through_the_isc_descriptor(released, images, tmp_path):
    """The paper config's descriptor goes through the same calibration as the demo's (its figures need
    the released weights: benchmarks/leakage_calibration.py). With random weights only an exact copy,
    stored the synthetic arm's way at the same size, is sure to be caught."""
    from synret.leakage import arm_storage, calibrate

    path, _ = released
    original = images["a"].resize((64, 64))
    original.save(tmp_path / "test.png")
    images["b"].save(tmp_path / "other.png")
    copies = [(0, "exact", original.copy())]
    store = arm_storage("synthetic", {"save_size": 64, "image_format": "png"})
    result = calibrate(None, {**ISC, "weights": path, "threshold": 0.604169},
                       [str(tmp_path / "test.png"), str(tmp_path / "other.png")], [0], copies, [], store)
    assert result["descriptor"] == "isc" and result["recall"] == 1.0 and result["matched_own_original"] == 1.0
    assert result["copy_similarity"]["1.0"] == pytest.approx(1.0, abs=1e-4)
    assert result["lookalikes"] == 0 and result["false_positive_rate"] is None
