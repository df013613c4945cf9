"""Untrusted pool metadata (issue 14): ids, captions and URLs with path separators, ``..``, absolute paths, NUL
and control characters, 100 kB strings, invalid UTF-8 and non-HTTP schemes go through the workflow's path
(substring scan or random sample -> candidates -> download) without writing outside the results tree, fetching
anything but http(s), reading a local file, or crashing; and every checkpoint read in the code is weights-only."""

from __future__ import annotations

import ast
import io
import os
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hostile_support import HostileServer
from synret.clip_benchmark import LayoutError, extract_split
from synret.fetch import download
from synret.pool_text import as_str, as_text, text_columns
from synret.retrieve import merge_candidates, random_pool_sample
from synret.safe_fetch import failure_class
from synret.substring import TermMatcher, scan_parquet

REPO = Path(__file__).resolve().parents[1]
COLUMNS = {"id": "SAMPLE_ID", "url": "URL", "caption": "TEXT", "nsfw": "NSFW"}
CFG = dict(image_size=32, resize_mode="border", encode_format="png", processes=1, threads=16, timeout=5,
           retries=0, shard_size=1000, deadline_s=3, max_bytes=5_000_000, max_pixels=40_000_000)
SECRET = b"TOP-SECRET-7f3a9c"


def _invalid_strings(values: list[bytes | None]) -> pa.Array:
    """A string-typed array holding these bytes as they are, invalid UTF-8 included (as a parquet writer that
    does not check could leave them): Arrow does not validate on reading, Python fails on the row."""
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers(), null_count=raw.null_count)


def _hostile_rows(server: HostileServer, secret: Path) -> list[tuple]:
    """(id, url, caption, expected status, expected failure class) of the pool's rows, as bytes."""
    ok = server.url("/ok.png")
    long = "x" * 100_000
    return [
        (b"plain-1", f"{ok}?plain".encode(), b"a star", "success", None),
        (b"../../../escape", f"{ok}?dots".encode(), b"star ../../etc/passwd", "success", None),
        (b"/abs/path/id", server.url("/ok.jpg?abs").encode(), b"/etc/passwd star", "success", None),
        (b"sub/dir\\win", f"{ok}?sep".encode(), b"star C:\\Windows\\win.ini", "success", None),
        (b"nul\x00ctl\x01\x1b[31m\n", f"{ok}?ctl".encode(), b"star\x00\x07\x1b[31m\r\n", "success", None),
        (long.encode(), f"{ok}?long".encode(), ("star " + "y" * 100_000).encode(), "success", None),
        (b"bad-utf8-\xff\xfe", f"{ok}?utf8".encode(), b"star \xc3\x28 \xed\xa0\x80", "success", None),
        (b"url-nul", f"{ok}?\x00".encode(), b"star", "failed_to_download", "bad URL"),
        (b"url-crlf", f"{ok}?a\r\nX-Injected: 1".encode(), b"star", "failed_to_download", "bad URL"),
        (b"url-utf8", f"{ok}?\xff".encode("latin-1"), b"star", "failed_to_download", "bad URL"),
        # the server answers 414 and closes with the rest unread: its reset may reach the client first
        (b"url-100k", f"{ok}?{'q' * 100_000}".encode(), b"star", "failed_to_download",
         ("HTTP 414", "connection failed")),
        (b"file-secret", f"file://{secret}".encode(), b"star", "failed_to_download", "unsupported scheme"),
        (b"file-upper", f"FILE://{secret}".encode(), b"star", "failed_to_download", "unsupported scheme"),
        (b"bare-path", str(secret).encode(), b"star", "failed_to_download", "unsupported scheme"),
        (b"relative", b"../secret.txt", b"star", "failed_to_download", "unsupported scheme"),
        (b"ftp", b"ftp://127.0.0.1/secret.txt", b"star", "failed_to_download", "unsupported scheme"),
        (b"js", b"javascript:alert(document.cookie)", b"star", "failed_to_download", "unsupported scheme"),
        (b"data", b"data:text/plain;base64,VE9QLVNFQ1JFVA==", b"star", "failed_to_download", "unsupported scheme"),
        (b"redirect-file", server.url(f"/to-file?path={secret}").encode(), b"star", "failed_to_download",
         "bad redirect"),
        (b"no-url", None, b"star", "failed_to_download", "bad URL"),
    ]


