"""A bounded HTTP(S) fetch that takes the place of img2dataset's ``download_image`` in the download job.

img2dataset fetches a URL with ``urllib.request.urlopen(url, timeout=...)`` and reads the whole body into
memory. Its timeout is per socket read, so a server that sends a byte every few seconds holds a download
thread forever; a huge body is read whole; urllib opens ``file://`` and ``ftp://`` URLs as readily as
``http://`` ones. Here, for every URL:

- only ``http`` and ``https`` are fetched (the URL and every redirect); anything else fails, never opened;
- a total deadline (``deadline_s``, wall clock over connecting, the request, the headers and the body,
  redirects included) ends the fetch wherever it is: a watchdog thread shuts the socket down, which wakes a
  read blocked in the kernel. Each read also has the per-read ``timeout``. Name resolution (DNS) is the one
  step outside both (as in urllib);
- the body is read in chunks up to ``max_bytes``: a larger ``Content-Length`` fails before the body is read,
  a body that runs past the cap fails as it does;
- at most ``MAX_REDIRECTS`` redirects, none to a URL already visited;
- a body that is HTML/XML (whatever its Content-Type says), or an image whose header declares more than
  ``max_pixels`` pixels (a decompression bomb), fails before img2dataset's resizer decodes it. The resizer
  decodes the rest with OpenCV (``OPENCV_IO_MAX_IMAGE_PIXELS`` is set to the same cap in the child, a
  second guard for formats Pillow cannot read); truncated and corrupt images fail there as
  "Image decoding error".

Every failure is a reason string of the form ``"<class>: <detail>"`` (:func:`failure_class` takes the class),
returned as img2dataset's own function returns its errors, so img2dataset records it in its per-sample parquet
(``error_message``, status ``failed_to_download``). Nothing here raises into img2dataset's thread pool.

Bounds, per URL: ``(retries + 1) * deadline_s`` seconds (img2dataset retries a failed URL ``retries`` times)
plus name resolution; at most ``max_bytes`` (+ one 64 KiB chunk) of body held. Per download process,
img2dataset holds at most ``2 * threads`` fetched bodies waiting for the resizer, one decode at a time of at
most ``max_pixels`` pixels.

The limits reach every img2dataset process through the environment variable ``SYNRET_FETCH_LIMITS`` (JSON:
``deadline_s``, ``max_bytes``, ``max_pixels``), which :func:`synret.fetch.run_img2dataset` sets.
"""

from __future__ import annotations

import heapq
import http.client
import io
import itertools
import json
import os
import re
import socket
import ssl
import threading
import time
from urllib.parse import urljoin, urlsplit
from urllib.request import getproxies, proxy_bypass

ENV = "SYNRET_FETCH_LIMITS"
DEADLINE_FACTOR = 3  # deadline_s when not given: this many per-read timeouts
DEFAULT_MAX_BYTES = 20_000_000
DEFAULT_MAX_PIXELS = 40_000_000
MAX_REDIRECTS = 5
CHUNK = 1 << 16
REDIRECT_CODES = (301, 302, 303, 307, 308)
# urllib (http.client) refuses these in a URL too; space included
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


class FetchError(Exception):
    """A failed fetch; ``str()`` is its reason, ``"<class>: <detail>"``."""


def failure_class(reason: str | None) -> str | None:
    """The class of a reason (the part before its first ``": "``), to count failures by kind."""
    if reason is None:
        return None
    return reason.split(": ", 1)[0][:80]


def _short(text: str, n: int = 200) -> str:
    text = repr(text)
    return text if len(text) <= n else text[: n - 3] + "..."


def check_url(url) -> str | None:
    """Why ``url`` is not fetched (a reason string), or None when it may be: an http(s) URL with a host."""
    if url is None or url == "":
        return "bad URL: empty"
    if not isinstance(url, str):
        return f"bad URL: not text ({type(url).__name__})"
    if _BAD_URL_CHARS.search(url):
        return f"bad URL: contains control characters or whitespace: {_short(url, 120)}"
    try:
        parts = urlsplit(url)
        port = parts.port  # noqa: F841 - raises on a bad port
    except ValueError as e:
        return f"bad URL: {e}"
    if parts.scheme.lower() not in ("http", "https"):
        what = f"{parts.scheme.lower()!r}" if parts.scheme else "none"
        return f"unsupported scheme: {what} in {_short(url, 120)} (only http and https are fetched)"
    if not parts.hostname:
        return f"bad URL: no host in {_short(url, 120)}"
    return None


class _Abortable:
    """A connection that the watchdog can end from another thread (``abort``), in whatever phase it is.

    It keeps its socket in ``live``: http.client drops ``sock`` from a connection whose response will close
    it (HTTP/1.0, ``Connection: close``) and reads the body through the response, the socket still open."""

    aborted = False
    live: socket.socket | None = None

    def abort(self) -> None:
        self.aborted = True
        for sock in (self.live, self.sock):
            if sock is not None:
                try:  # the plain socket's shutdown, also under TLS: wakes a blocked read with end-of-stream
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:  # not connected yet, or already closed
                    pass


