"""A fork server for short torch jobs: pay the imports once per workflow run, not once per job.

On a 2-core machine, importing torch takes ~5 s and torch + open_clip ~13 s of CPU, while a
finetuning cell of the demo computes for a second or two: without help, the grid's ~60 cells would
spend nearly all their time importing. So a job that opts in (``run_job(..., job_server=True)``)
hands its work to a server process that imported torch, torchvision, open_clip, diffusers, pandas and
pyarrow once, and forks a child per job:

- the job process connects to the server's Unix socket (starting the server if none is up, one
  starter at a time under a file lock) and sends its script, argv, working directory, environment
  and its stdin/stdout/stderr file descriptors;
- the server forks; the child takes on the job's environment, directory and descriptors and runs
  the job's script (Snakemake's generated script, preamble included) as ``__main__``; the job's
  ``run_job`` then runs ``main`` in the child (threads set with ``torch.set_num_threads``);
- the child reports its exit status over the connection, and the job process exits with it; where a
  signal ends the child (the out-of-memory killer's SIGKILL), the server, which reaps it, reports the
  signal and the child's peak memory instead, for the job to explain (``synret.exhaustion``). If the
  job process dies (Snakemake cancelled it, a kill), the child notices the closed connection and
  kills itself: no orphan writes outputs after the scheduler gave up on them.

The server never runs a torch operation (one intra-op thread, no CUDA), so every child starts with
the libraries as a fresh process would have them; forked children give the same bits as fresh
processes (tests/test_jobserver.py). It serves one working directory and one state of the package's
code and environment (a change starts a new server), and exits when idle or told to.

It is used only where it helps and is safe: local runs on a machine without a CUDA device, outside
SLURM (a cluster job's server would die with the job). ``SYNRET_JOB_SERVER=0`` turns it off. Snakemake's
benchmark records of a served job measure the waiting job process, so their CPU columns
undercount; the job's own log line ("done: ... CPU s") counts the child.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

CHILD_FLAG = "SYNRET_JOB_SERVER_CHILD"  # set in a served job's environment
IDLE_SECONDS = 90.0  # the server exits after this long without a job
START_TIMEOUT = 300.0  # how long a job waits for a new server to finish its imports
PRELOAD = [  # what the server imports once (missing optional ones are skipped)
    "torch", "torchvision", "open_clip", "pandas", "pyarrow", "pyarrow.parquet", "numpy", "PIL.Image", "faiss",
    "diffusers", "transformers", "snakemake.script",
    # what loading a Stable Diffusion pipeline imports on demand (diffusers and transformers import lazily)
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion", "diffusers.models.unets.unet_2d_condition",
    "diffusers.models.autoencoders.autoencoder_kl", "diffusers.schedulers.scheduling_ddim",
    "diffusers.schedulers.scheduling_dpmsolver_multistep", "diffusers.schedulers.scheduling_pndm",
    "transformers.models.clip.modeling_clip", "transformers.models.clip.tokenization_clip",
    "synret.cells", "synret.curate", "synret.knn", "synret.synthesize", "synret.clip", "synret.embed",
]
# environment that libraries read when they are imported: part of the server's identity
IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFUSERS_", "TORCH_", "XDG_CACHE_HOME", "ATEN_",
                   "MKL_CBWR", "ONEDNN_", "SYNRET_NATIVE_KERNELS", "PYTHONPATH", "CUDA_VISIBLE_DEVICES")


# ----------------------------------------------------------------------------- when to serve


def enabled() -> bool:
    """Serve jobs here? Not inside a served job, not when turned off, not under SLURM or with a GPU."""
    if os.environ.get(CHILD_FLAG) or os.environ.get("SYNRET_JOB_SERVER", "1") in ("0", "false", "no", "off"):
        return False
    if os.environ.get("SLURM_JOB_ID") or not hasattr(socket, "send_fds"):
        return False
    return not (Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").exists())


def in_child() -> bool:
    return bool(os.environ.get(CHILD_FLAG))


def _fingerprint() -> str:
    """Identity of what a server has imported: interpreter, installed packages, this package's code,
    import-time environment, working directory."""
    parts = [sys.prefix, os.path.realpath(sys.executable), os.getcwd(), str(os.getuid())]
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        parts.append(f"{path.relative_to(package)}:{st.st_mtime_ns}:{st.st_size}")
    for entry in sys.path:  # installs and removals touch site-packages
        if entry.endswith("site-packages") and os.path.isdir(entry):
            parts.append(f"{entry}:{os.stat(entry).st_mtime_ns}")
    parts += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(IMPORT_TIME_ENV))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def socket_path() -> Path:
    """The server's socket for this working directory and code (short: Unix socket paths are limited)."""
    return Path(tempfile.gettempdir()) / f"synret-jobs-{_fingerprint()}.sock"


