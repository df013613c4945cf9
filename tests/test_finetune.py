"""The classifier, its schedule, training and evaluation, on a real tiny open_clip model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from synret.clip import encode_texts, fill_template, load_clip, zero_shot_weights
from synret.finetune import FinetuneConfig, build_classifier, evaluate, lr_at, train_classifier
from synret.shards import encode_image

CLASSES = ["circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ring", "heart", "crescent"]


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.0, abs=1e-12)
    # a run shorter than its warmup never reaches the peak (the paper's fixed-step warmup)
    assert max(lr_at(s, 1.0, 500, 60) for s in range(60)) == pytest.approx(60 / 500)


def test_fill_template_articles():
    assert fill_template("a photo of {a/an} {c}.", "apple") == "a photo of an apple."
    assert fill_template("a photo of {a/an} {c}.", "pear") == "a photo of a pear."
    assert fill_template("itap of a {}.", "dog") == "itap of a dog."


def test_head_starts_as_the_zero_shot_classifier(tiny_clip_dir, shape_images):
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    templates = ["a photo of a {c}.", "a {c}."]
    model = build_classifier(clip, CLASSES, templates, "cpu")
    images, _ = shape_images
    x = torch.stack([clip.preprocess_val(Image.fromarray(im)) for im in images[:16]])
    with torch.no_grad():
        feats = torch.nn.functional.normalize(clip.model.encode_image(x), dim=-1)
        expected = clip.model.logit_scale.exp() * feats @ zero_shot_weights(clip, CLASSES, templates).T
        assert torch.allclose(model(x), expected, atol=1e-4)
    # class vectors are unit means of unit template embeddings
    w = zero_shot_weights(clip, CLASSES[:2], templates)
    manual = torch.nn.functional.normalize(encode_texts(clip, ["a photo of a circle.", "a circle."]).mean(0), dim=-1)
    assert torch.allclose(w[0], manual, atol=1e-6)


def test_training_learns_a_separable_task(tiny_clip_dir, shape_images, tmp_path):
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    images, labels = shape_images
    keep = labels < 3  # circles, squares, triangles
    data = [encode_image(im, "png") for im in images[keep]]
    y = labels[keep].tolist()
    model = build_classifier(clip, CLASSES[:3], ["a {c}."], "cpu")
    paths = []
    for i, im in enumerate(images[keep]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    before = evaluate(model, paths, y, 3, clip.preprocess_val, 64, "cpu", "fp32")
    cfg = FinetuneConfig(epochs=30, batch_size=12, lr=3e-3, weight_decay=0.0, betas=(0.9, 0.95), warmup_steps=3,
                         grad_clip=1.0, label_smoothing=0.0, num_workers=0, augment="none", seed=0)
    stats = train_classifier(model, data, y, clip.preprocess_val, cfg, "cpu", "fp32", log=lambda m: None)
    after = evaluate(model, paths, y, 3, clip.preprocess_val, 64, "cpu", "fp32")
    assert stats["steps"] == 30 * 3
    assert after["top1"] > max(before["top1"], 0.8)
    assert 0 <= after["mean_per_class"] <= 1 and after["n"] == 36


def test_training_is_deterministic_for_a_seed(tiny_clip_dir, shape_images):
    images, labels = shape_images
    data = [encode_image(im, "png") for im in images[:20]]
    cfg = FinetuneConfig(epochs=2, batch_size=8, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=1,
                         grad_clip=None, label_smoothing=0.1, num_workers=0, augment="open_clip", seed=5)
    losses = []
    for _ in range(2):
        clip = load_clip(f"local-dir:{tiny_clip_dir}")
        model = build_classifier(clip, CLASSES, ["a {c}."], "cpu")
        losses.append(train_classifier(model, data, labels[:20].tolist(), clip.preprocess_train, cfg, "cpu", "fp32",
                                       log=lambda m: None)["final_loss"])
    assert losses[0] == losses[1]


def test_mean_per_class_differs_from_top1_on_imbalanced_data(tiny_clip_dir, shape_images, tmp_path):
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    model = build_classifier(clip, CLASSES, ["a {c}."], "cpu")
    images, labels = shape_images
    paths = []
    for i, im in enumerate(images[:14]):  # 12 circles, 2 squares
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    out = evaluate(model, paths, labels[:14].tolist(), 10, clip.preprocess_val, 8, "cpu", "fp32")
    with torch.no_grad():
        x = torch.stack([clip.preprocess_val(Image.open(p).convert("RGB")) for p in paths])
        pred = model(x).argmax(1).numpy()
    correct = pred == labels[:14]
    assert out["top1"] == pytest.approx(correct.mean())
    assert out["mean_per_class"] == pytest.approx(np.mean([correct[:12].mean(), correct[12:].mean()]))