@pytest.fixture()
def pool(tmp_path):
    """The hostile rows as two metadata parts: string columns (invalid UTF-8 left in) and binary columns."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    server = HostileServer()
    rows = _hostile_rows(server, secret)
    ids, urls, captions = ([r[i] for r in rows] for i in range(3))
    half = len(rows) // 2
    parts = []
    for name, sl, make in (("part-0.parquet", slice(0, half), _invalid_strings),
                           ("part-1.parquet", slice(half, None), lambda v: pa.array(v, pa.binary()))):
        table = pa.table({"SAMPLE_ID": make(ids[sl]), "URL": make(urls[sl]), "TEXT": make(captions[sl]),
                          "NSFW": pa.array(["UNLIKELY"] * len(ids[sl]))})
        (tmp_path / "pool").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "pool" / name)
        parts.append(str(tmp_path / "pool" / name))
    expected = {r[0].decode("utf-8", "replace"): (r[3], r[4]) for r in rows}
    with server:
        yield parts, expected, server, secret


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


def test_hostile_metadata_downloads_without_escaping_the_results_tree(pool, tmp_path, monkeypatch):
    parts, expected, server, secret = pool
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a write to a relative path would land here
    before = _tree(tmp_path)

    # the substring scan reads every row, invalid UTF-8 included
    matcher = TermMatcher([(0, "star", ["star"])])
    hits = pa.concat_tables([scan_parquet(part, matcher, COLUMNS, batch_rows=7) for part in parts])
    assert hits.num_rows == len(expected)
    candidates, _ = merge_candidates(None, hits, drop_nsfw=["NSFW"])
    ids = candidates.column("id").to_pylist()
    assert sorted(ids) == sorted(expected)
    assert "bad-utf8-\ufffd\ufffd" in ids and "../../../escape" in ids and "x" * 100_000 in ids

    out = tmp_path / "results" / "download"
    manifest, counts = download(candidates, out, CFG, log=lambda m: None)

    # nothing was written but the download's own folder (it works in download.partial, renamed at the end)
    after = _tree(tmp_path)
    new = [p for p in after if p not in before]
    assert new and all(p == "results" or p.startswith(os.path.join("results", "download")) for p in new), new
    assert not (tmp_path / "results" / "download.partial").exists()
    assert {p: after[p] for p in before} == before  # nothing outside it changed either
    assert not any(cwd.iterdir())
    # the local secret was never read into the results, neither through file:// nor through a redirect
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_bytes(), path
    assert not any(str(secret) in p and not p.startswith("/to-file") for p in server.served)

    rows = manifest.to_pylist()
    assert len(rows) == len(expected)
    for row in rows:
        status, classes = expected[row["id"]]
        assert row["status"] == status, (row["id"][:40], row)
        assert failure_class(row["error_message"]) in (classes if isinstance(classes, tuple) else (classes,)), row
    assert counts["status"]["success"] == sum(s == "success" for s, _ in expected.values())
    # the metadata went through as data: img2dataset's own records keep the ids as they were
    records = pa.concat_tables([pq.read_table(p) for p in sorted((out / "shards").glob("*.parquet"))])
    assert sorted(records.column("pool_id").to_pylist()) == sorted(ids)


def test_random_sample_reads_hostile_metadata(pool):
    parts, expected, _, _ = pool
    table, counts = random_pool_sample(parts, COLUMNS, n=len(expected), seed=0, drop_nsfw=["NSFW"])
    assert counts["candidates"] == len(expected)
    assert sorted(table.column("id").to_pylist()) == sorted(expected)
    urls = table.column("url").to_pylist()
    assert "../secret.txt" in urls and all(not u.startswith("b'") for u in urls if u)  # not bytes' repr


def test_as_text_replaces_invalid_utf8():
    values = [b"ok", b"bad\xff", None, b"nul\x00", "caf\u00e9".encode()]
    want = ["ok", "bad\ufffd", None, "nul\x00", "caf\u00e9"]
    assert as_text(pa.array(values, pa.binary())).to_pylist() == want
    assert as_text(_invalid_strings(values)).to_pylist() == want
    assert as_text(pa.chunked_array([pa.array(values, pa.large_binary())])).to_pylist() == want
    assert as_text(pa.array([1, None, 3])).to_pylist() == ["1", None, "3"]
    valid = pa.array(["a", "b"])
    assert as_text(valid).equals(valid)
    table = text_columns(pa.table({"a": pa.array(values, pa.binary()), "n": [1, 2, 3, 4, 5]}))
    assert table.column("a").to_pylist() == want and table.column("n").to_pylist() == [1, 2, 3, 4, 5]
    assert as_str("x\udcffy") == "x\ufffdy" and as_str(None) is None and as_str(12) == "12"
    pa.array([as_str("\ud800")], pa.string())  # encodable now


def _shard(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/synret-escaped", "a/../../escaped"])
def test_a_benchmark_shard_cannot_unpack_outside_its_folder(tmp_path, name):
    root = tmp_path / "bench"
    root.mkdir()
    (root / "classnames.txt").write_text("a\nb\n")
    _shard(root / "test" / "0.tar", {f"{name}.jpg": b"\xff\xd8 not checked", f"{name}.cls": b"0\n"})
    out = tmp_path / "out" / "images"
    with pytest.raises(LayoutError, match="absolute or parent-relative"):
        extract_split(root, "test", out)
    assert not (tmp_path / "escaped.jpg").exists() and not Path("/tmp/synret-escaped.jpg").exists()
    assert not out.exists() or not any(out.rglob("*.jpg"))


# ----------------------------------------------------------------------------- checkpoint reads


def _python_sources() -> list[Path]:
    return sorted([*(REPO / "src").rglob("*.py"), *(REPO / "workflow_scripts").rglob("*.py"),
                   *(REPO / "benchmarks").rglob("*.py")])


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str) -> list[tuple[int, str]]:
    """(line, what) of each read in ``source`` that could run code from a file: torch.load without
    weights_only=True, numpy load with allow_pickle=True, pickle/joblib/dill loads, yaml.load without a safe
    loader, trust_remote_code=True, weights_only=False, use_safetensors=False."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"):
                    found.append((node.lineno, f"imports {name}"))
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        if func == "torch.load" or func.endswith(".torch.load"):
            if not _is_true(_keyword(node, "weights_only")):
                found.append((node.lineno, f"{func}(...) without weights_only=True"))
        if re.fullmatch(r"(np|numpy)\.load", func) and _is_true(_keyword(node, "allow_pickle")):
            found.append((node.lineno, f"{func}(..., allow_pickle=True)"))
        if func in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader")
            if loader is None or "Safe" not in ast.unparse(loader):
                found.append((node.lineno, f"{func} without a safe Loader"))
        if func in ("yaml.unsafe_load", "yaml.full_load", "torch.jit.load", "pd.read_pickle", "pandas.read_pickle"):
            found.append((node.lineno, func))
        for name, bad in (("weights_only", False), ("trust_remote_code", True), ("use_safetensors", False)):
            value = _keyword(node, name)
            if isinstance(value, ast.Constant) and value.value is bad:
                found.append((node.lineno, f"{name}={bad}"))
    return found