# ----------------------------------------------------------------------------- the job's side


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _start_server(path: Path, log: callable) -> socket.socket | None:
    """Connect to the server, starting it first if none answers (one starter at a time)."""
    lock = path.with_suffix(".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        sock = _connect(path)
        if sock:
            return sock
        path.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and k != "OMP_WAIT_POLICY"}
        log_dir = Path(".snakemake") / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "synret-jobserver.log", "ab") as out:
            server = subprocess.Popen([sys.executable, "-m", "synret.jobserver", "serve", str(path)],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)
        log(f"job server: starting one (pid {server.pid}) at {path}")
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if server.poll() is not None:
                log(f"job server: it exited with status {server.returncode} (see .snakemake/log/synret-jobserver.log)")
                return None
            sock = _connect(path)
            if sock:
                return sock
            time.sleep(0.1)
        log("job server: no answer in time")
        return None


def _send(sock: socket.socket, payload: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(payload).encode()
    header = struct.pack("!I", len(data))
    if fds:
        socket.send_fds(sock, [header], fds)
        sock.sendall(data)
    else:
        sock.sendall(header + data)


def _recv(sock: socket.socket, with_fds: int = 0) -> tuple[dict | None, list[int]]:
    fds: list[int] = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(sock, 4, with_fds)
    else:
        head = sock.recv(4)
    while head and len(head) < 4:
        more = sock.recv(4 - len(head))
        if not more:
            break
        head += more
    if len(head) < 4:
        return None, fds
    size = struct.unpack("!I", head)[0]
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None, fds
        data += chunk
    return json.loads(data), fds


def delegate(log: callable, on_kill: callable | None = None) -> int | None:
    """Run this job's script in a server child; its exit status, or None where no server is to be had.
    ``on_kill(signal, peak_mib, oom_killed)`` reports a child that a signal ended (the server saw it)."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if script is None or not script.is_file():
        return None
    path = socket_path()
    sock = _connect(path) or _start_server(path, log)
    if sock is None:
        return None
    request = {"script": str(script), "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}

    def stop(signum, frame):  # cancelled: closing the connection makes the child kill itself
        sock.close()
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        _send(sock, request, [0, 1, 2])
        reply, _ = _recv(sock)
    except OSError as e:
        log(f"job server: lost the connection ({e})")
        return 1
    finally:
        sock.close()
    if reply is None:
        print("ERROR: the job's server process ended without a status (killed?)", file=sys.stderr, flush=True)
        return 1
    if reply.get("signal") and on_kill is not None:
        on_kill(int(reply["signal"]), reply.get("peak_mib"), reply.get("oom"))
    return int(reply["status"])


def shutdown() -> bool:
    """Tell this working directory's server (for the current code) to exit; True if one was up."""
    sock = _connect(socket_path())
    if sock is None:
        return False
    with contextlib.closing(sock):
        _send(sock, {"shutdown": True})
    return True


# ----------------------------------------------------------------------------- the server's side


def _preload() -> list[str]:
    """Import the heavy libraries without running any torch operation in this process."""
    from .imports import defer
    from .workflow import pin_kernels

    pin_kernels()  # the kernels every job would pin before importing torch
    defer("wandb")  # as a job would (synret.workflow.run_job)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # jobs share the machine: threads that wait passively
    import torch

    torch.set_num_threads(1)  # never a thread pool in the parent: children make their own after fork
    loaded = []
    for name in PRELOAD:
        try:
            __import__(name)
            loaded.append(name)
        except Exception as e:  # noqa: BLE001 - an optional library missing is not an error here
            print(f"preload {name}: {type(e).__name__}: {e}", flush=True)
    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised while preloading; a forked child could not use it")
    return loaded


def _run_child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the job and run its script; report the status; never return."""
    status = 1
    try:
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[CHILD_FLAG] = "1"
        os.chdir(request["cwd"])
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.argv = list(request["argv"])

        def watch():  # the job process went away: so does its work
            try:
                while conn.recv(1):
                    pass
            except OSError:
                pass
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True).start()
        from .exhaustion import prefer_for_oom_kill

        prefer_for_oom_kill()  # the job, not the server all jobs need
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        import runpy

        try:
            runpy.run_path(request["script"], run_name="__main__")
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - report anything, as a fresh interpreter would
            traceback.print_exc()
            status = 1
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            _send(conn, {"status": status})
    finally:
        os._exit(status)


def _reap(children: dict[int, tuple[socket.socket, int | None]], counted: Path | None) -> int:
    """Collect finished children; tell the job of one that a signal ended how it ended (its own status
    message never came). Returns how many were reaped."""
    from .exhaustion import oom_killed_since

    reaped = 0
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped += 1
        conn, before = children.pop(pid, (None, None))
        if conn is None:
            continue
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            with contextlib.suppress(OSError):
                _send(conn, {"status": 128 + signum, "signal": signum, "peak_mib": usage.ru_maxrss / 1024,
                             "oom": oom_killed_since(counted, before)})
        conn.close()
    return reaped


def serve(path: str | Path, idle: float = IDLE_SECONDS) -> None:
    """Preload, listen on ``path`` and fork a child per job until idle for ``idle`` seconds."""
    from .exhaustion import memory_cgroup, oom_kills

    path = Path(path)
    start = time.time()
    loaded = _preload()
    children: dict[int, tuple[socket.socket, int | None]] = {}  # pid -> (its job's connection, OOM kills then)
    counted = memory_cgroup()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_name(path.name + f".{os.getpid()}")
    tmp.unlink(missing_ok=True)
    listener.bind(str(tmp))
    listener.listen(64)
    os.replace(tmp, path)  # the socket appears only once the server can answer
    inode = os.stat(path).st_ino
    print(f"pid {os.getpid()} serving {path} after {time.time() - start:.1f}s of imports: {', '.join(loaded)}",
          flush=True)
    last = time.time()
    try:
        while True:
            ready, _, _ = select.select([listener], [], [], 0.2 if children else 1.0)
            if _reap(children, counted):
                last = time.time()
            if not ready:
                if not children and time.time() - last > idle:
                    print(f"idle for {idle:.0f}s: exiting", flush=True)
                    return
                continue
            conn, _ = listener.accept()
            request, fds = _recv(conn, with_fds=3)
            last = time.time()
            if request is None or request.get("shutdown"):
                conn.close()
                if request is not None:
                    print("told to exit", flush=True)
                    return
                continue
            before = oom_kills(counted)
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other, _ in children.values():
                    other.close()
                _run_child(conn, request, fds)
            for fd in fds:
                os.close(fd)
            children[pid] = (conn, before)  # kept until the child is reaped, to report how it ended
    finally:
        for conn, _ in children.values():
            conn.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:  # still ours, not a successor's
                path.unlink()
        listener.close()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else IDLE_SECONDS)
    else:
        print("usage: python -m synret.jobserver serve SOCKET [IDLE_SECONDS]", file=sys.stderr)
        sys.exit(2)
