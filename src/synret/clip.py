"""Loading and saving CLIP models through open_clip, and text classifiers built from them.

One loader serves every configuration: a built-in architecture with a pretrained tag or weights
file (``ViT-B-16`` + ``laion2b_s34b_b88k``), a Hugging Face hub repo (``hf-hub:laion/...``) or a local
directory in open_clip's hub layout (``local-dir:/path``, as the demo world writes its tiny CLIP).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .templates import fill_template

LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


@dataclass
class LoadedClip:
    """An open_clip model with the transforms and tokenizer that belong to it."""

    model: torch.nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Callable
    name: str

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)


def local_dir_of(name: str) -> str | None:
    """The directory a ``local-dir:`` model name points at, or None for hub/built-in names."""
    return name[len(LOCAL_DIR_PREFIX):] if name.startswith(LOCAL_DIR_PREFIX) else None


def load_clip(
    name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> LoadedClip:
    """Create an open_clip model with its weights, transforms and tokenizer.

    ``pretrained`` is only used with built-in architecture names (a tag or a weights file); hub and
    local-dir names carry their own weights. open_clip fetches a tag's weights from its hub repo into
    ``cache_dir`` (else the Hugging Face cache), preferring ``open_clip_model.safetensors`` to the
    pickled ``.bin``. Weights stay fp32 (``precision``) and GPU jobs run under bf16 autocast.
    """
    import open_clip

    local = local_dir_of(name)
    if local is not None and not (Path(local) / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"CLIP model directory {local!r} has no {CONFIG_NAME}")
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        name,
        pretrained=pretrained if local is None and not name.startswith("hf-hub:") else None,
        device=device,
        precision=precision,
        cache_dir=cache_dir,
    )
    tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    model.eval()
    return LoadedClip(model, preprocess_train, preprocess_val, tokenizer, name)


def save_clip_local_dir(
    model: torch.nn.Module, model_cfg: dict[str, Any], out_dir: str | Path, preprocess_cfg: dict | None = None
) -> Path:
    """Save a model in open_clip's hub layout, loadable as ``local-dir:<out_dir>``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    return out


@torch.no_grad()
def encode_texts(clip: LoadedClip, texts: Sequence[str], batch_size: int = 256, device: str = "cpu",
                 normalize: bool = True) -> torch.Tensor:
    """Text embeddings (L2-normalised unless ``normalize`` is False), float32, on CPU."""
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = clip.tokenizer(list(texts[i : i + batch_size])).to(device)
        emb = clip.model.encode_text(tokens).float()
        out.append((F.normalize(emb, dim=-1) if normalize else emb).cpu())
    if not out:
        return torch.zeros(0, clip.model.text_projection.shape[1] if hasattr(clip.model, "text_projection") else 0)
    return torch.cat(out)


@torch.no_grad()
def zero_shot_weights(
    clip: LoadedClip, classnames: Sequence[str], templates: Sequence[str], device: str = "cpu",
    average: str = "normalized",
) -> torch.Tensor:
    """One unit vector per class: the normalised mean of its template embeddings, shape (n_classes, embed_dim).

    ``average="normalized"`` averages unit template embeddings: CLIP's zero-shot classifier (and the
    paper's). ``"raw"`` averages them as the text tower gives them, as the paper's CLIP-score filter does.
    """
    if average not in ("normalized", "raw"):
        raise ValueError(f"template average {average!r} is not 'normalized' or 'raw'")
    rows = []
    for name in classnames:
        emb = encode_texts(clip, [fill_template(t, name) for t in templates], device=device,
                           normalize=average == "normalized")
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)
