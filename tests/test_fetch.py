"""img2dataset downloads over a real loopback HTTP server (no mocks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from synret.fetch import download, finished_urls, run_img2dataset, serve_directory, url_table
from synret.shards import iter_images
from smoke_support import free_port

CFG = dict(image_size=32, resize_mode="border", encode_format="png", processes=1, threads=8, timeout=5,
           retries=0, shard_size=1000)


@pytest.fixture()
def served_images(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    return root, f"http://127.0.0.1:{free_port()}"


def test_serve_directory_serves_and_stops(served_images):
    root, base = served_images
    with serve_directory(root, base):
        data = urllib.request.urlopen(f"{base}/images/3.png", timeout=5).read()
        assert data == (root / "images" / "3.png").read_bytes()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/images/3.png", timeout=2)
    with serve_directory(root, base):  # the port and the lock are free again
        urllib.request.urlopen(f"{base}/images/4.png", timeout=5).read()


def test_port_taken_by_another_program_names_the_port(served_images):
    root, base = served_images
    port = int(base.rsplit(":", 1)[1])
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with pytest.raises(RuntimeError, match=f"port {port}.*world.base_url"):
            with serve_directory(root, base):
                pass


def _serve_in_child(root, base, ready, then: str) -> subprocess.Popen:
    """Another job: serve (or join) ``root`` at ``base``, touch ``ready``, then run ``then``."""
    code = ("import pathlib, sys, time, urllib.request\n"
            "from synret.fetch import serve_directory\n"
            f"with serve_directory({str(root)!r}, {base!r}, log=lambda m: print(m, flush=True)):\n"
            f"    pathlib.Path({str(ready)!r}).touch()\n"
            f"    {then}\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path, proc, seconds=60):
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_jobs_serving_the_same_folder_share_one_server(served_images, tmp_path):
    root, base = served_images
    messages = []
    with serve_directory(root, base, log=messages.append):
        # a second job joins instead of waiting for the port, and its downloads work
        joiner = _serve_in_child(root, base, tmp_path / "joined", then=(
            "time.sleep(1.5); "
            f"assert urllib.request.urlopen({base + '/images/5.png'!r}, timeout=5).read()"))
        _wait_for(tmp_path / "joined", joiner)
        started = time.time()
    # the job that started the server kept it up until the other job was done with it
    assert time.time() - started > 1.0
    assert joiner.wait(timeout=30) == 0
    assert "already served" in joiner.stdout.read()
    assert messages == [f"serving {root.resolve()} at {base}"]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/images/3.png", timeout=2)


def test_a_job_serving_another_folder_waits_its_turn(served_images, tmp_path):
    root, base = served_images
    other = tmp_path / "other"
    other.mkdir()
    (other / "only-here.txt").write_text("other pool")
    with serve_directory(root, base):
        waiter = _serve_in_child(other, base, tmp_path / "served", then=(
            f"print(urllib.request.urlopen({base + '/only-here.txt'!r}, timeout=5).read().decode())"))
        time.sleep(3)
        assert not (tmp_path / "served").exists()  # still waiting for this block to end
    assert waiter.wait(timeout=60) == 0
    out = waiter.stdout.read()
    assert "waiting for port" in out and "other pool" in out


def test_a_job_whose_server_was_killed_fails(served_images, tmp_path):
    root, base = served_images
    owner = _serve_in_child(root, base, tmp_path / "serving", then="time.sleep(600)")
    _wait_for(tmp_path / "serving", owner)
    with pytest.raises(RuntimeError, match="stopped while this job used it"):
        with serve_directory(root, base):
            owner.kill()
            owner.wait(timeout=30)
    with serve_directory(root, base):  # the port is free for a new server
        urllib.request.urlopen(f"{base}/images/4.png", timeout=5).read()


def test_serve_rejects_non_loopback(tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        with serve_directory(tmp_path, "http://example.com:80"):
            pass


def test_download_counts_failures_and_shares_urls(served_images, tmp_path):
    root, base = served_images
    urls = [f"{base}/images/{i}.png" for i in range(10)] + [f"{base}/images/missing{i}.png" for i in range(3)]
    # pool item 0 was retrieved for two classes: one download, two manifest rows
    labels = [i % 2 for i in range(13)] + [1]
    ids = [str(i) for i in range(13)] + ["0"]
    candidates = pa.table({
        "label": pa.array(labels, pa.int32()), "id": ids, "url": urls + [urls[0]],
        "caption": [f"caption {i}" for i in range(14)],
    })
    assert url_table(candidates).num_rows == 13
    lines = []
    with serve_directory(root, base):
        manifest, counts = download(candidates, tmp_path / "out" / "download", CFG, log=lines.append)
    assert counts["urls"] == 13
    assert lines[0] == "downloading 13 unique URLs for 14 candidates"
    assert lines[-1].startswith("download: done, 13 URLs in "), lines  # failed URLs count as done
    assert finished_urls(tmp_path / "out" / "download" / "shards") == 13
    assert counts["status"] == {"success": 10, "failed_to_download": 3}
    assert any("404" in e for e in counts["errors"])
    rows = manifest.to_pylist()
    assert [r["status"] for r in rows[10:13]] == ["failed_to_download"] * 3
    assert all(r["shard"] is None and r["key"] is None for r in rows[10:13])
    assert rows[0]["key"] == rows[13]["key"] and rows[0]["label"] != rows[13]["label"]
    # the shards hold exactly the successful images, with the downloaded bytes' hash recorded
    shard_keys = {key for r in rows if r["shard"] for key, _, _ in iter_images(r["shard"])}
    assert shard_keys == {r["key"] for r in rows if r["status"] == "success"}
    assert not (tmp_path / "out" / "download.partial").exists()
    assert (tmp_path / "out" / "download" / "shards").is_dir()


def test_stale_partial_download_is_discarded(served_images, tmp_path):
    root, base = served_images
    out = tmp_path / "download"
    stale = tmp_path / "download.partial"
    (stale / "shards").mkdir(parents=True)
    (stale / "_input_fingerprint").write_text("an older URL list")
    (stale / "shards" / "00000_stats.json").write_text("{}")  # would make img2dataset skip shard 0
    candidates = pa.table({"label": pa.array([0, 1], pa.int32()), "id": ["1", "2"],
                           "url": [f"{base}/images/1.png", f"{base}/images/2.png"], "caption": ["a", "b"]})
    with serve_directory(root, base):
        manifest, counts = download(candidates, out, CFG, log=lambda m: None)
    assert counts["status"] == {"success": 2}


def test_the_download_process_keeps_torch_out_and_defers_wandb():
    """img2dataset runs in ``synret.img2dataset_child``: torch hidden (webdataset's own stand-ins), wandb and
    albumentations imported but not run until used; a resize still gets the real albumentations."""
    probe = (
        "import sys, importlib.util\n"
        "import synret.img2dataset_child\n"
        "import img2dataset, img2dataset.resizer as r\n"
        "assert sys.modules['torch'] is None\n"
        "from synret.imports import is_deferred\n"
        "assert is_deferred(sys.modules['wandb']) and is_deferred(sys.modules['albumentations'])\n"
        "assert 'wandb.sdk' not in sys.modules and 'albumentations.augmentations' not in sys.modules\n"
        "import numpy as np\n"
        "img = np.zeros((64, 48, 3), np.uint8)\n"
        "out = r.A.SmallestMaxSize(max_size=32)(image=img)['image']\n"
        "assert out.shape[:2] == (43, 32) and 'albumentations.augmentations' in sys.modules\n"
        "print('ok')\n"
    )
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.stdout.strip() == "ok", done.stderr


def test_finished_urls_counts_finished_shards(tmp_path):
    (tmp_path / "00000_stats.json").write_text('{"count": 10, "successes": 7, "failed_to_download": 3}')
    (tmp_path / "00001_stats.json").write_text('{"count": 4, "successes": 4}')
    (tmp_path / "00002_stats.json").write_text('{"count": ')  # being written: not yet
    (tmp_path / "00002.parquet").write_text("")
    assert finished_urls(tmp_path) == 14
    assert finished_urls(tmp_path / "missing") == 0


def test_a_failed_img2dataset_is_an_error_with_its_status(tmp_path):
    lines = []
    with pytest.raises(RuntimeError, match=r"^img2dataset exited with status [1-9]"):
        run_img2dataset(tmp_path / "no-such-list.parquet", tmp_path / "shards", CFG, log=lines.append)
    assert not any("done" in line for line in lines)
