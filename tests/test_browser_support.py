"""The browser checker (browser_support) on small hand-written pages: it must see a working page as
working, and report each kind of breakage a report can have: a missing image, a JavaScript error, a
request that leaves the machine, a blank screen."""

from __future__ import annotations

import base64
import socket

import numpy as np
import pytest
from PIL import Image

from browser_support import inspect_page, region_has_content, screenshot_stats

# inspect_page skips (or, with SYNRET_REQUIRE_BROWSER=1, fails) where no browser can be driven


def write_png(path, size=(200, 120)):
    """A picture with structure (gradient and a block), not one flat colour."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    a[..., 1] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
    a[h // 4: h // 2, w // 4: w // 2] = (20, 20, 200)
    Image.fromarray(a).save(path)


def page(tmp_path, body: str, name="page.html"):
    html = tmp_path / name
    html.write_text(f"<!doctype html><html><head><title>t</title></head><body>{body}</body></html>")
    return html


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_good_page_has_no_problems(tmp_path):
    write_png(tmp_path / "fig.png")
    html = page(tmp_path, "<h1>Results</h1><p>Accuracy by scale.</p>"
                          "<div style='height:5000px'></div>"  # far below the fold, lazy: loads only on scrolling
                          "<img id=fig src='fig.png' loading='lazy'><p>the end</p>")
    shot = tmp_path / "shot.png"
    r = inspect_page(html, shot)
    assert r.ok, r.problems
    assert r.loaded_images == 1 and r.images[0].natural_width == 200 and r.images[0].natural_height == 120
    assert "Accuracy by scale." in r.text and "the end" in r.text
    stats = screenshot_stats(shot)
    assert not stats["blank"] and stats["dominant"] == (255, 255, 255)
    assert Image.open(shot).height > 5000  # full page, not just the viewport
    assert stats["distinct_colors"] > 100  # the gradient is there, not just black text on white


def test_missing_image_is_broken(tmp_path):
    html = page(tmp_path, "<p>a figure:</p><img src='nowhere.png'>")
    r = inspect_page(html, tmp_path / "shot.png")
    assert r.loaded_images == 0
    assert len(r.broken_images) == 1 and "nowhere.png" in r.broken_images[0]
    assert any("nowhere.png" in f and "ERR_FILE_NOT_FOUND" in f for f in r.failed_requests)
    assert not r.ok


def test_broken_image_inside_iframe(tmp_path):
    write_png(tmp_path / "fig.png")
    page(tmp_path, "<img src='fig.png'><img src='gone.png'>", name="inner.html")
    html = page(tmp_path, "<p>outer</p><iframe src='inner.html' width=600 height=400></iframe>")
    r = inspect_page(html, tmp_path / "shot.png")
    assert r.loaded_images == 1
    assert len(r.broken_images) == 1 and "gone.png" in r.broken_images[0] and "inner.html" in r.broken_images[0]


def test_errors_inside_a_data_iframe(tmp_path):
    """Snakemake's report shows an HTML result as an iframe with a data: URL (an opaque origin): its
    text, JavaScript errors and broken images are still seen."""
    inner = base64.b64encode(b"<p>inner text</p><img src='rel.png'><script>boom()</script>").decode()
    html = page(tmp_path, f"<iframe src='data:text/html;base64,{inner}'></iframe>")
    r = inspect_page(html, None)
    assert "inner text" in r.text
    assert len(r.page_errors) == 1 and "boom" in r.page_errors[0]
    assert len(r.broken_images) == 1 and "rel.png" in r.broken_images[0]


def test_pdf_viewer_is_not_external(tmp_path):
    """Chromium's PDF viewer (Snakemake's report shows a PDF result in an iframe) loads from chrome: and
    chrome-extension: URLs; those stay on the machine."""
    write_png(tmp_path / "fig.png")
    Image.open(tmp_path / "fig.png").save(tmp_path / "doc.pdf")
    html = page(tmp_path, "<iframe src='doc.pdf' width=800 height=600></iframe>")
    shot = tmp_path / "shot.png"
    r = inspect_page(html, shot)
    assert r.ok, r.problems
    assert region_has_content(shot, (0, 0, 800, 600))  # the viewer drew the page


def test_javascript_error_is_reported(tmp_path):
    html = page(tmp_path, "<p>text</p><script>window.notAFunction();</script>"
                          "<script>console.error('render failed')</script>")
    r = inspect_page(html, tmp_path / "shot.png")
    assert len(r.page_errors) == 1 and "notAFunction" in r.page_errors[0]
    assert any("render failed" in e for e in r.console_errors)
    assert not r.ok


def test_error_after_an_action_is_reported(tmp_path):
    """Errors raised by clicking (the report is a single-page app) are caught, and the text after it read."""
    html = page(tmp_path, "<button id=b onclick=\"document.getElementById('out').textContent='shown';"
                          " null.x\">go</button><div id=out></div>")
    r = inspect_page(html, tmp_path / "shot.png", actions=lambda p: p.click("#b"))
    assert "shown" in r.text
    assert len(r.page_errors) == 1 and "null" in r.page_errors[0]


@pytest.mark.parametrize("block", [True, False])
def test_request_off_the_machine_is_reported(tmp_path, block):
    url = f"http://127.0.0.1:{closed_port()}/x.png"
    html = page(tmp_path, f"<p>offline?</p><img src='{url}'>")
    r = inspect_page(html, tmp_path / "shot.png", block_external=block)
    assert r.external_requests == [f"GET {url}"]
    assert len(r.broken_images) == 1
    if not block:  # it went out, and failed: nothing listens there
        assert any(url in f and "ERR_CONNECTION_REFUSED" in f for f in r.failed_requests)
    assert not r.ok


def test_blank_page_is_blank(tmp_path):
    html = page(tmp_path, "")
    shot = tmp_path / "shot.png"
    r = inspect_page(html, shot)
    assert r.ok and r.loaded_images == 0
    stats = screenshot_stats(shot)
    assert stats["blank"] and stats["content_fraction"] == 0 and stats["dominant"] == (255, 255, 255)
    assert stats["size"] == (1400, 900)


def test_region_has_content(tmp_path):
    write_png(tmp_path / "fig.png")
    html = page(tmp_path, "<img src='fig.png' style='position:absolute; left:700px; top:100px'>",)
    shot = tmp_path / "shot.png"
    assert inspect_page(html, shot).ok
    assert region_has_content(shot, (700, 100, 900, 220))
    assert not region_has_content(shot, (0, 0, 600, 900))
    assert not region_has_content(shot, (700, 400, 1400, 900))


def test_stats_on_synthetic_images():
    white = Image.new("RGB", (100, 100), "white")
    assert screenshot_stats(white)["blank"] and screenshot_stats(white)["distinct_colors"] == 1
    dot = white.copy()
    dot.paste((0, 0, 0), (10, 10, 20, 20))  # 100 of 10,000 pixels
    s = screenshot_stats(dot)
    assert s["content_fraction"] == pytest.approx(0.01) and not s["blank"] and s["distinct_colors"] == 2
    faint = Image.new("RGB", (100, 100), (250, 250, 250))
    faint.paste((255, 255, 255), (0, 0, 50, 100))  # within the tolerance of the background: no content
    assert screenshot_stats(faint)["blank"]
