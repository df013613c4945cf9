"""Webdataset shards: tar files of ``{key}.{png|jpg|webp}`` images with ``{key}.json`` metadata.

Both arms store their images this way: the generator writes shards itself, img2dataset writes them
when it downloads. Later stages read images back by key.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import re
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
    """The image bytes of the given keys in one shard; raises KeyError naming missing keys. The bytes
    ``iter_images`` gives (of a key's last member where a key occurs twice), found by ``_scan``."""
    wanted = set(keys)
    found = _read_mapped(path, wanted)
    if found is None:  # a form only tarfile reads as tarfile does
        found = {key: data for key, _, data in iter_images(path) if key in wanted}
    missing = wanted - set(found)
    if missing:
        raise KeyError(f"{path}: no image for key(s) {sorted(missing)[:5]}{' ...' if len(missing) > 5 else ''}")
    return found


def _read_mapped(path: str | Path, wanted: set[str]) -> dict[str, bytes] | None:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < _BLOCK:
            return None
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file system without memory maps
            return None
    with data:
        members = _scan(data)
        if members is None:
            return None
        places = {}
        for name, start, size in members:
            key, ext = split_member(name)
            if key in wanted and ext in IMAGE_EXTENSIONS:
                places[key] = (start, size)
        return {key: data[start : start + size] for key, (start, size) in places.items()}


# Reading a shard's member list without tarfile. tarfile builds a TarInfo per header (every field parsed,
# pax records decoded, Python calls per member): for a 3,600-member img2dataset shard, where every member
# also has a pax header (fractional mtimes), that is ~0.35 s of a cell's reading 200 images from it.
# ``_scan`` reads only what names a member and places its data: the name (or a pax "path", or a GNU long
# name), the size (or a pax "size") and the type. It takes a header as tarfile does only in the forms it
# knows: octal fields, a correct unsigned checksum, the types below, well-formed pax records, an end-of-archive
# block or the file's end after a member. Anything else (compressed archives, global pax headers, sparse
# files, base-256 numbers, truncated data, a header tarfile would refuse or stop at) gives None, and tarfile
# reads the shard.
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)  # tarfile's regular files, less sparse ones
_NO_DATA_TYPES = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
                  tarfile.FIFOTYPE)  # a header alone: tarfile skips no data after them
_NUMBER_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (329, 337), (337, 345))  # but the checksum


class _Unusual(Exception):
    """A form ``_scan`` leaves to tarfile."""


def _octal(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _nts(field: bytes) -> str:
    """A header's string field as tarfile decodes it (to its first NUL)."""
    return field.split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")


def _octal_fields(fields: np.ndarray, values: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Number fields (n, width) of headers: whether each has a form tarfile reads as ``_octal`` does
    (spaces, octal digits, spaces, to the first NUL: a subset of the forms it reads), and with ``values``
    their values."""
    width = fields.shape[1]
    pos = np.arange(width)
    nul = fields == 0
    inside = pos < np.where(nul.any(1), nul.argmax(1), width)[:, None]
    digit = (fields >= ord("0")) & (fields <= ord("7")) & inside
    count = digit.sum(1)
    first, last = digit.argmax(1), width - 1 - digit[:, ::-1].argmax(1)
    valid = ((fields == ord(" ")) | digit | ~inside).all(1) & ((count == 0) | (last - first + 1 == count))
    if not values:
        return valid, None
    shifts = 3 * np.clip(last[:, None] - pos, 0, None)
    return valid, np.where(digit, (fields.astype(np.int64) - ord("0")) << shifts, 0).sum(1)


def _valid_headers(blocks: list[bytes]) -> bool:
    """Whether tarfile takes every header as it is: every number field of the forms ``_octal_fields``
    reads (tarfile refuses a header with a bad one), the unsigned checksum right."""
    heads = np.frombuffer(b"".join(blocks), np.uint8).reshape(len(blocks), _BLOCK)
    for start, end in _NUMBER_FIELDS:
        if not _octal_fields(heads[:, start:end])[0].all():
            return False
    valid, checksum = _octal_fields(heads[:, 148:156], values=True)
    unsigned = heads.sum(1, dtype=np.int64) - heads[:, 148:156].sum(1, dtype=np.int64) + 256
    return bool(valid.all() and (checksum == unsigned).all())


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """The records of a pax extended header's data, when every one is well formed ("%d %s=%s\\n")."""
    records, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        end = pos + length
        keyword, equals, value = data[space + 1 : end - 1].partition(b"=")
        if length < 5 or end > len(data) or data[end - 1 : end] != b"\n" or not keyword or not equals:
            raise _Unusual
        records[keyword] = value
        pos = end
    return records


def _scan(data) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of every regular file member of an uncompressed tar's bytes, in order, as
    tarfile reads them; None when the archive has a form left to tarfile (see above)."""
    try:
        return _members(data)
    except (_Unusual, ValueError, UnicodeDecodeError):
        return None


def _members(data) -> list[tuple[str, int, int]]:
    members, blocks, offset, end = [], [], 0, len(data)
    extended = None  # (name, size) a pax header or GNU long name gives the next member (None: not given)
    while True:
        block = data[offset : offset + _BLOCK]
        if not block or block == _ZERO_BLOCK:  # the file's end, or the end-of-archive block
            if extended is not None or offset == 0:
                raise _Unusual  # an extended header without its member, or no member at all
            if not _valid_headers(blocks):
                raise _Unusual
            return members
        if len(block) < _BLOCK:
            raise _Unusual
        blocks.append(block)  # checked at the end, all at once (a bad one makes this scan's result moot)
        kind, size = block[156:157], _octal(block[124:136])
        if size < 0:
            raise _Unusual
        start = offset + _BLOCK
        padded = start + -(-size // _BLOCK) * _BLOCK
        if kind in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME):
            if extended is not None or padded > end:
                raise _Unusual
            if kind == tarfile.GNUTYPE_LONGNAME:  # its data blocks, to the first NUL
                extended = (_nts(data[start:padded]), None)
            else:
                raw = data[start : start + size]
                if b"hdrcharset" in raw or b"GNU.sparse" in raw or data[start + size : start + size + 1] not in (b"", b"\0"):
                    raise _Unusual  # records that change how tarfile reads a member; padding it would read on in
                records = _pax_records(raw)
                extended = (records[b"path"].decode("utf-8").rstrip("/") if b"path" in records else None,
                            int(records[b"size"]) if b"size" in records else None)
            offset = padded
            continue
        name = None
        if extended is not None:
            name, size = extended[0], size if extended[1] is None else extended[1]
            extended = None
        if kind in _NO_DATA_TYPES:
            if size:  # tarfile would not skip its data
                raise _Unusual
            offset = start
            continue
        if kind not in _FILE_TYPES:
            raise _Unusual  # global pax headers, GNU sparse files and long link names, unknown types
        if kind == tarfile.AREGTYPE and block[:100].split(b"\0", 1)[0].endswith(b"/"):
            raise _Unusual  # tarfile's old-style directory
        if name is None:
            name = _nts(block[:100])
            prefix = _nts(block[345:500])
            if prefix:  # a ustar name split in two
                name = prefix + "/" + name
        padded = start + -(-size // _BLOCK) * _BLOCK
        if size < 0 or padded > end:
            raise _Unusual  # tarfile: unexpected end of data
        members.append((name, start, size))
        offset = padded


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
