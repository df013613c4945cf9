"""CLIP image embeddings of encoded images or image files, in batches, with the model's own preprocessing."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .clip import LoadedClip
from .shards import decode_image


class ImageDataset(Dataset):
    """Images given as encoded bytes, file paths or uint8 arrays, each transformed by ``transform``."""

    def __init__(self, items: Sequence[bytes | str | np.ndarray], transform: Callable, labels: Sequence[int] | None = None):
        self.items, self.transform, self.labels = items, transform, labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        if isinstance(item, bytes):
            image = decode_image(item)
        elif isinstance(item, np.ndarray):
            image = Image.fromarray(item)
        else:
            image = Image.open(item).convert("RGB")
        x = self.transform(image)
        return x if self.labels is None else (x, self.labels[i])


AUTOCAST_DTYPES = {"amp_bf16": torch.bfloat16, "amp": torch.float16}


def autocast(device: str, precision: str):
    """The autocast context of a resolved precision (see ``cells.resolve_precision``): ``amp_bf16``
    bf16 autocast on the device (CPU included), ``amp`` fp16 autocast, ``fp32`` none. Weights stay fp32."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device_type, dtype=AUTOCAST_DTYPES[precision])
    if precision != "fp32":
        raise ValueError(f"precision {precision!r} is not one of fp32, amp_bf16, amp")
    return torch.autocast(device_type, enabled=False)


@torch.no_grad()
def embed_images(
    clip: LoadedClip, items: Sequence[bytes | str | np.ndarray], batch_size: int = 256, device: str = "cpu",
    num_workers: int = 0, precision: str = "fp32",
) -> np.ndarray:
    """L2-normalised image embeddings (float32, one row per item, in order)."""
    loader = DataLoader(ImageDataset(items, clip.preprocess_val), batch_size=batch_size, num_workers=num_workers)
    out = []
    for x in loader:
        with autocast(device, precision):
            emb = clip.model.encode_image(x.to(device))
        out.append(F.normalize(emb.float(), dim=-1).cpu().numpy())
    if not out:
        return np.zeros((0, clip.model.visual.output_dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)