def test_the_audit_finds_unsafe_loads():
    bad = ("import torch, numpy as np, yaml, pickle\n"
           "torch.load(p)\n"
           "torch.load(p, weights_only=False)\n"
           "np.load(p, allow_pickle=True)\n"
           "yaml.load(f)\n"
           "AutoModel.from_pretrained(m, trust_remote_code=True)\n")
    lines = sorted({line for line, _ in unsafe_loads(bad)})
    assert lines == [1, 2, 3, 4, 5, 6]
    good = ("import torch, numpy as np, yaml\n"
            "torch.load(p, map_location='cpu', weights_only=True)\n"
            "np.load(p)\nnp.load(p, allow_pickle=False)\n"
            "yaml.load(f, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))\n"
            "from safetensors.torch import load_file\n")
    assert unsafe_loads(good) == []


def test_every_checkpoint_and_array_read_is_weights_only():
    problems = []
    for path in _python_sources():
        for line, what in unsafe_loads(path.read_text()):
            problems.append(f"{path.relative_to(REPO)}:{line}: {what}")
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        for i, text in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"torch\.load\(|pickle\.load|allow_pickle\s*=\s*True|weights_only\s*=\s*False", text):
                problems.append(f"{path.relative_to(REPO)}:{i}: {text.strip()}")
    assert problems == []
