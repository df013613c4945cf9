"""Finetuning CLIP's image tower as a classifier, and evaluating it.

The classifier is the CLIP image encoder followed by a linear head initialised from the zero-shot
text classifier (class embeddings from the task's templates, scaled by CLIP's logit scale), applied
to L2-normalised image features, as in the paper's code (WiSE-FT's ``ClassificationHead``). The
whole network is trained with cross-entropy, AdamW and a linear-warmup-then-cosine learning rate
(``mode: full``), or only the head on the frozen tower (``mode: linear_probe``).

The linear-probe evaluation measures the image features themselves, as the reference code's LP
evaluation does: a fresh linear head is trained on fixed features of the benchmark's own training
images (train and val) and evaluated on its test split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from .augment import training_transform
from .clip import LoadedClip, zero_shot_weights
from .embed import ImageDataset, autocast, evaluation_batches, image_loader
from .progress import Progress


@dataclass
class FinetuneConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int  # a fixed count, as in the paper: small sets may never reach the peak lr
    grad_clip: float | None
    label_smoothing: float
    num_workers: int
    augment: str  # "open_clip": the model's train transform; "none": the eval transform
    threads: int = 1  # CPU threads the job computes on (set by the job before torch starts; part of the result)
    seed: int = 0
    mode: str = "full"  # "full": image tower and head; "linear_probe": the head alone, on a frozen tower
    # "all": AdamW decays every trained parameter (the reference code); "matrices": gains, biases and
    # embeddings (1-d parameters) are exempt, open_clip's pretraining convention
    weight_decay_params: str = "all"

    def __post_init__(self):
        if self.mode not in FINETUNE_MODES:
            raise ValueError(f"config key 'finetune.mode': {self.mode!r} is not one of {FINETUNE_MODES}")
        if self.weight_decay_params not in WEIGHT_DECAY_PARAMS:
            raise ValueError(f"config key 'finetune.weight_decay_params': {self.weight_decay_params!r} is not one of "
                             f"{WEIGHT_DECAY_PARAMS}")


FINETUNE_MODES = ("full", "linear_probe")
WEIGHT_DECAY_PARAMS = ("all", "matrices")


def param_groups(params: Sequence[nn.Parameter], cfg: FinetuneConfig) -> list[dict]:
    """AdamW's parameter groups: weight decay on every parameter, or on the matrices only."""
    if cfg.weight_decay_params == "all":
        return [{"params": list(params), "weight_decay": cfg.weight_decay}]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


@dataclass
class ProbeConfig:
    """The linear-probe evaluation (``evaluate.linear_probe``); defaults are the reference code's."""

    lr: float = 1e-2
    batch_size: int = 256
    epochs: int = 200
    weight_decay: float = 0.1
    warmup_steps: int = 200
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    train_splits: tuple[str, ...] = ("train", "val")  # the reference's LP-train: train (+ val where one exists)
    eval_splits: tuple[str, ...] = ("test",)


class ImageClassifier(nn.Module):
    """CLIP image encoder + linear head on normalised features."""

    def __init__(self, visual: nn.Module, head_weight: torch.Tensor):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(head_weight.shape[1], head_weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            self.head.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(self.visual(images), dim=-1))


