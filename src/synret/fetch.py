"""Downloading the retrieved candidates with img2dataset, and serving a local pool over loopback HTTP.

img2dataset runs as its own process (it installs a SIGINT handler that exits 0, which must not
decide our job's fate) and writes webdataset shards plus per-shard parquet and stats. Failed URLs
are counted, never fatal. Work happens in ``<out>.partial`` and is renamed into place at the end, so
an interrupted job leaves no output that a later job would consume, and a rerun with the same URL
list resumes from the shards already finished (img2dataset's incremental mode).

Each URL is fetched by ``synret.safe_fetch`` in place of img2dataset's own fetch: http(s) only, a total
deadline, a byte cap and a pixel cap per URL (``retrieval.download.deadline_s``, ``max_bytes``,
``max_pixels``); every failure's reason is in the manifest (``error_message``) and counted by class.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .progress import Progress
from .safe_fetch import ENV as FETCH_LIMITS_ENV, failure_class, limits as fetch_limits
from .workflow import write_json


# img2dataset reads encode_quality as JPEG/WEBP quality, but as the zlib level (0-9) for PNG
ENCODE_QUALITY = {"jpg": 95, "webp": 95, "png": 6}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, mode)  # released when the file closes, also if this process dies
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _start_server(host: str, port: int, root: Path) -> http.server.ThreadingHTTPServer | None:
    """A server bound to the port, or None when the port is taken."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return None
        raise


@contextlib.contextmanager
def serve_directory(root: str | Path, base_url: str, log: Callable[[str], None] = print) -> Iterator[str]:
    """Serve ``root`` at ``base_url`` (a loopback http URL with a port) for the duration of the block.

    Jobs that serve the same folder on the same port share one server, so their downloads overlap:
    the first job starts it, later ones use it, and the job that started it keeps it up until the
    last of them is done (each user holds a shared lock on a file named after the port). A job that
    serves another folder on a port in use waits its turn. A port held by some other program is an
    error that names it. A job whose server was killed during its block fails, rather than keep the
    downloads that failed with it.
    """
    parsed = urlparse(base_url)
    host, port = parsed.hostname, parsed.port
    if parsed.scheme != "http" or host not in ("127.0.0.1", "localhost") or port is None:
        raise ValueError(f"can only serve on a loopback http URL with a port, not {base_url!r}")
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"folder to serve {str(root)!r} does not exist")
    stem = Path(tempfile.gettempdir()) / f"synret-http-{port}"
    owner_file = stem.with_suffix(".owner")  # the folder being served and the pid of the job serving it
    with open(stem.with_suffix(".users"), "a") as users:
        server, owner, waited = None, None, False
        while True:
            fcntl.flock(users, fcntl.LOCK_SH)  # while any job holds it, the server stays up
            with _flock(stem.with_suffix(".lock"), fcntl.LOCK_EX):  # start-or-join, one job at a time
                server = _start_server(host, port, root)
                if server is not None:
                    write_json(owner_file, {"root": str(root), "pid": os.getpid()})
                    break
                owner = json.loads(owner_file.read_text()) if owner_file.is_file() else None
                if owner is None or not _alive(owner["pid"]):
                    raise RuntimeError(f"port {port} of {base_url} is in use by another program; "
                                       "choose another port in config key 'world.base_url'")
                if owner["root"] == str(root):
                    break
            fcntl.flock(users, fcntl.LOCK_UN)  # another folder is served there: let its jobs finish
            if not waited:
                log(f"waiting for port {port}: it serves {owner['root']} (pid {owner['pid']})")
                waited = True
            time.sleep(1.0)
        if server is None:
            log(f"{root} is already served at {base_url} (by pid {owner['pid']}); using that server")
            yield base_url
            if not _alive(owner["pid"]):
                raise RuntimeError(f"the server of {root} at {base_url} (pid {owner['pid']}) stopped "
                                   "while this job used it; rerun the job")
            return
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        log(f"serving {root} at {base_url}")
        try:
            yield base_url
        finally:
            fcntl.flock(users, fcntl.LOCK_EX)  # wait until no other job uses the server
            server.shutdown()
            server.server_close()
            owner_file.unlink(missing_ok=True)


def url_table(candidates: pa.Table) -> pa.Table:
    """One row per unique URL (a pool item retrieved for two classes is downloaded once)."""
    first = {}
    for i, url in enumerate(candidates.column("url").to_pylist()):
        first.setdefault(url, i)
    rows = candidates.take(pa.array(sorted(first.values()), pa.int64()))
    return pa.table({"url": rows.column("url"), "caption": rows.column("caption"), "pool_id": rows.column("id")})


