"""Downloads from hostile servers (issue 14): every URL ends within its deadline and byte cap, every failure is
recorded with its reason, memory stays bounded, nothing crashes. Real loopback sockets, real img2dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import synret
from hostile_support import HostileServer, image_bytes, zero_png
from synret.fetch import download
from synret.safe_fetch import FetchError, check_url, failure_class, fetch, inspect_body, limits
from synret.shards import iter_images

DEADLINE = 3.0
MAX_BYTES = 8_000_000
CFG = dict(image_size=32, resize_mode="border", encode_format="png", processes=1, threads=32, timeout=10,
           retries=0, shard_size=1000, deadline_s=DEADLINE, max_bytes=MAX_BYTES, max_pixels=40_000_000)

# path on the hostile server -> (img2dataset status, failure class of the reason)
EXPECTED = {
    "/ok.png": ("success", None),
    "/ok.jpg": ("success", None),
    "/redirect-ok": ("success", None),
    "/404": ("failed_to_download", "HTTP 404"),
    "/trickle": ("failed_to_download", "deadline exceeded"),
    "/trickle-headers": ("failed_to_download", "deadline exceeded"),
    "/huge": ("failed_to_download", "too large"),
    "/endless": ("failed_to_download", "too large"),
    "/loop": ("failed_to_download", "redirect loop"),
    "/loop-a": ("failed_to_download", "redirect loop"),
    "/to-file?path=/etc/passwd": ("failed_to_download", "bad redirect"),
    "/html": ("failed_to_download", "not an image"),
    "/truncated.jpg": ("failed_to_resize", "Image decoding error"),  # img2dataset's resizer (OpenCV) refuses it
    "/corrupt.jpg": ("failed_to_resize", "Image decoding error"),
    "/short-body": ("failed_to_download", "incomplete body"),
    "/bomb.png": ("failed_to_download", "decompression bomb"),
}
OTHER = {  # URLs not on the server
    "silent": ("failed_to_download", "deadline exceeded"),
    "refused": ("failed_to_download", "connection refused"),
    "file:///etc/passwd": ("failed_to_download", "unsupported scheme"),
    "ftp://127.0.0.1/x.png": ("failed_to_download", "unsupported scheme"),
    "data:image/png;base64,iVBORw0KGgo=": ("failed_to_download", "unsupported scheme"),
    "javascript:alert(1)": ("failed_to_download", "unsupported scheme"),
    "images/no-scheme.png": ("failed_to_download", "unsupported scheme"),
    "http://127.0.0.1:1/a b.png": ("failed_to_download", "bad URL"),
}


def _all_urls(server: HostileServer) -> dict[str, tuple[str, str | None]]:
    urls = {server.url(path): want for path, want in EXPECTED.items()}
    for url, want in OTHER.items():
        urls[{"silent": server.silent_url, "refused": server.refused_url}.get(url, url)] = want
    return urls


@pytest.mark.parametrize("url, reason", [
    ("http://example.com/a.jpg", None),
    ("HTTPS://example.com:8443/a.jpg?x=1", None),
    ("file:///etc/passwd", "unsupported scheme"),
    ("FILE:///etc/passwd", "unsupported scheme"),
    ("ftp://example.com/a.jpg", "unsupported scheme"),
    ("gopher://example.com/", "unsupported scheme"),
    ("data:image/png;base64,AAAA", "unsupported scheme"),
    ("javascript:alert(1)", "unsupported scheme"),
    ("/etc/passwd", "unsupported scheme"),
    ("../../etc/passwd", "unsupported scheme"),
    ("C:\\Windows\\win.ini", "unsupported scheme"),
    ("//example.com/a.jpg", "unsupported scheme"),
    ("http:///etc/passwd", "bad URL"),
    ("http://example.com/a\x00.jpg", "bad URL"),
    ("http://example.com/a\r\nX-Injected: 1", "bad URL"),
    ("http://example.com/a b.jpg", "bad URL"),
    ("http://example.com:99999/a.jpg", "bad URL"),
    ("", "bad URL"),
    (None, "bad URL"),
    (b"http://example.com/a.jpg", "bad URL"),
])
def test_check_url(url, reason):
    assert failure_class(check_url(url)) == reason


def test_inspect_body():
    assert inspect_body(image_bytes("PNG"), 10_000) is None
    assert inspect_body(b"\x00\x01 not an image format", 10_000) is None  # the resizer decides
    assert failure_class(inspect_body(b"  <html><body>404</body></html>", 10_000)) == "not an image"
    assert failure_class(inspect_body(b"\xef\xbb\xbf<?xml version='1.0'?><svg/>", 10_000)) == "not an image"
    assert failure_class(inspect_body(image_bytes("PNG", size=(50, 50)), 2_000)) == "decompression bomb"
    assert failure_class(inspect_body(zero_png(30000, 30000), 40_000_000)) == "decompression bomb"


def test_limits_defaults():
    assert limits({"timeout": 10}) == {"deadline_s": 30.0, "max_bytes": 20_000_000, "max_pixels": 40_000_000}
    assert limits(CFG) == {"deadline_s": DEADLINE, "max_bytes": MAX_BYTES, "max_pixels": 40_000_000}


def test_fetch_ends_every_url_within_its_deadline():
    """The bounded fetch itself, every hostile URL at once, in this process."""
    results: dict[str, tuple[float, str | None]] = {}

    def one(url):
        start = time.monotonic()
        try:
            data, reason = fetch(url, 10, DEADLINE, MAX_BYTES, 40_000_000), None
            assert data
        except FetchError as e:
            reason = str(e)
        results[url] = (time.monotonic() - start, reason)

    with HostileServer() as server:
        urls = _all_urls(server)
        threads = [threading.Thread(target=one, args=(url,)) for url in urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE + 10)
    assert set(results) == set(urls)
    for url, (status, cls) in urls.items():
        elapsed, reason = results[url]
        assert elapsed < DEADLINE + 2.0, (url, elapsed, reason)
        if status == "failed_to_download":
            assert failure_class(reason) == cls, (url, reason)
        else:  # success, or bytes that img2dataset's resizer refuses
            assert reason is None, (url, reason)
    assert results[server.url("/trickle")][0] >= DEADLINE - 0.1


DRIVER = textwrap.dedent("""
    import json, resource, sys, time
    import pyarrow.parquet as pq
    from synret.fetch import download
    work = sys.argv[1]
    cfg = json.load(open(work + "/cfg.json"))
    candidates = pq.read_table(work + "/candidates.parquet")
    start = time.monotonic()
    manifest, counts = download(candidates, work + "/out/download", cfg, log=lambda m: None)
    wall = time.monotonic() - start
    pq.write_table(manifest, work + "/manifest.parquet")
    json.dump({"counts": counts, "wall_s": wall,
               "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss},
              open(work + "/result.json", "w"))
""")

# img2dataset's processes (the job's child and its spawned worker) on their own hold ~200-400 MB;
# the 3 GB body and the 2.7 GB bomb, read or decoded, would go far past this
MEMORY_BOUND_KB = 800_000
# the job's bound: img2dataset's start-up (spawning its worker, imports: some seconds on a busy 2-core
# machine) plus one deadline (every URL is fetched at once: fewer URLs than threads, retries 0)
WALL_BOUND_S = DEADLINE + 60


def test_download_of_hostile_urls_is_bounded_and_records_every_reason(tmp_path):
    with HostileServer() as server:
        urls = _all_urls(server)
        listed = list(urls) + [server.url("/ok.png"), server.url("/404")]  # duplicates: fetched once each
        candidates = pa.table({
            "label": pa.array([0] * len(urls) + [1, 1], pa.int32()),  # the duplicates: retrieved for class 1 too
            "id": [f"item{i}" for i in range(len(listed))], "url": listed,
            "caption": [f"caption {i}" for i in range(len(listed))],
        })
        pq.write_table(candidates, tmp_path / "candidates.parquet")
        (tmp_path / "cfg.json").write_text(json.dumps(CFG))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(synret.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], env=env, capture_output=True,
                              text=True, timeout=WALL_BOUND_S + 60)
        elapsed = time.monotonic() - start
        served = list(server.served)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    print(f"hostile download: {result['wall_s']:.1f} s in download(), {elapsed:.1f} s with the driver's start-up; "
          f"children's peak RSS {result['children_maxrss_kb'] / 1024:.0f} MB")
    assert result["wall_s"] < WALL_BOUND_S
    assert result["children_maxrss_kb"] < MEMORY_BOUND_KB

    rows = pq.read_table(tmp_path / "manifest.parquet").to_pylist()
    assert len(rows) == len(listed)
    for row in rows:
        status, cls = urls[row["url"]]
        assert (row["status"], failure_class(row["error_message"])) == (status, cls), row
        assert (row["shard"] is not None) == (status == "success")
    # a URL listed twice was fetched once, and both candidates carry its outcome
    by_url: dict[str, list[dict]] = {}
    for row in rows:
        by_url.setdefault(row["url"], []).append(row)
    for url in (server.url("/ok.png"), server.url("/404")):
        first, second = by_url[url]
        assert (first["status"], first["key"], first["error_message"]) == (
            second["status"], second["key"], second["error_message"])
        assert first["label"] != second["label"]
    assert served.count("/ok.png") == 2  # once itself, once at the end of /redirect-ok
    assert served.count("/404") == 1

    counts = result["counts"]
    assert counts["urls"] == len(urls)
    want_classes: dict[str, int] = {}
    for status, cls in urls.values():
        if status != "success":
            want_classes[cls] = want_classes.get(cls, 0) + 1
    assert counts["failures"] == want_classes
    assert counts["status"]["success"] == 3
    assert counts["limits"] == {"deadline_s": DEADLINE, "max_bytes": MAX_BYTES, "max_pixels": 40_000_000}
    # the shards hold the successful images, and only them
    shards = {row["shard"] for row in rows if row["shard"]}
    keys = {key for shard in shards for key, _, _ in iter_images(shard)}
    assert keys == {row["key"] for row in rows if row["status"] == "success"}