def build_classifier(clip: LoadedClip, classnames: Sequence[str], templates: Sequence[str], device: str) -> ImageClassifier:
    """The zero-shot classifier of a task; the text tower is not kept."""
    weights = zero_shot_weights(clip, classnames, templates, device=device)
    scale = clip.model.logit_scale.exp().item()
    return ImageClassifier(clip.model.visual, weights.to(device) * scale).to(device)


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warmup to ``base`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * base


def train_classifier(
    model: ImageClassifier, images: Sequence[bytes], labels: Sequence[int], transform: Callable,
    cfg: FinetuneConfig, device: str, precision: str, log: Callable[[str], None] = print,
) -> dict:
    """Full finetuning with cross-entropy; returns training stats. open_clip's train transform is applied in
    its faster form (``augment.training_transform``: the same crops, pixels within a resize tolerance):
    the loader gives uint8 batches, normalised on ``device``."""
    # data: a seeded shuffle per epoch
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    transform, finish_batch = training_transform(transform)
    loader = image_loader(ImageDataset(list(images), transform, list(labels)), cfg.batch_size, cfg.num_workers,
                          device, shuffle=True, generator=generator, drop_last=False)
    total = cfg.epochs * len(loader)

    # what trains: everything, or only the head on a frozen image tower
    probe = cfg.mode == "linear_probe"
    model.visual.requires_grad_(not probe)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(param_groups(params, cfg), lr=cfg.lr, betas=tuple(cfg.betas))
    # fp16 autocast: scale the loss so small gradients survive fp16, unscale before clipping
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "amp")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    # loop: lr, forward/backward, clip, step, one log line per epoch
    model.train()
    if probe:
        model.visual.eval()  # a frozen tower: no dropout, no statistics updates
    step, start, losses = 0, time.time(), []
    progress = Progress(total, "train", log, unit="steps")
    for epoch in range(cfg.epochs):
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps, total)
            x = x.to(device)
            if finish_batch is not None:
                x = finish_batch(x)
            with autocast(device, precision):
                loss = loss_fn(model(x), y.to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            step += 1
            progress.update()
        log(f"epoch {epoch + 1}/{cfg.epochs} step {step}/{total} loss {np.mean(losses[-len(loader):]):.4f} "
            f"({time.time() - start:.1f}s)")
    progress.done()
    model.eval()
    return {"steps": step, "final_loss": float(np.mean(losses[-max(1, len(loader)):])) if losses else None,
            "train_seconds": round(time.time() - start, 2)}


TOP_K = 5  # ranked predictions kept per image: top-1 and top-5 accuracy recompute from them


@torch.no_grad()
def predict(
    model: ImageClassifier, paths: Sequence[str], transform: Callable, batch_size: int, device: str,
    precision: str, num_workers: int = 0, k: int = TOP_K, classes: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """The ``k`` highest-scoring classes of every image, best first: int array (N, min(k, classes)).
    ``num_workers`` processes read and preprocess the images (``embed.image_loader``), as training's do.
    ``classes``: only these class labels compete (an evaluation set covering some of the task's classes);
    the result still holds task labels. open_clip's eval transform runs in its faster form, the same bits
    (``augment.evaluation_transform``): the loader gives uint8 batches, normalised on ``device``.
    ``progress``: counts the predicted images (``embed.evaluation_batches``)."""
    model.eval()
    allowed = None if classes is None else torch.as_tensor(list(classes), dtype=torch.long)
    ranked = []
    for x in evaluation_batches(list(paths), transform, batch_size, num_workers, device, progress):
        with autocast(device, precision):
            logits = model(x).float()
        if allowed is not None:
            top = logits[:, allowed.to(logits.device)].topk(min(k, len(allowed)), dim=1).indices.cpu()
            ranked.append(allowed[top])
            continue
        ranked.append(logits.topk(min(k, logits.shape[1]), dim=1).indices.cpu())
    k = min(k, model.head.out_features if classes is None else len(classes))
    return torch.cat(ranked).numpy().astype(np.int32) if ranked else np.zeros((0, k), dtype=np.int32)


def evaluate(
    model: ImageClassifier, paths: Sequence[str], labels: Sequence[int], n_classes: int, transform: Callable,
    batch_size: int, device: str, precision: str, num_workers: int = 0, classes: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> tuple[dict, np.ndarray]:
    """Accuracy of the model on the images (see ``accuracy``) and its ranked predictions (``classes``: only
    these labels compete, see ``predict``; ``progress``: counts the images)."""
    ranked = predict(model, paths, transform, batch_size, device, precision, num_workers, classes=classes,
                     progress=progress)
    return accuracy(ranked, np.asarray(labels), n_classes), ranked


@torch.no_grad()
def extract_features(
    visual: nn.Module, paths: Sequence[str], transform: Callable, batch_size: int, device: str, precision: str,
    num_workers: int = 0, progress: Progress | None = None,
) -> torch.Tensor:
    """L2-normalised image features of the files, float32 on CPU (what the classifier's head sees);
    ``num_workers`` processes read and preprocess the images (open_clip's eval transform in its faster
    form, as in ``predict``); ``progress``: counts the images."""
    visual.eval()
    feats = []
    for x in evaluation_batches(list(paths), transform, batch_size, num_workers, device, progress):
        with autocast(device, precision):
            feats.append(F.normalize(visual(x).float(), dim=-1).cpu())
    return torch.cat(feats) if feats else torch.zeros(0, 0)


def train_probe(features: torch.Tensor, labels: Sequence[int], n_classes: int, cfg: ProbeConfig, seed: int,
                log: Callable[[str], None] = print, device: str = "cpu") -> nn.Linear:
    """A fresh linear head (torch's default init, zero bias) trained on fixed features with
    cross-entropy, AdamW, linear warmup then cosine and gradient clipping, as the reference's probe.
    Trains on ``device``; returns the head on CPU."""
    torch.manual_seed(seed)
    head = nn.Linear(features.shape[1], n_classes)
    with torch.no_grad():
        head.bias.zero_()
    head.to(device)
    features = features.to(device)
    y = torch.as_tensor(list(labels), dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(seed)
    per_epoch = max(1, math.ceil(len(y) / cfg.batch_size))
    total = cfg.epochs * per_epoch
    opt = torch.optim.AdamW([{"params": [head.weight], "weight_decay": cfg.weight_decay},
                             {"params": [head.bias], "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas))
    step, losses = 0, []
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        for b in range(0, len(y), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps, total)
            loss = F.cross_entropy(head(features[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
            step += 1
    log(f"linear probe: {step} steps on {len(y)} images, final loss {np.mean(losses[-per_epoch:]):.4f}")
    return head.cpu()


def accuracy(ranked: np.ndarray, true: np.ndarray, n_classes: int) -> dict:
    """Top-1, top-5 and mean per-class accuracy (the mean over the classes present of each class's
    recall) of predictions: class indices (N,) or ranked, best first (N, k)."""
    ranked = np.asarray(ranked).reshape(len(true), -1)
    correct = ranked[:, 0] == true
    per_class = [correct[true == c].mean() for c in range(n_classes) if (true == c).any()]
    in_top5 = (ranked[:, :TOP_K] == np.asarray(true)[:, None]).any(axis=1)
    return {"top1": float(correct.mean()) if len(true) else float("nan"),
            "top5": float(in_top5.mean()) if len(true) and ranked.shape[1] >= min(TOP_K, n_classes) else None,
            "mean_per_class": float(np.mean(per_class)) if per_class else float("nan"), "n": int(len(true))}