class _HTTP(_Abortable, http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.live = self.sock


class _HTTPS(_Abortable, http.client.HTTPSConnection):
    def connect(self) -> None:
        # as HTTPSConnection.connect, with the handshake after the TLS socket is in place (and abortable)
        http.client.HTTPConnection.connect(self)
        self.live = self.sock
        tls = self._context.wrap_socket(self.sock, server_hostname=self._tunnel_host or self.host,
                                        do_handshake_on_connect=False)
        self.sock = self.live = tls
        if self.aborted:
            raise ConnectionAbortedError("aborted")
        tls.do_handshake()


class _Watchdog:
    """One thread per process that calls ``abort()`` on connections whose deadline has passed."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, conn: _Abortable) -> list:
        entry = [deadline, next(self._order), conn, False]  # [.., .., conn or None when done, fired]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="synret-fetch-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return entry

    def done(self, entry: list) -> bool:
        """Stop watching; whether the deadline fired. After this the watchdog no longer touches the connection."""
        with self._cond:
            entry[2] = None
            return entry[3]

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2] is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                entry = heapq.heappop(self._heap)
                entry[3] = True
                entry[2].abort()  # under the lock: the fetching thread cannot close the connection meanwhile


_WATCHDOG = _Watchdog()


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """The environment's proxy for this scheme and host (as urllib honours http_proxy/https_proxy/no_proxy)."""
    proxy = getproxies().get(scheme)
    if not proxy or proxy_bypass(host):
        return None
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _connection(parts, timeout: float) -> tuple[_Abortable, str]:
    """(connection, request target) for an http(s) URL, through the environment's proxy if any."""
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proxy = _proxy_for(parts.scheme.lower(), parts.hostname)
    if https:
        ctx = ssl.create_default_context()
        if proxy:
            conn = _HTTPS(proxy[0], proxy[1], timeout=timeout, context=ctx)
            conn.set_tunnel(parts.hostname, port)
        else:
            conn = _HTTPS(parts.hostname, port, timeout=timeout, context=ctx)
        return conn, target
    if proxy:
        return _HTTP(proxy[0], proxy[1], timeout=timeout), parts._replace(fragment="").geturl()
    return _HTTP(parts.hostname, port, timeout=timeout), target


def _describe(err: BaseException, timeout: float) -> str:
    if isinstance(err, FetchError):
        return str(err)
    if isinstance(err, (socket.timeout, TimeoutError)):
        return f"timed out: no data for {timeout:g} s"
    if isinstance(err, http.client.IncompleteRead):
        return f"incomplete body: {len(err.partial)} bytes read, {err.expected} more expected"
    if isinstance(err, UnicodeEncodeError):
        return "bad URL: characters outside ASCII in its path or query"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {err}"
    if isinstance(err, socket.gaierror):
        return f"name resolution failed: {err}"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, (ConnectionError, http.client.HTTPException)):
        return f"connection failed: {type(err).__name__}: {err}"
    if isinstance(err, OSError):
        return f"connection failed: {err}"
    return f"fetch error: {type(err).__name__}: {err}"


def _get(url: str, timeout: float, deadline: float, max_bytes: int, headers: dict, robots) -> tuple[str, object]:
    """One request: ("redirect", absolute location) or ("body", bytes). Raises on failure."""
    parts = urlsplit(url)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError("deadline exceeded")
    conn, target = _connection(parts, timeout=min(timeout, remaining))
    entry = _WATCHDOG.watch(deadline, conn)
    response = None
    try:
        try:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            if response.status in REDIRECT_CODES:
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"HTTP {response.status}: redirect without a Location")
                return "redirect", urljoin(url, location.strip())
            if not 200 <= response.status < 300:
                raise FetchError(f"HTTP {response.status}: {response.reason}")
            if robots is not None and robots(response.headers):
                raise FetchError("disallowed: the X-Robots-Tag header forbids this use")
            if response.length is not None and response.length > max_bytes:
                raise FetchError(f"too large: body exceeds {max_bytes} bytes (Content-Length {response.length})")
            chunks, size = [], 0
            while size <= max_bytes:
                if time.monotonic() > deadline:
                    raise FetchError("deadline exceeded")
                chunk = response.read1(CHUNK) if hasattr(response, "read1") else response.read(CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"too large: body exceeds {max_bytes} bytes")
            if response.length:  # read1 stops at a closed connection without complaint
                raise http.client.IncompleteRead(b"".join(chunks), response.length)
            return "body", b"".join(chunks)
        except BaseException:
            if _WATCHDOG.done(entry):
                raise FetchError("deadline exceeded") from None
            raise
    finally:
        _WATCHDOG.done(entry)  # first: the watchdog never touches a closed socket (its number may be reused)
        if response is not None:
            response.close()
        conn.close()


_XML_START = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*<")


