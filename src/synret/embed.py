"""CLIP image embeddings of encoded images or image files, in batches, with the model's own preprocessing."""

from __future__ import annotations

import sys
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .augment import evaluation_transform
from .clip import LoadedClip
from .progress import Progress
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


# How data-loader workers start: forked, deliberately (Python 3.14 makes 'forkserver' the Linux default).
# - A fork inherits the imported libraries and the dataset as they are: the image bytes a job already holds
#   (a shard's, the training subset's) and the path lists are shared copy-on-write, where 'forkserver' and
#   'spawn' would pickle them to every worker and import torch in each (seconds of CPU apiece: what the
#   job server, synret.jobserver, exists to save).
# - It is safe here. Workers only read, decode and transform images on the CPU; batches reach the GPU in
#   the parent (pin_memory's thread starts after the fork), so no worker inherits or touches a CUDA context.
#   Torch's worker loop sets one intra-op thread before the first image, so a worker never enters an
#   OpenMP parallel region, whose thread pool does not survive a fork (libgomp's): the deadlock that forking
#   after multi-threaded torch work can cause. A job served by the job server is itself a fork of a process
#   that ran no torch operation; forking its workers is the same as forking a fresh job's
#   (tests/test_jobserver.py runs a loader with workers in a served job after two-thread torch work).
# Elsewhere (macOS, Windows) the platform's default start method is kept.
WORKER_START = "fork" if sys.platform.startswith("linux") else None


def image_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, device: str = "cpu", **kwargs) -> DataLoader:
    """A loader that reads, decodes and preprocesses images in ``num_workers`` worker processes (0: in this
    process), batches in order unless ``kwargs`` ask to shuffle. Workers end with each pass over the data
    (no persistent workers); on CUDA, batches come in pinned memory. Deterministic transforms give the same
    bits with any number of workers; random augmentations draw per worker (training's finetune.num_workers
    is part of its result)."""
    workers = int(num_workers)
    extra = {"multiprocessing_context": WORKER_START} if workers > 0 and WORKER_START else {}
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=False,
                      pin_memory=str(device).startswith("cuda"), **extra, **kwargs)


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


def evaluation_batches(items: Sequence[bytes | str | np.ndarray], transform: Callable, batch_size: int,
                       num_workers: int = 0, device: str = "cpu", progress: Progress | None = None,
                       ) -> Iterator[torch.Tensor]:
    """The items preprocessed by an eval ``transform``, in order, as batches on ``device``: open_clip's eval
    transform in its faster form, the same bits (``augment.evaluation_transform``: the loader gives uint8
    pixels, normalised here on ``device``); any other transform as it is. ``progress`` (its owner calls
    ``done``) counts each batch's images once the caller has taken the next one or finished."""
    transform, finish_batch = evaluation_transform(transform)
    for x in image_loader(ImageDataset(items, transform), batch_size, num_workers, device):
        n = len(x)
        x = x.to(device)
        yield x if finish_batch is None else finish_batch(x)
        if progress is not None:
            progress.update(n)


@torch.no_grad()
def embed_images(
    clip: LoadedClip, items: Sequence[bytes | str | np.ndarray], batch_size: int = 256, device: str = "cpu",
    num_workers: int = 0, precision: str = "fp32", progress: Progress | None = None,
) -> np.ndarray:
    """L2-normalised image embeddings (float32, one row per item, in order); ``num_workers`` processes
    decode the images (see ``image_loader``), preprocessed by the model's eval transform in its faster form,
    the same bits (``augment.evaluation_transform``). ``progress``: counts the embedded images (see
    ``evaluation_batches``)."""
    out = []
    for x in evaluation_batches(items, clip.preprocess_val, batch_size, num_workers, device, progress):
        with autocast(device, precision):
            emb = clip.model.encode_image(x)
        out.append(F.normalize(emb.float(), dim=-1).cpu().numpy())
    if not out:
        return np.zeros((0, clip.model.visual.output_dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)
