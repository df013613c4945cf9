"""Contrastive pretraining of the demo world's tiny CLIP on the upstream pool.

The model is built from an open_clip model config (the same mechanism as ViT-B-16's JSON config)
and saved in open_clip's hub layout, so every later stage loads it with ``local-dir:<dir>``
exactly as it would load ``hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..clip import save_clip_local_dir

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipTrainConfig:
    model_cfg: dict[str, Any] = field(default_factory=dict)  # open_clip model config (embed_dim, vision_cfg, text_cfg)
    steps: int = 600  # optimiser steps; sized so training takes ~3 min on 2 cores (measured)
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 50  # linear warmup steps, then constant
    weight_decay: float = 0.1
    seed: int = 0


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> normalised float (n, 3, h, w), as open_clip's default preprocessing does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch."""
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.t()
    target = torch.arange(len(images))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def train_clip(
    images: np.ndarray, texts: list[str], cfg: ClipTrainConfig, out_dir: str, log: Callable[[str], None] = print
) -> dict:
    """Train a CLIP from scratch on (image, caption) pairs and save it; returns training stats."""
    import open_clip

    # setup: model from its config, tokenised captions, optimiser
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = open_clip.CLIP(**cfg.model_cfg)
    model.train()
    context = cfg.model_cfg["text_cfg"]["context_length"]
    tokens = open_clip.tokenize(texts, context_length=context)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    lr_at = lambda step: cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))  # noqa: E731

    # loop: sample a batch, step, clamp the temperature as CLIP does
    start, losses = time.time(), []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        idx = rng.choice(len(images), size=min(cfg.batch_size, len(images)), replace=False)
        loss = clip_loss(model, images_to_tensor(images[idx]), tokens[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"clip step {step}/{cfg.steps} loss {loss.item():.3f} ({time.time() - start:.0f}s)")

    model.eval()
    preprocess = {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic"}
    save_clip_local_dir(model, cfg.model_cfg, out_dir, preprocess_cfg=preprocess)
    return {
        "steps": cfg.steps,
        "initial_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "seconds": round(time.time() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
