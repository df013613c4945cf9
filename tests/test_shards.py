"""Tests of synret.shards: webdataset-style tar shards written and read back by key."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from synret.shards import (
    content_hash,
    decode_image,
    encode_image,
    iter_images,
    load_images,
    read_images,
    split_member,
    write_shard,
)


def _image(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _smooth(seed: int, size: int = 16) -> np.ndarray:
    """A smooth image, so JPEG round-trips it closely."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.integers(40, 200, size=3)
    return np.clip(base + 40 * np.stack([xx, yy, xx * yy], -1), 0, 255).astype(np.uint8)


@pytest.fixture
def shard(tmp_path):
    samples = [
        ("s0000000", encode_image(_image(0), "png"), "png", {"label": 0, "prompt": "a star"}),
        ("s0000001", encode_image(_smooth(1), "jpg"), "jpg", {"label": 1, "prompt": "a circle"}),
        ("s0000002", encode_image(Image.fromarray(_image(2)), "png"), "png", {"label": 0}),
    ]
    path = tmp_path / "out" / "shard-000.tar"
    count = write_shard(path, samples)
    return path, samples, count


def test_write_shard_layout(shard):
    path, samples, count = shard
    assert count == 3
    assert path.is_file()
    assert not list(path.parent.glob("*.partial"))
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert names == ["s0000000.png", "s0000000.json", "s0000001.jpg", "s0000001.json",
                         "s0000002.png", "s0000002.json"]
        meta = json.loads(tar.extractfile("s0000001.json").read())
    assert meta == {"label": 1, "prompt": "a circle"}


def test_iter_images_roundtrip(shard):
    path, samples, _ = shard
    got = list(iter_images(path))
    assert [(k, e) for k, e, _ in got] == [("s0000000", "png"), ("s0000001", "jpg"), ("s0000002", "png")]
    assert [d for _, _, d in got] == [s[1] for s in samples]


def test_png_is_lossless_and_jpg_is_close(shard):
    path, _, _ = shard
    images = {k: np.asarray(decode_image(d)) for k, _, d in iter_images(path)}
    np.testing.assert_array_equal(images["s0000000"], _image(0))
    np.testing.assert_array_equal(images["s0000002"], _image(2))
    jpg = images["s0000001"].astype(int)
    assert jpg.shape == (16, 16, 3)
    assert np.abs(jpg - _smooth(1)).mean() < 4