def _list_hash(urls: pa.Table, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for url in urls.column("url").to_pylist():  # JSON: a missing URL (None) hashes apart from an empty one
        digest.update(json.dumps(url).encode() + b"\n")
    return digest.hexdigest()


def finished_urls(folder: Path) -> int:
    """URLs in the shards img2dataset has finished in ``folder``: the ``count`` of each ``*_stats.json`` it
    writes when a shard is done (successes and failures); one that cannot be read yet counts nothing."""
    n = 0
    for path in Path(folder).glob("*_stats.json"):
        try:
            n += int(json.loads(path.read_text()).get("count", 0))
        except (OSError, ValueError, TypeError, AttributeError):  # being written, or not img2dataset's
            continue
    return n


def run_img2dataset(url_list: Path, out_dir: Path, cfg: dict, log_file=None, log: Callable[[str], None] | None = None,
                    poll: float = 1.0) -> None:
    """Call img2dataset.download in a child process with every option spelled out.

    ``log``: where the download's progress goes (URLs of finished shards, polled every ``poll`` seconds,
    against the list's URLs; shards finished by an earlier, interrupted run are not counted)."""
    kwargs = {
        "url_list": str(url_list),
        "input_format": "parquet",
        "url_col": "url",
        "caption_col": "caption",
        "save_additional_columns": ["pool_id"],
        "output_format": "webdataset",
        "output_folder": str(out_dir),
        "image_size": cfg["image_size"],
        "resize_mode": cfg["resize_mode"],
        "encode_format": cfg["encode_format"],
        "encode_quality": ENCODE_QUALITY[cfg["encode_format"]],
        "processes_count": cfg["processes"],
        "thread_count": cfg["threads"],
        "timeout": cfg["timeout"],
        "retries": cfg["retries"],
        "number_sample_per_shard": cfg["shard_size"],
        "distributor": "multiprocessing",
        "incremental_mode": "incremental",
        "enable_wandb": False,
        "compute_hash": "sha256",
    }
    bounds = fetch_limits(cfg)  # the bounded fetch in every img2dataset process reads them (synret.safe_fetch)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", FETCH_LIMITS_ENV: json.dumps(bounds),
           "OPENCV_IO_MAX_IMAGE_PIXELS": str(bounds["max_pixels"])}  # the resizer's decoder: the same pixel cap
    try:
        total = pq.read_metadata(url_list).num_rows
    except (OSError, pa.ArrowException):  # no readable list: img2dataset says what is wrong with it
        total = None
    before = finished_urls(out_dir)
    if log and before:
        log(f"resuming: {before} URLs are in shards finished before")
    progress = Progress(None if total is None else total - before, "download", log, unit="URLs")
    with subprocess.Popen([sys.executable, "-m", "synret.img2dataset_child", json.dumps(kwargs)], env=env,
                          stdout=log_file, stderr=subprocess.STDOUT if log_file else None) as proc:
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=poll)
                    break
                except subprocess.TimeoutExpired:
                    progress.update_to(finished_urls(out_dir) - before)
        except BaseException:  # as subprocess.run: interrupted, the child goes too
            proc.kill()
            raise
    if returncode != 0:
        raise RuntimeError(f"img2dataset exited with status {returncode}")
    progress.update_to(finished_urls(out_dir) - before)
    progress.done()


def download_results(folder: Path) -> pa.Table:
    """img2dataset's per-sample records (one parquet per shard): url, key, status, error, shard path."""
    tables = []
    for part in sorted(folder.glob("*.parquet")):
        t = pq.read_table(part, columns=["url", "key", "status", "error_message", "sha256"])
        tables.append(t.append_column("shard", pa.array([str(part.with_suffix(".tar"))] * t.num_rows, pa.string())))
    if not tables:
        raise RuntimeError(f"img2dataset wrote no shard records into {folder}")
    return pa.concat_tables(tables)


def download(candidates: pa.Table, out_dir: str | Path, cfg: dict, log: Callable[[str], None] = print,
             log_file=None) -> tuple[pa.Table, dict]:
    """Download every candidate's URL into ``out_dir``; returns (per-candidate manifest, counts)."""
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".partial")
    urls = url_table(candidates)
    fingerprint = _list_hash(urls, cfg)
    stamp = work / "_input_fingerprint"
    if work.exists() and not (stamp.is_file() and stamp.read_text() == fingerprint):
        shutil.rmtree(work)  # an interrupted run over another URL list: start over
    images_dir = work / "shards"
    images_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    pq.write_table(urls, work / "urls.parquet")
    log(f"downloading {urls.num_rows} unique URLs for {candidates.num_rows} candidates")
    run_img2dataset(work / "urls.parquet", images_dir, cfg, log_file, log)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(work, out_dir)
    results = download_results(out_dir / "shards")
    manifest = join_results(candidates, results)
    status = pc.value_counts(results.column("status")).to_pylist()
    counts = {"urls": urls.num_rows, "status": {s["values"]: s["counts"] for s in status}}
    errors = pc.value_counts(pc.drop_null(results.column("error_message"))).to_pylist()
    counts["errors"] = {e["values"][:120]: e["counts"] for e in sorted(errors, key=lambda e: -e["counts"])[:20]}
    # every failure by its class (synret.safe_fetch's reasons are "<class>: <detail>"), all of them
    classes: dict[str, int] = {}
    for status, error in zip(results.column("status").to_pylist(), results.column("error_message").to_pylist()):
        if status != "success":
            name = failure_class(error) or status
            classes[name] = classes.get(name, 0) + 1
    counts["failures"] = dict(sorted(classes.items(), key=lambda item: (-item[1], item[0])))
    counts["limits"] = fetch_limits(cfg)
    return manifest, counts


def join_results(candidates: pa.Table, results: pa.Table) -> pa.Table:
    """Attach each candidate's download outcome (shard, key, status, error) by URL."""
    outcome = {}
    for row in results.to_pylist():
        outcome.setdefault(row["url"], row)
    cols = {"shard": [], "key": [], "status": [], "error_message": [], "sha256": []}
    for url in candidates.column("url").to_pylist():
        row = outcome.get(url, {"status": "not_attempted"})
        ok = row.get("status") == "success"
        cols["shard"].append(row.get("shard") if ok else None)
        cols["key"].append(row.get("key") if ok else None)
        cols["status"].append(row.get("status"))
        cols["error_message"].append(row.get("error_message"))
        cols["sha256"].append(row.get("sha256") if ok else None)
    table = candidates
    for name, values in cols.items():
        table = table.append_column(name, pa.array(values, pa.string()))
    return table
