"""A loopback HTTP server of hostile URLs (real sockets, threads) for the download tests.

Paths (``HostileServer.url(path)``):

- ``/ok.png``, ``/ok.jpg``: valid images; ``/redirect-ok``: a 302 to ``/ok.png``
- ``/404``; ``/trickle``: 200, then one byte every 2 s, forever; ``/trickle-headers``: the status line itself
  one byte every 2 s; ``/huge``: declares 3 GB and streams zeros; ``/endless``: zeros without a length, forever
- ``/loop``: a 302 to itself; ``/loop-a`` <-> ``/loop-b``; ``/to-file?path=P``: a 302 to ``file://P``
- ``/html``: an HTML page served as image/jpeg; ``/truncated.jpg``: the first half of a JPEG (its length
  declared as served); ``/corrupt.jpg``: a JPEG's start, then noise; ``/short-body``: declares 10000 bytes,
  sends 100 and closes; ``/bomb.png``: a 2.6 MB PNG declaring 30000 x 30000 RGB pixels (2.7 GB decoded)

``silent_url``: a port that accepts connections and never answers; ``refused_url``: a port nobody listens on.
"""

from __future__ import annotations

import http.server
import io
import socket
import struct
import threading
import zlib

import numpy as np
from PIL import Image

from smoke_support import free_port


def zero_png(width: int, height: int, rows_per_block: int = 100) -> bytes:
    """A valid RGB PNG of zeros, ``width`` x ``height``, compressed without compressing every byte: one
    block of rows is deflated once (ending byte-aligned, independent of what precedes it) and repeated."""
    row = 1 + 3 * width  # the filter byte, then the pixels
    assert height % rows_per_block == 0
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(bytes(row * rows_per_block)) + deflate.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty last block
    adler = (((row * height) % 65521) << 16) | 1  # Adler-32 of that many zero bytes
    stream = b"\x78\xda" + block * (height // rows_per_block) + final + struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def image_bytes(fmt: str, seed: int = 0, size=(40, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # many downloads connect at once: none waits for a SYN retransmission
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hangs up is expected here
        pass


class HostileServer:
    def __init__(self):
        self.stop = threading.Event()
        self.png = image_bytes("PNG", 0)
        self.jpg = image_bytes("JPEG", 1)
        rng = np.random.default_rng(2)
        self.files = {
            "/ok.png": ("image/png", self.png),
            "/ok.jpg": ("image/jpeg", self.jpg),
            "/html": ("image/jpeg", b"<!DOCTYPE html>\n<html><body><h1>Not found</h1></body></html>\n"),
            "/truncated.jpg": ("image/jpeg", self.jpg[: len(self.jpg) // 2]),
            "/corrupt.jpg": ("image/jpeg", self.jpg[:20] + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()),
            "/bomb.png": ("image/png", zero_png(30000, 30000)),
        }
        self.served: list[str] = []  # request paths, in order
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                server.served.append(self.path)
                try:
                    self._route()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: as it should
                    pass

            def _redirect(self, location: str):
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _route(self):
                path, _, query = self.path.partition("?")
                if path in server.files:
                    kind, body = server.files[path]
                    self.send_response(200)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif path == "/redirect-ok":
                    self._redirect("/ok.png")
                elif path == "/loop":
                    self._redirect("/loop")
                elif path == "/loop-a":
                    self._redirect("/loop-b")
                elif path == "/loop-b":
                    self._redirect(f"http://127.0.0.1:{server.port}/loop-a")
                elif path == "/to-file":
                    self._redirect("file://" + query.removeprefix("path="))
                elif path == "/trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    while not server.stop.wait(2.0):
                        self.wfile.write(b"\0")
                elif path == "/trickle-headers":
                    for byte in b"HTTP/1.0 200 OK\r\n" * 1000:
                        if server.stop.wait(2.0):
                            break
                        self.wfile.write(bytes([byte]))
                elif path in ("/huge", "/endless"):
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    if path == "/huge":
                        self.send_header("Content-Length", str(3 * 10**9))
                    self.end_headers()
                    zeros = bytes(1 << 16)
                    while not server.stop.is_set():
                        self.wfile.write(zeros)
                elif path == "/short-body":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", "10000")
                    self.end_headers()
                    self.wfile.write(server.jpg[:100])
                else:
                    self.send_error(404)

        self.port = free_port()
        self.httpd = _Server(("127.0.0.1", self.port), Handler)
        self.silent = socket.socket()
        self.silent.bind(("127.0.0.1", 0))
        self.silent.listen(64)  # connections complete in the kernel's backlog; nobody reads or answers
        self.silent_url = f"http://127.0.0.1:{self.silent.getsockname()[1]}/never.png"
        self.refused_url = f"http://127.0.0.1:{free_port()}/refused.png"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "HostileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.silent.close()