def test_encode_formats():
    img = _image(3)
    assert encode_image(img, "png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert encode_image(img, "jpg")[:3] == b"\xff\xd8\xff"
    assert encode_image(img, "jpeg")[:3] == b"\xff\xd8\xff"
    webp = encode_image(img, "webp")
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    rgba = Image.fromarray(np.dstack([img, np.full((16, 16), 255, np.uint8)]), "RGBA")
    assert decode_image(encode_image(rgba, "jpg")).mode == "RGB"
    with pytest.raises(ValueError, match="'gif'"):
        encode_image(img, "gif")


def test_decode_image_is_rgb():
    gray = Image.fromarray(np.full((4, 4), 7, np.uint8), "L")
    out = decode_image(encode_image(gray, "png"))
    assert out.mode == "RGB" and out.size == (4, 4)


def test_read_images_by_key(shard):
    path, samples, _ = shard
    got = read_images(path, ["s0000002", "s0000000"])
    assert got == {"s0000002": samples[2][1], "s0000000": samples[0][1]}


def test_read_images_missing_keys_named(shard):
    path, _, _ = shard
    with pytest.raises(KeyError) as info:
        read_images(path, ["s0000000", "nope-1", "nope-2"])
    message = str(info.value)
    assert "nope-1" in message and "nope-2" in message
    assert str(path) in message
    assert "s0000000" not in message


def test_read_images_many_missing_keys_truncated(shard):
    path, _, _ = shard
    with pytest.raises(KeyError, match=re.escape(" ...")):
        read_images(path, [f"k{i}" for i in range(7)])


def test_load_images_preserves_order_across_shards(tmp_path):
    data = {}
    for s in range(3):
        samples = []
        for i in range(4):
            key = f"{s}-{i}"
            blob = encode_image(_image(10 * s + i, 8), "png")
            data[(str(tmp_path / f"{s}.tar"), key)] = blob
            samples.append((key, blob, "png", {}))
        write_shard(tmp_path / f"{s}.tar", samples)
    order = [(str(tmp_path / "2.tar"), "2-3"), (str(tmp_path / "0.tar"), "0-1"), (str(tmp_path / "2.tar"), "2-0"),
             (str(tmp_path / "1.tar"), "1-2"), (str(tmp_path / "0.tar"), "0-1"), (str(tmp_path / "0.tar"), "0-0")]
    assert load_images(order) == [data[pair] for pair in order]
    assert load_images([]) == []


def test_load_images_missing_key(tmp_path):
    write_shard(tmp_path / "a.tar", [("k", encode_image(_image(0, 4), "png"), "png", {})])
    with pytest.raises(KeyError, match="missing"):
        load_images([(str(tmp_path / "a.tar"), "k"), (str(tmp_path / "a.tar"), "missing")])


def test_dotted_keys_are_refused_and_extensions_lowercased(tmp_path):
    blob = encode_image(_image(5, 4), "png")
    path = tmp_path / "dots.tar"
    with pytest.raises(ValueError, match="a.b"):
        write_shard(path, [("a.b", blob, "png", {})])
    assert not path.exists() and not list(tmp_path.glob("*.partial"))
    write_shard(path, [("ab", blob, "PNG", {})])
    assert list(iter_images(path)) == [("ab", "png", blob)]
    assert read_images(path, ["ab"]) == {"ab": blob}


def test_shards_are_byte_identical_across_writes(tmp_path):
    blob = encode_image(_image(5, 4), "png")
    write_shard(tmp_path / "a.tar", [("k", blob, "png", {"x": 1})])
    write_shard(tmp_path / "b.tar", [("k", blob, "png", {"x": 1})])
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_iter_images_skips_non_images_and_directories(tmp_path):
    path = tmp_path / "mixed.tar"
    blob = encode_image(_image(6, 4), "png")
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("sub")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in (("sub/000.png", blob), ("sub/000.txt", b"a caption"), ("sub/000.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert list(iter_images(path)) == [("000", "png", blob)]


def test_write_shard_replaces_existing_file(tmp_path):
    path = tmp_path / "x.tar"
    write_shard(path, [("a", b"1", "png", {})])
    assert write_shard(path, [("b", b"2", "png", {}), ("c", b"3", "jpg", {})]) == 2
    assert [k for k, _, _ in iter_images(path)] == ["b", "c"]
    assert write_shard(tmp_path / "empty.tar", []) == 0
    assert list(iter_images(tmp_path / "empty.tar")) == []
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("000001.jpg", ("000001", "jpg")),
        ("dir/sub/000001.JPG", ("000001", "jpg")),
        ("s0000001.json", ("s0000001", "json")),
        ("x.tar.gz", ("x", "tar.gz")),
    ],
)
def test_split_member(name, expected):
    assert split_member(name) == expected


def test_content_hash():
    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash(b"abd") != content_hash(b"abc")
    assert len(content_hash(b"")) == 64


def test_failed_write_keeps_the_previous_shard(tmp_path):
    path = tmp_path / "x.tar"
    write_shard(path, [("a", b"1", "png", {})])

    def broken():
        yield "b", b"2", "png", {}
        raise RuntimeError("generator crashed")

    with pytest.raises(RuntimeError, match="generator crashed"):
        write_shard(path, broken())
    assert [(k, d) for k, _, d in iter_images(path)] == [("a", b"1")]
    assert not list(tmp_path.glob("*.partial"))


# Reading by key without tarfile (shards._scan): the bytes tarfile reads, on archives in the forms writers
# produce; any other form is read by tarfile itself.


def _tar(path, members, fmt=tarfile.PAX_FORMAT, mode="w", **kwargs):
    """A tar of (name, data, mtime) members, written by Python's tarfile; data ("type", t): a member of
    type t (a directory, a link) without data."""
    with tarfile.open(path, mode, format=fmt, **kwargs) as tar:
        for name, data, mtime in members:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if isinstance(data, bytes):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = data = data[1]
                if data == tarfile.SYMTYPE:
                    info.linkname = "elsewhere.png"
                tar.addfile(info)
    return path


def _by_tarfile(path, keys):
    """What reading by key gave before the scan: every member through tarfile."""
    keys = set(keys)
    return {key: data for key, _, data in iter_images(path) if key in keys}


def _scanned(path):
    import mmap

    from synret.shards import _scan

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _scan(data)


def _webdataset_members(n, long_dir=""):
    """Image, caption and metadata members as webdataset's writers (img2dataset's) lay them out, with
    fractional mtimes: tarfile writes a pax header before each member."""
    members = []
    for i in range(n):
        key = f"{long_dir}{i:09d}"
        members += [(f"{key}.json", json.dumps({"key": i}).encode(), 1796220336.5899284 + i),
                    (f"{key}.png", encode_image(_image(i, 8 + i % 5), "png"), 1796220336.25),
                    (f"{key}.txt", f"caption {i}".encode() * (i + 1), 1796220336.75)]
    return members


@pytest.mark.parametrize("writer", ["write_shard", "pax_mtimes", "pax_long_names", "gnu_long_names",
                                   "ustar_prefix", "v7"])
def test_reading_by_key_gives_tarfiles_bytes(tmp_path, writer):
    path = tmp_path / "s.tar"
    long_dir = "d" * 60 + "/" + "e" * 70 + "/"  # a name of 140 characters and more: longer than the 100 of a header
    if writer == "write_shard":
        write_shard(path, [(f"{i:06d}", encode_image(_image(i, 8 + i), "png"), "png", {"i": i}) for i in range(12)])
    elif writer == "pax_mtimes":
        _tar(path, _webdataset_members(40))
    elif writer == "pax_long_names":
        _tar(path, _webdataset_members(12, long_dir) + [("ü" * 3 + "/ünï.png", b"\x89PNG non-ascii", 0)])
    elif writer == "gnu_long_names":
        _tar(path, _webdataset_members(12, long_dir), fmt=tarfile.GNU_FORMAT)
    elif writer == "ustar_prefix":
        _tar(path, [(m[0], m[1], int(m[2])) for m in _webdataset_members(12, long_dir)], fmt=tarfile.USTAR_FORMAT)
    else:
        _tar(path, [(name, data, 0) for name, data, _ in _webdataset_members(5)], fmt=tarfile.USTAR_FORMAT)
        raw = bytearray(path.read_bytes())  # no ustar magic: an old-style header (tarfile reads both)
        raw[257:265] = bytes(8)
        raw[148:156] = b"%06o\0 " % (256 + sum(raw[:148]) + sum(raw[156:512]))
        path.write_bytes(bytes(raw))
    members = _scanned(path)
    assert members is not None  # read by the scan, not by tarfile
    with tarfile.open(path) as tar:
        assert [m[0] for m in members] == [m.name for m in tar if m.isfile()]
    keys = [key for key, _, _ in iter_images(path)]
    assert len(keys) >= 5 and any(len(name) > 100 for name, _, _ in members) == ("long" in writer or "prefix" in writer)
    assert read_images(path, keys) == _by_tarfile(path, keys)
    assert read_images(path, keys[::3]) == _by_tarfile(path, keys[::3])
    with pytest.raises(KeyError, match="absent"):
        read_images(path, keys[:2] + ["absent"])


def test_reading_by_key_skips_what_tarfile_skips(tmp_path):
    """Directories, links, members that are no images, a key written twice (the last one wins)."""
    path = _tar(tmp_path / "s.tar", [
        ("sub", ("type", tarfile.DIRTYPE), 0), ("sub/000.png", b"first", 1.5), ("sub/000.txt", b"caption", 0),
        ("link.png", ("type", tarfile.SYMTYPE), 0), ("hard.png", ("type", tarfile.LNKTYPE), 0), ("000.png", b"second", 0),
        ("001.JPG", b"upper case", 0), ("002.json", b"{}", 0), ("noext", b"x", 0),
    ])
    assert _scanned(path) is not None
    keys = ["000", "001", "link", "hard"]
    with pytest.raises(KeyError) as info:
        read_images(path, keys)
    assert "hard" in str(info.value) and "link" in str(info.value)
    assert read_images(path, keys[:2]) == _by_tarfile(path, keys[:2]) == {"000": b"second", "001": b"upper case"}


def test_unusual_archives_are_read_by_tarfile(tmp_path):
    """Forms the scan leaves to tarfile: compressed archives, global pax headers, base-256 numbers, a bad
    checksum, a truncated last member, an empty file. Reading by key gives what tarfile gives, errors included."""
    members = [(name, data, 0) for name, data, _ in _webdataset_members(6)]
    keys = [f"{i:09d}" for i in range(6)]
    cases = {
        "gzip": _tar(tmp_path / "gz.tar.gz", members, mode="w:gz"),
        "global_pax": _tar(tmp_path / "g.tar", members, pax_headers={"comment": "global"}),
    }
    big = tmp_path / "base256.tar"
    with tarfile.open(big, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, _ in members:
            info = tarfile.TarInfo(name)
            info.size, info.uid = len(data), 8 ** 8  # a uid beyond 7 octal digits: GNU's base-256 form
            tar.addfile(info, io.BytesIO(data))
    cases["base256"] = big
    for name, path in cases.items():
        assert _scanned(path) is None, name
        assert read_images(path, keys) == _by_tarfile(path, keys), name

    plain = _tar(tmp_path / "plain.tar", members)
    raw = plain.read_bytes()
    assert _scanned(plain) is not None
    with tarfile.open(plain) as tar:
        third = tar.getmembers()[3]  # the second sample's image: tarfile stops at a bad header there
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(raw[: third.offset + 140] + b"9" + raw[third.offset + 141 :])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(raw[: third.offset_data + 10])
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    for path in (corrupt, truncated):
        assert _scanned(path) is None
        with pytest.raises((KeyError, tarfile.ReadError)) as scanned_error:
            read_images(path, keys)
        with pytest.raises(scanned_error.type) as tarfile_error:
            _by_tarfile_or_error(path, keys)
        assert str(scanned_error.value) == str(tarfile_error.value)
    with pytest.raises(tarfile.ReadError):
        read_images(empty, keys)
    assert read_images(corrupt, keys[:1]) == _by_tarfile(corrupt, keys[:1])


def _by_tarfile_or_error(path, keys):
    """read_images as it was: tarfile's members, KeyError naming the missing keys."""
    found = _by_tarfile(path, keys)
    missing = set(keys) - set(found)
    if missing:
        raise KeyError(f"{path}: no image for key(s) {sorted(missing)[:5]}{' ...' if len(missing) > 5 else ''}")
    return found
