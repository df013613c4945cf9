"""Webdataset shards: tar files of ``{key}.{png|jpg|webp}`` images with ``{key}.json`` metadata.

Both arms store their images this way: the generator writes shards itself, img2dataset writes them
when it downloads. Later stages read images back by key.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def encode_image(image: np.ndarray | Image.Image, fmt: str) -> bytes:
    """Encode an RGB image as PNG or JPEG (quality 95) bytes."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        pil.convert("RGB").save(buf, format="JPEG", quality=95)
    elif fmt == "png":
        pil.save(buf, format="PNG")
    elif fmt == "webp":
        pil.save(buf, format="WEBP", quality=95)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), mtime
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: str | Path, samples: Iterable[tuple[str, bytes, str, dict]]) -> int:
    """Write (key, image bytes, extension, metadata) samples to a tar, atomically; returns the count.

    Keys may not contain dots: webdataset readers take everything after a member's first dot as its
    extension. Member timestamps are fixed, so the same samples always give the same bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    count = 0
    try:
        with tarfile.open(tmp, "w") as tar:
            for key, data, ext, meta in samples:
                if "." in key or "/" in key:
                    raise ValueError(f"shard key {key!r} contains '.' or '/'")
                _add(tar, f"{key}.{ext.lower()}", data, 0)
                _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode(), 0)
                count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def split_member(name: str) -> tuple[str, str]:
    """``"000001.jpg" -> ("000001", "jpg")``: the key ends at the first dot, as webdataset reads it."""
    key, _, ext = os.path.basename(name).partition(".")
    return key, ext.lower()


def iter_images(path: str | Path) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, image bytes) of every image member of a shard, in tar order."""
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_member(member.name)
            if ext in IMAGE_EXTENSIONS:
                yield key, ext, tar.extractfile(member).read()


def read_images(path: str | Path, keys: Iterable[str]) -> dict[str, bytes]:
    """The image bytes of the given keys in one shard; raises KeyError naming missing keys."""
    wanted = set(keys)
    found = {key: data for key, _, data in iter_images(path) if key in wanted}
    missing = wanted - set(found)
    if missing:
        raise KeyError(f"{path}: no image for key(s) {sorted(missing)[:5]}{' ...' if len(missing) > 5 else ''}")
    return found


def load_images(shards_and_keys: Iterable[tuple[str, str]]) -> list[bytes]:
    """Image bytes for (shard path, key) pairs, in the given order, reading each shard once. A pair without
    a shard (None) names an image file (the task's own training images)."""
    pairs = [(shard if isinstance(shard, str) else None, key) for shard, key in shards_and_keys]
    by_shard: dict[str, list[str]] = {}
    loaded = {}
    for shard, key in pairs:
        if shard is None:
            loaded[(None, key)] = Path(key).read_bytes()
        else:
            by_shard.setdefault(shard, []).append(key)
    for shard, keys in by_shard.items():
        for key, data in read_images(shard, keys).items():
            loaded[(shard, key)] = data
    return [loaded[pair] for pair in pairs]
