"""Walking a Snakemake report in headless Chromium as a reader would: every category, every result opened,
and what each showed (tests/test_report.py; tests/browser_support.py drives the browser)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from browser_support import browse, screenshot_stats

MAIN = "div.grow.h-screen.overflow-auto"  # the report's main panel (Snakemake 9.2x)


@dataclass
class Opened:
    category: str
    subcategory: str | None
    name: str
    kind: str  # "image", "html", "download"
    stats: dict | None = None  # pixel stats of the shown image (screenshot of the element)
    natural_size: tuple[int, int] | None = None
    text: str = ""


@dataclass
class Walk:
    categories: list[str] = field(default_factory=list)
    opened: list[Opened] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    home_stats: dict | None = None


def _open_all(b, page, category: str, subcategory: str | None, walk: Walk, shots: Path) -> None:
    eyes = page.locator('a[iconname="eye"]')
    names = [row.inner_text().strip() for row in page.locator("table tbody tr").all()] or [""] * eyes.count()
    for i in range(eyes.count()):
        eye = page.locator('a[iconname="eye"]').nth(i)
        href = eye.get_attribute("href") or ""
        name = names[i].split("\t")[0] if i < len(names) else str(i)
        if href.startswith("data:"):  # a CSV: the report offers it as a download
            walk.opened.append(Opened(category, subcategory, name, "download"))
            continue
        eye.click()
        b.settle()
        main = page.locator(MAIN)
        img, frame = main.locator("img"), main.locator("iframe")
        if img.count():
            size = img.first.evaluate("e => [e.naturalWidth, e.naturalHeight]")
            stats = screenshot_stats(img.first.screenshot())
            walk.opened.append(Opened(category, subcategory, name, "image", stats, tuple(size)))
        elif frame.count():
            text = frame.first.content_frame.locator("body").inner_text()
            walk.opened.append(Opened(category, subcategory, name, "html", text=text))
        else:
            walk.problems.append(f"{category}/{subcategory}/{name}: opening it showed nothing")
        shot = shots / f"{len(walk.opened):02d}.png"
        walk.problems += [f"{category}/{name}: {p}" for p in b.report(shot).problems]


def walk_report(html: Path, shots: Path) -> Walk:
    """Open the report, every category (and subcategory) and every result in it; collect what each showed and
    every problem the browser saw (failed or external requests, JS errors, broken images)."""
    shots.mkdir(parents=True, exist_ok=True)
    walk = Walk()
    with browse(html) as b:
        page = b.page
        home = b.report(shots / "home.png")
        walk.problems += home.problems
        walk.home_stats = screenshot_stats(shots / "home.png")
        walk.categories = [a.inner_text().strip() for a in page.locator("nav a").all()
                           if a.inner_text().strip()[:2].rstrip(".").isdigit()]
        for category in walk.categories:
            page.get_by_role("link", name=category, exact=True).click()
            b.settle()
            if page.locator('a[iconname="eye"]').count():
                _open_all(b, page, category, None, walk, shots)
            else:  # subcategories: one link each
                subs = [a.inner_text().strip() for a in page.locator("nav a").all()]
                subs = [s for s in subs if s and s not in walk.categories and s not in ("Workflow", "Statistics", "About", "Results")]
                for sub in subs:
                    page.get_by_role("link", name=sub, exact=True).click()
                    b.settle()
                    _open_all(b, page, category, sub, walk, shots)
                    page.get_by_role("link", name=category, exact=True).click()
                    b.settle()
            page.locator("nav ol li a").first.click()  # home
            b.settle()
    return walk