def inspect_body(data: bytes, max_pixels: int) -> str | None:
    """Why a fetched body is not handed to the resizer, or None: HTML/XML, or more than ``max_pixels`` pixels
    in the image's header (read without decoding it). Bodies Pillow cannot identify go on: the resizer decides."""
    if _XML_START.match(data[:1024]):
        return f"not an image: the body is HTML/XML ({_short(data[:40].decode('latin-1'), 60)}...)"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as e:
        return f"decompression bomb: {e}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return None
    except Exception:  # noqa: BLE001 - a Pillow plugin's own error on a hostile header: the resizer decides
        return None
    if width * height > max_pixels:
        return f"decompression bomb: {width}x{height} pixels exceed max_pixels {max_pixels}"
    return None


def fetch(url, timeout: float, deadline_s: float, max_bytes: int, max_pixels: int,
          user_agent_token: str | None = None, robots=None) -> bytes:
    """The body at ``url``, within the limits; raises FetchError with the reason otherwise.

    ``robots``: a function of the response headers that says whether their X-Robots-Tag forbids the use."""
    reason = check_url(url)
    if reason:
        raise FetchError(reason)
    start = time.monotonic()
    deadline = start + deadline_s
    agent = USER_AGENT + (f" (compatible; {user_agent_token}; synret)" if user_agent_token else "")
    headers = {"User-Agent": agent, "Accept-Encoding": "identity", "Connection": "close"}  # as urllib sends
    seen = {url}
    for _ in range(MAX_REDIRECTS + 1):
        try:
            kind, value = _get(url, timeout, deadline, max_bytes, headers, robots)
        except FetchError as e:
            if str(e) == "deadline exceeded":
                raise FetchError(f"deadline exceeded: {deadline_s:g} s") from None
            raise
        except Exception as e:  # noqa: BLE001 - every other failure becomes its reason
            if time.monotonic() >= deadline:
                raise FetchError(f"deadline exceeded: {deadline_s:g} s") from None
            raise FetchError(_describe(e, timeout)) from None
        if kind == "body":
            reason = inspect_body(value, max_pixels)
            if reason:
                raise FetchError(reason)
            return value
        reason = check_url(value)
        if reason:
            raise FetchError(f"bad redirect: to {_short(value, 120)}: {reason}")
        if value in seen:
            raise FetchError(f"redirect loop: back to {_short(value, 120)}")
        seen.add(value)
        url = value
    raise FetchError(f"too many redirects: more than {MAX_REDIRECTS}")


def limits_from_env() -> dict:
    """The limits the download job set for its img2dataset processes (``SYNRET_FETCH_LIMITS``)."""
    raw = json.loads(os.environ.get(ENV) or "{}")
    return {"deadline_s": raw.get("deadline_s"), "max_bytes": int(raw.get("max_bytes") or DEFAULT_MAX_BYTES),
            "max_pixels": int(raw.get("max_pixels") or DEFAULT_MAX_PIXELS)}


def limits(cfg: dict) -> dict:
    """The fetch limits of a ``retrieval.download`` config: deadline_s (default DEADLINE_FACTOR x timeout),
    max_bytes, max_pixels."""
    deadline = cfg.get("deadline_s")
    return {"deadline_s": float(deadline if deadline is not None else DEADLINE_FACTOR * cfg["timeout"]),
            "max_bytes": int(cfg.get("max_bytes") or DEFAULT_MAX_BYTES),
            "max_pixels": int(cfg.get("max_pixels") or DEFAULT_MAX_PIXELS)}


def make_download_image(deadline_s: float | None, max_bytes: int, max_pixels: int):
    """A function with the signature and results of ``img2dataset.downloader.download_image``:
    ``(row, timeout, user_agent_token, disallowed_header_directives) -> (key, BytesIO or None, error or None)``."""
    from img2dataset.downloader import is_disallowed

    def download_image(row, timeout, user_agent_token, disallowed_header_directives):
        key, url = row
        robots = None
        if disallowed_header_directives:
            def robots(headers):
                return is_disallowed(headers, user_agent_token, disallowed_header_directives)
        deadline = deadline_s if deadline_s is not None else DEADLINE_FACTOR * timeout
        try:
            data = fetch(url, timeout, deadline, max_bytes, max_pixels, user_agent_token, robots)
        except FetchError as e:
            return key, None, str(e)
        except Exception as e:  # noqa: BLE001 - never into img2dataset's thread pool (it would lose the shard)
            return key, None, f"fetch error: {type(e).__name__}: {e}"
        return key, io.BytesIO(data), None

    return download_image


def install() -> None:
    """Replace img2dataset's per-URL fetch in this process with the bounded one (limits from the environment).

    ``img2dataset.downloader.download_image_with_retry`` looks ``download_image`` up in its module at each
    call, so replacing the module attribute is enough."""
    import warnings

    import img2dataset.downloader as downloader
    from PIL import Image

    # inspect_body's own cap decides, with a message that names it (Pillow decodes nothing else here)
    Image.MAX_IMAGE_PIXELS = None
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    downloader.download_image = make_download_image(**limits_from_env())
