"""The classifier, its schedule, training and evaluation, on a real tiny open_clip model."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from synret.cells import run_cell
from synret.clip import encode_texts, load_clip, zero_shot_weights
from synret.finetune import (
    FinetuneConfig,
    ProbeConfig,
    accuracy,
    build_classifier,
    evaluate,
    lr_at,
    param_groups,
    train_classifier,
    train_probe,
)
from synret.progress import Progress
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


def test_training_learns_a_separable_task(tiny_clip_dir, shape_images, tmp_path, monkeypatch):
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
    before, _ = evaluate(model, paths, y, 3, clip.preprocess_val, 64, "cpu", "fp32")
    cfg = FinetuneConfig(epochs=30, batch_size=12, lr=3e-3, weight_decay=0.0, betas=(0.9, 0.95), warmup_steps=3,
                         grad_clip=1.0, label_smoothing=0.0, num_workers=0, augment="none", seed=0)
    lines = []
    # progress lines without waiting for min_interval: every total / max_lines steps
    monkeypatch.setattr("synret.finetune.Progress", lambda *a, **k: Progress(*a, **k, min_interval=0))
    stats = train_classifier(model, data, y, clip.preprocess_val, cfg, "cpu", "fp32", log=lines.append)
    progress = Progress(len(paths), "evaluate", None)
    after, ranked = evaluate(model, paths, y, 3, clip.preprocess_val, 16, "cpu", "fp32", progress=progress)
    assert stats["steps"] == 30 * 3
    assert progress.count == len(paths)  # each evaluated image counted once
    steps = [line for line in lines if line.startswith("train: ")]
    assert 10 <= len(steps) <= 21 and steps[-1].startswith("train: done, 90 steps in ")
    assert re.fullmatch(r"train: \d+/90 steps \(\d+%\), [\d.]+ steps/s, about [\dhms.]+ left", steps[0]), steps[0]
    assert sum(line.startswith("epoch ") for line in lines) == 30  # the per-epoch loss lines stay
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
    out, ranked = evaluate(model, paths, labels[:14].tolist(), 10, clip.preprocess_val, 8, "cpu", "fp32")
    with torch.no_grad():
        x = torch.stack([clip.preprocess_val(Image.open(p).convert("RGB")) for p in paths])
        logits = model(x)
    pred = logits.argmax(1).numpy()
    correct = pred == labels[:14]
    assert out["top1"] == pytest.approx(correct.mean())
    assert out["mean_per_class"] == pytest.approx(np.mean([correct[:12].mean(), correct[12:].mean()]))
    # the ranked predictions: the five best classes, best first, from which top-1 and top-5 recompute
    assert ranked.shape == (14, 5) and np.array_equal(ranked[:, 0], pred)
    assert np.array_equal(ranked, logits.topk(5, dim=1).indices.numpy())
    in_top5 = (ranked == labels[:14, None]).any(axis=1)
    assert out["top5"] == pytest.approx(in_top5.mean()) and out["top5"] >= out["top1"]


# ---------------------------------------------------------------- linear probes


def test_linear_probe_mode_trains_only_the_head(tiny_clip_dir, shape_images, one_thread):
    images, labels = shape_images
    data = [encode_image(im, "png") for im in images[:30]]
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    model = build_classifier(clip, CLASSES, ["a {c}."], "cpu")
    tower = {k: v.clone() for k, v in model.visual.state_dict().items()}
    head = model.head.weight.detach().clone()
    cfg = FinetuneConfig(epochs=3, batch_size=10, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=1,
                         grad_clip=1.0, label_smoothing=0.0, num_workers=0, augment="open_clip", seed=0,
                         mode="linear_probe")
    stats = train_classifier(model, data, labels[:30].tolist(), clip.preprocess_train, cfg, "cpu", "fp32",
                             log=lambda m: None)
    assert stats["steps"] == 9
    for k, v in model.visual.state_dict().items():
        assert torch.equal(v, tower[k]), k
    assert not torch.allclose(model.head.weight, head)
    with pytest.raises(ValueError, match=r"'finetune\.mode'"):
        FinetuneConfig(epochs=1, batch_size=1, lr=1.0, weight_decay=0.0, betas=(0.9, 0.95), warmup_steps=0,
                       grad_clip=None, label_smoothing=0.0, num_workers=0, augment="none", mode="head_only")


def test_weight_decay_on_every_parameter_or_on_matrices(tiny_clip_dir, shape_images, one_thread):
    """The reference decays every parameter; 'matrices' exempts gains, biases and embeddings."""
    images, labels = shape_images
    data = [encode_image(im, "png") for im in images[:20]]
    one_d = {}
    for which in ("all", "matrices"):
        clip = load_clip(f"local-dir:{tiny_clip_dir}")  # a fresh copy: the classifier trains the CLIP's tower
        model = build_classifier(clip, CLASSES, ["a {c}."], "cpu")
        cfg = FinetuneConfig(epochs=3, batch_size=10, lr=1e-2, weight_decay=5.0, betas=(0.9, 0.95), warmup_steps=0,
                             grad_clip=1.0, label_smoothing=0.0, num_workers=0, augment="none", seed=0,
                             weight_decay_params=which)
        groups = param_groups([p for p in model.parameters() if p.requires_grad], cfg)
        decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
        assert all(p.ndim >= 2 for p in decayed) == (which == "matrices")
        assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
        train_classifier(model, data, labels[:20].tolist(), clip.preprocess_val, cfg, "cpu", "fp32", log=lambda m: None)
        one_d[which] = sum(p.detach().norm() for p in model.visual.parameters() if p.ndim < 2)
    # 6 steps at lr 1e-2 and decay 5: each step scales decayed parameters by 0.95
    assert one_d["all"] < 0.85 * one_d["matrices"]
    with pytest.raises(ValueError, match=r"'finetune\.weight_decay_params'"):
        FinetuneConfig(epochs=1, batch_size=1, lr=1.0, weight_decay=0.0, betas=(0.9, 0.95), warmup_steps=0,
                       grad_clip=None, label_smoothing=0.0, num_workers=0, augment="none", weight_decay_params="some")


def test_probe_defaults_are_the_references():
    cfg = ProbeConfig()
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.weight_decay, cfg.warmup_steps) == (1e-2, 256, 200, 0.1, 200)
    assert tuple(cfg.betas) == (0.9, 0.95) and cfg.grad_clip == 1.0
    assert tuple(cfg.train_splits) == ("train", "val") and tuple(cfg.eval_splits) == ("test",)


def test_train_probe_fits_fixed_features_deterministically(one_thread):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    y = np.repeat(np.arange(4), 25)
    x = torch.nn.functional.normalize(torch.tensor(centres[y] + 0.3 * rng.normal(size=(100, 16)), dtype=torch.float32),
                                      dim=-1)
    cfg = ProbeConfig(lr=0.05, batch_size=32, epochs=30, warmup_steps=5)
    logs = []
    heads = [train_probe(x, y.tolist(), 4, cfg, seed=3, log=logs.append) for _ in range(2)]
    assert torch.equal(heads[0].weight, heads[1].weight)
    assert "120 steps on 100 images" in logs[0]  # 30 epochs x ceil(100 / 32)
    pred = heads[0](x).argmax(1).numpy()
    assert accuracy(pred, y, 4)["top1"] > 0.95


def test_linear_probe_evaluation_of_a_cell(tiny_clip_dir, shape_images, tmp_path, one_thread):
    images, labels = shape_images
    keep = np.flatnonzero(labels < 4)
    rows = []
    for n, i in enumerate(keep):
        path = tmp_path / f"{i}.png"
        Image.fromarray(images[i]).save(path)
        rows.append({"key": f"k{i}", "label": int(labels[i]), "path": str(path), "split": ("train", "val", "test")[n % 3]})
    table = pd.DataFrame(rows)
    tables = {s: table[table["split"] == s].drop(columns="split").reset_index(drop=True) for s in ("train", "val", "test")}
    task = {"classnames": CLASSES[:4], "templates": ["a {c}."]}
    clip_cfg = {"model": f"local-dir:{tiny_clip_dir}", "pretrained": None, "cache_dir": None, "precision": "fp32"}
    evaluate_cfg = {"batch_size": 64, "splits": ["test"], "linear_probe": {"epochs": 40, "batch_size": 16, "warmup_steps": 5}}
    cell = {"task": "t", "source": "zeroshot", "scale": 0, "seed": 0}
    lines = []
    record, _, predictions = run_cell(task, cell, clip_cfg, {"test": tables["test"]}, evaluate_cfg,
                                      log=lines.append, probe_tables=tables)
    for what in ("evaluate test", "linear probe features of train+val", "linear probe features of test"):
        assert sum(line.startswith(f"{what}: done, ") for line in lines) == 1, (what, lines)
    probe = record["evaluation"]["linear_probe"]
    assert set(probe) == {"test"} and probe["test"]["n"] == len(tables["test"])
    assert record["lp_top1"] == probe["test"]["top1"] and 0 <= record["lp_top1"] <= 1
    assert record["lp_mean_per_class"] == probe["test"]["mean_per_class"]
    # the same probe by hand: features of the untouched tower, a head trained with the cell's seed
    from synret.finetune import extract_features

    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    train = pd.concat([tables["train"], tables["val"]], ignore_index=True)
    feats = extract_features(clip.model.visual, list(train["path"]), clip.preprocess_val, 64, "cpu", "fp32")
    head = train_probe(feats, list(train["label"]), 4, ProbeConfig(epochs=40, batch_size=16, warmup_steps=5), 0,
                       log=lambda m: None)
    test = extract_features(clip.model.visual, list(tables["test"]["path"]), clip.preprocess_val, 64, "cpu", "fp32")
    expected = accuracy(head(test).argmax(1).numpy(), tables["test"]["label"].to_numpy(), 4)
    assert {k: probe["test"][k] for k in ("top1", "mean_per_class", "n")} == pytest.approx(
        {k: expected[k] for k in ("top1", "mean_per_class", "n")})
    # per-image predictions of both evaluations, keyed by the split manifest's keys
    pred = predictions.to_pandas()
    assert set(zip(pred["evaluation"], pred["split"])) == {("classifier", "test"), ("linear_probe", "test")}
    probe_rows = pred[pred["evaluation"] == "linear_probe"]
    assert list(probe_rows["key"]) == list(tables["test"]["key"])
    assert (probe_rows["pred"] == probe_rows["label"]).mean() == pytest.approx(record["lp_top1"])
    assert probe_rows["ranked"].map(len).eq(4).all()  # four classes: all of them, ranked
    # without the option the record is as before
    plain, _, _ = run_cell(task, cell, clip_cfg, {"test": tables["test"]}, {"batch_size": 64, "splits": ["test"]},
                        log=lambda m: None)
    assert "lp_top1" not in plain and "linear_probe" not in plain["evaluation"]
    assert plain["top1"] == record["top1"]
    with pytest.raises(ValueError, match="evaluate.linear_probe.train_splits"):
        empty = {**tables, "train": tables["train"].iloc[:0], "val": tables["val"].iloc[:0]}
        run_cell(task, cell, clip_cfg, {"test": tables["test"]}, evaluate_cfg, log=lambda m: None, probe_tables=empty)


def test_precision_does_what_it_says(tiny_clip_dir, shape_images, tmp_path, one_thread):
    """amp_bf16 autocasts (on the CPU too), fp32 does not, amp needs a GPU; evaluation keeps its own
    precision (fp32 unless evaluate.precision says otherwise), whatever training used."""
    from synret.cells import resolve_precision
    from synret.embed import autocast

    x = torch.randn(4, 8)
    with autocast("cpu", "amp_bf16"):
        assert (x @ x.T).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (x @ x.T).dtype == torch.float32
    with pytest.raises(ValueError, match="bf16"):
        autocast("cpu", "bf16")
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "cuda:0") == "amp_bf16"
    with pytest.raises(ValueError, match=r"'evaluate\.precision'.*CUDA"):
        resolve_precision("amp", "cpu", "evaluate.precision")

    images, labels = shape_images
    rows = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.fromarray(images[i]).save(path)
        rows.append({"key": f"k{i}", "label": int(labels[i]), "path": str(path)})
    test = pd.DataFrame(rows)
    task = {"classnames": CLASSES, "templates": ["a {c}."]}
    cell = {"task": "t", "source": "zeroshot", "scale": 0, "seed": 0}
    records = {}
    for train_precision, eval_precision in (("fp32", None), ("amp_bf16", None), ("fp32", "amp_bf16")):
        clip_cfg = {"model": f"local-dir:{tiny_clip_dir}", "pretrained": None, "cache_dir": None,
                    "precision": train_precision}
        evaluate_cfg = {"batch_size": 64, "splits": ["test"]} | ({"precision": eval_precision} if eval_precision else {})
        record, _, predictions = run_cell(task, cell, clip_cfg, {"test": test}, evaluate_cfg, log=lambda m: None)
        records[train_precision, eval_precision] = record, predictions
        assert (record["precision"], record["eval_precision"]) == (train_precision, eval_precision or "fp32")
    # a zero-shot cell only evaluates: the training precision cannot change it, the evaluation's can run in bf16
    assert records["amp_bf16", None][1].equals(records["fp32", None][1])


# ---------------------------------------------------------------- data-loader workers


def test_evaluation_in_loader_workers_gives_the_bits_of_the_job_process(tiny_clip_dir, shape_images, tmp_path,
                                                                         one_thread):
    """Evaluation images read, decoded and preprocessed by two forked worker processes give the features,
    ranked predictions and a whole cell (classifier, linear probe, per-image predictions) of reading them
    in the job's own process, in the same order."""
    from synret.finetune import extract_features, predict

    images, labels = shape_images
    rows = []
    for n, i in enumerate(range(0, 120, 3)):  # 40 files: PNG and JPEG, some larger than the model's input
        image = Image.fromarray(images[i])
        if n % 2:
            image = image.resize((57, 45), Image.BICUBIC)
        path = tmp_path / f"{i}.{'jpg' if n % 4 == 0 else 'png'}"
        image.save(path)
        rows.append({"key": f"k{i}", "label": int(labels[i]), "path": str(path), "split": ("train", "val", "test")[n % 3]})
    table = pd.DataFrame(rows)
    paths = list(table["path"])
    clip = load_clip(f"local-dir:{tiny_clip_dir}")
    # batches of 7: five full ones and a partial last one, each from whichever worker made it
    in_process = extract_features(clip.model.visual, paths, clip.preprocess_val, 7, "cpu", "fp32")
    in_workers = extract_features(clip.model.visual, paths, clip.preprocess_val, 7, "cpu", "fp32", num_workers=2)
    assert in_process.shape[0] == 40 and torch.equal(in_process, in_workers)
    model = build_classifier(clip, CLASSES, ["a {c}."], "cpu")
    assert np.array_equal(predict(model, paths, clip.preprocess_val, 7, "cpu", "fp32"),
                          predict(model, paths, clip.preprocess_val, 7, "cpu", "fp32", num_workers=2))

    tables = {s: table[table["split"] == s].drop(columns="split").reset_index(drop=True) for s in ("train", "val", "test")}
    task = {"classnames": CLASSES, "templates": ["a {c}."]}
    clip_cfg = {"model": f"local-dir:{tiny_clip_dir}", "pretrained": None, "cache_dir": None, "precision": "fp32"}
    evaluate_cfg = {"batch_size": 5, "splits": ["val", "test"],
                    "linear_probe": {"epochs": 5, "batch_size": 8, "warmup_steps": 2}}
    cell = {"task": "t", "source": "zeroshot", "scale": 0, "seed": 0}
    runs = [run_cell(task, cell, clip_cfg, {s: tables[s] for s in ("val", "test")}, evaluate_cfg, log=lambda m: None,
                     probe_tables=tables, num_workers=workers) for workers in (0, 2)]
    (first, _, first_pred), (second, _, second_pred) = runs
    first.pop("wall_seconds"), second.pop("wall_seconds")
    assert first == second and first["evaluation"]["linear_probe"]["test"]["n"] == len(tables["test"])
    assert first_pred.equals(second_pred)
