"""Opening an HTML file in a real headless browser (Debian's Chromium, driven by Playwright) and
reporting what a person would see go wrong: failed requests, requests that leave the machine, JavaScript
errors, broken images; plus a full-page screenshot and measurements of its pixels.

The Snakemake report (``snakemake --report report.html``) is one self-contained file that must work
offline, so any request whose scheme is not file/data/blob/about (or the browser's own chrome:) is
recorded as external (and blocked, unless ``block_external=False``).

Playwright cannot download browsers here; it drives the system Chromium at ``CHROMIUM``. Where that or
Playwright is missing, ``require_browser()`` skips the test, unless ``SYNRET_REQUIRE_BROWSER=1`` (set by
.ci/run, which installs both), where it fails instead: a skip must not hide a broken install in CI.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path(os.environ.get("SYNRET_CHROMIUM", "/usr/bin/chromium"))
REQUIRE_ENV = "SYNRET_REQUIRE_BROWSER"
# requests that stay on the machine: local files, inline data, and the browser's own pages (its PDF viewer
# loads from chrome-extension: and chrome:); anything else (http, https, ws, ...) is external
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-extension:", "chrome-untrusted:",
                 "chrome-error:", "devtools:")


def browser_problem() -> str | None:
    """Why no browser can be driven here (None when one can)."""
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


def require_browser() -> None:
    """Skip the calling test when no browser can be driven, or fail where SYNRET_REQUIRE_BROWSER=1."""
    problem = browser_problem()
    if problem is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {problem}")
    pytest.skip(problem)


def _short(url: str, n: int = 120) -> str:
    return url if len(url) <= n else url[:n] + "..."


@dataclass
class ImageInfo:
    src: str  # shortened (data: URLs are long)
    frame: str  # URL of the frame holding the <img>
    complete: bool
    natural_width: int
    natural_height: int
    width: float  # rendered size in CSS pixels (0 for a hidden image)
    height: float

    @property
    def loaded(self) -> bool:
        return self.complete and self.natural_width > 0

    @property
    def broken(self) -> bool:
        return self.complete and self.natural_width == 0


@dataclass
class PageReport:
    url: str
    title: str
    screenshot: Path | None
    failed_requests: list[str] = field(default_factory=list)  # "URL (reason or HTTP status)"
    external_requests: list[str] = field(default_factory=list)  # not file/data/blob/about
    page_errors: list[str] = field(default_factory=list)  # uncaught JavaScript exceptions
    console_errors: list[str] = field(default_factory=list)  # console.error and the browser's own errors
    images: list[ImageInfo] = field(default_factory=list)  # every <img> with a src, in every frame
    timeouts: list[str] = field(default_factory=list)  # waits that did not finish (load, network idle)
    text: str = ""  # the visible text of every frame, after the actions

    @property
    def loaded_images(self) -> int:
        return sum(i.loaded for i in self.images)

    @property
    def broken_images(self) -> list[str]:
        return [f"{i.src} (in {_short(i.frame, 80)})" for i in self.images if i.broken]

    @property
    def unloaded_images(self) -> list[str]:
        """Images still loading after scrolling and waiting (e.g. lazy ones never shown)."""
        return [f"{i.src} (in {_short(i.frame, 80)})" for i in self.images if not i.complete]

    @property
    def problems(self) -> list[str]:
        """Every failure, one line each; empty for a page that works."""
        return ([f"failed request: {r}" for r in self.failed_requests]
                + [f"external request: {r}" for r in self.external_requests]
                + [f"JavaScript error: {e}" for e in self.page_errors]
                + [f"console error: {e}" for e in self.console_errors]
                + [f"broken image: {s}" for s in self.broken_images]
                + [f"image never loaded: {s}" for s in self.unloaded_images]
                + [f"timed out: {t}" for t in self.timeouts])

    @property
    def ok(self) -> bool:
        return not self.problems


# Scrolls the window and every scrollable element of one frame down in viewport steps, so that lazy
# images and content rendered on scroll appear, then back to the top.
_SCROLL_JS = """async ([pause, maxSteps]) => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const scrollers = [document.scrollingElement || document.documentElement];
  for (const el of document.querySelectorAll('*')) {
    const s = getComputedStyle(el);
    if (el.scrollHeight > el.clientHeight + 1 && /(auto|scroll)/.test(s.overflowY)) scrollers.push(el);
  }
  for (const el of scrollers) {
    const step = Math.max(100, el.clientHeight || window.innerHeight);
    for (let i = 0, y = 0; i < maxSteps && y < el.scrollHeight; i++, y += step) {
      el.scrollTop = y;
      await sleep(pause);
    }
    el.scrollTop = 0;
  }
  await sleep(pause);
}"""

_IMAGES_JS = """() => Array.from(document.images)
  .filter(img => img.getAttribute('src') || img.getAttribute('srcset'))
  .map(img => {
    const r = img.getBoundingClientRect();
    return {src: img.currentSrc || img.src, complete: img.complete, nw: img.naturalWidth,
            nh: img.naturalHeight, w: r.width, h: r.height};
  })"""

_ALL_COMPLETE_JS = """() => Array.from(document.images)
  .every(img => img.complete || !(img.getAttribute('src') || img.getAttribute('srcset')))"""


def visible_text(page) -> str:
    """The rendered text (innerText) of the page and of each of its frames, frames after the page."""
    parts = []
    for frame in page.frames:
        try:
            parts.append(frame.evaluate("() => document.body ? document.body.innerText : ''"))
        except Exception:  # a frame detached or navigating meanwhile
            continue
    return "\n".join(p for p in parts if p)


class Browsing:
    """One open page plus everything recorded on it since it opened (see ``browse``)."""

    def __init__(self, page, wait_ms: int, timeout_ms: int):
        self.page = page
        self.wait_ms = wait_ms
        self.timeout_ms = timeout_ms
        self.failed_requests: list[str] = []
        self.external_requests: list[str] = []
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.timeouts: list[str] = []
        self._blocked: set[str] = set()

    def _on_request(self, request) -> None:
        if not request.url.startswith(LOCAL_SCHEMES):
            self.external_requests.append(f"{request.method} {_short(request.url)}")

    def _on_request_failed(self, request) -> None:
        if request.url in self._blocked:  # already recorded as external
            return
        self.failed_requests.append(f"{_short(request.url)} ({request.failure})")

    def _on_response(self, response) -> None:
        if response.status >= 400:
            self.failed_requests.append(f"{_short(response.url)} (HTTP {response.status})")

    def _on_console(self, msg) -> None:
        if msg.type == "error" and "ERR_BLOCKED_BY_CLIENT" not in msg.text:  # blocked: counted as external
            loc = msg.location or {}
            where = f" at {_short(loc.get('url', ''), 80)}:{loc.get('lineNumber')}" if loc.get("url") else ""
            self.console_errors.append(f"{msg.text}{where}")

    def _on_page_error(self, error) -> None:
        self.page_errors.append(f"{error.name}: {error.message}" if getattr(error, "name", "") else str(error))

    def settle(self) -> None:
        """Wait for network idle, scroll every frame through, wait for images to finish, then ``wait_ms``."""
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        page = self.page
        try:
            page.wait_for_load_state("networkidle", timeout=self.timeout_ms)
        except PlaywrightTimeout:
            self.timeouts.append(f"network idle after {self.timeout_ms} ms")
        for frame in list(page.frames):
            with contextlib.suppress(PlaywrightError):
                frame.evaluate(_SCROLL_JS, [50, 200])
        for frame in list(page.frames):
            try:
                frame.wait_for_function(_ALL_COMPLETE_JS, timeout=self.timeout_ms)
            except PlaywrightTimeout:
                pass  # reported per image as never loaded
            except PlaywrightError:
                continue
        page.wait_for_timeout(self.wait_ms)

    def report(self, screenshot: Path | None = None) -> PageReport:
        """What has been recorded so far plus the images and text now on the page; writes a full-page
        screenshot to ``screenshot`` when given."""
        from playwright.sync_api import Error as PlaywrightError

        images = []
        for frame in list(self.page.frames):
            try:
                found = frame.evaluate(_IMAGES_JS)
            except PlaywrightError:
                continue
            images += [ImageInfo(_short(i["src"]), frame.url, i["complete"], i["nw"], i["nh"], i["w"], i["h"])
                       for i in found]
        if screenshot is not None:
            screenshot = Path(screenshot)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(screenshot), full_page=True)
        return PageReport(url=self.page.url, title=self.page.title(), screenshot=screenshot,
                          failed_requests=list(self.failed_requests),
                          external_requests=list(self.external_requests),
                          page_errors=list(self.page_errors), console_errors=list(self.console_errors),
                          images=images, timeouts=list(self.timeouts), text=visible_text(self.page))


@contextlib.contextmanager
def browse(html: Path | str, *, width: int = 1400, height: int = 900, wait_ms: int = 500,
           timeout_ms: int = 30_000, block_external: bool = True) -> Iterator[Browsing]:
    """Open ``html`` (a file path, or a URL) in headless Chromium and yield a ``Browsing`` once the page
    has loaded and settled: ``.page`` is the Playwright page to click on, ``.settle()`` waits again after
    an action, ``.report(png)`` collects a ``PageReport``. Requests that leave the machine are recorded
    and, with ``block_external``, aborted (an offline page must make none)."""
    require_browser()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    url = str(html) if "://" in str(html) else Path(html).resolve().as_uri()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": height},
                                          service_workers="block", accept_downloads=True)
            page = context.new_page()
            b = Browsing(page, wait_ms, timeout_ms)
            context.on("request", b._on_request)
            context.on("requestfailed", b._on_request_failed)
            context.on("response", b._on_response)
            page.on("console", b._on_console)
            page.on("pageerror", b._on_page_error)

            def abort(route):
                b._blocked.add(route.request.url)
                route.abort("blockedbyclient")

            if block_external:
                context.route(lambda u: not u.startswith(LOCAL_SCHEMES), abort)
            try:
                page.goto(url, wait_until="load", timeout=timeout_ms)
            except PlaywrightTimeout:
                b.timeouts.append(f"load after {timeout_ms} ms")
            b.settle()
            yield b
        finally:
            browser.close()


def inspect_page(html: Path | str, screenshot: Path | None, *, width: int = 1400, height: int = 900,
                 wait_ms: int = 500, timeout_ms: int = 30_000, block_external: bool = True,
                 actions: Callable | None = None) -> PageReport:
    """Open ``html``, let it settle, run ``actions(page)`` if given (clicks, navigation; the page settles
    again after it), and return the ``PageReport`` with a full-page screenshot written to ``screenshot``."""
    with browse(html, width=width, height=height, wait_ms=wait_ms, timeout_ms=timeout_ms,
                block_external=block_external) as b:
        if actions is not None:
            actions(b.page)
            b.settle()
        return b.report(screenshot)


def screenshot_stats(png: Path | str | bytes | Image.Image, box: tuple[int, int, int, int] | None = None,
                     tolerance: int = 8, min_fraction: float = 0.0002) -> dict:
    """Measures of a screenshot's pixels (within ``box`` = (left, top, right, bottom) when given):
    ``dominant`` colour (the background, as RGB), ``content_fraction`` (pixels whose channels differ from
    it by more than ``tolerance``), ``distinct_colors``, ``size`` and ``blank`` (content_fraction below
    ``min_fraction``: nothing but background)."""
    if isinstance(png, bytes):  # e.g. page.locator(...).screenshot()
        png = io.BytesIO(png)
    image = png if isinstance(png, Image.Image) else Image.open(png)
    image = image.convert("RGB")
    if box is not None:
        image = image.crop(box)
    a = np.asarray(image, dtype=np.int16).reshape(-1, 3)
    if a.size == 0:
        return {"size": image.size, "dominant": None, "content_fraction": 0.0, "distinct_colors": 0,
                "blank": True}
    packed = (a[:, 0].astype(np.int32) << 16) | (a[:, 1].astype(np.int32) << 8) | a[:, 2]
    colors, counts = np.unique(packed, return_counts=True)
    top = int(colors[counts.argmax()])
    dominant = np.array([(top >> 16) & 255, (top >> 8) & 255, top & 255], dtype=np.int16)
    fraction = float((np.abs(a - dominant).max(axis=1) > tolerance).mean())
    return {"size": image.size, "dominant": tuple(int(c) for c in dominant), "content_fraction": fraction,
            "distinct_colors": int(len(colors)), "blank": fraction < min_fraction}


def region_has_content(png: Path | str | bytes | Image.Image, box: tuple[int, int, int, int],
                       min_fraction: float = 0.01) -> bool:
    """Whether the region ``box`` = (left, top, right, bottom) of a screenshot shows anything but its
    own background colour on at least ``min_fraction`` of its pixels."""
    return not screenshot_stats(png, box=box, min_fraction=min_fraction)["blank"]
