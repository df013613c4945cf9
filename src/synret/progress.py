"""Progress lines for long jobs: count, rate and time left, at a bounded rate of lines.

A job makes one :class:`Progress` with its ``log`` (what ``synret.workflow.run_job`` hands the adapter),
calls ``update`` as work finishes and ``done`` at the end::

    progress = Progress(len(rows), "generate", log, unit="images")
    for batch in batches:
        ...
        progress.update(len(batch))
    progress.done()

which logs lines such as ``generate: 120/400 images (30%), 4.1 images/s, about 1m08s left`` and, once,
``generate: done, 400 images in 1m37s, 4.1 images/s``. The rate is that of the last ``window`` seconds
(the overall rate until a window has passed), so a job that speeds up or slows down gets an honest
estimate. Lines are at least ``min_interval`` seconds apart, and with a known total at least
``total / max_lines`` units apart, so a job logs about ``max_lines`` of them however long it runs
(without a total, the interval doubles after every ``max_lines`` lines). A job shorter than
``min_interval`` logs only the final line.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable


def format_duration(seconds: float) -> str:
    """A duration for people: ``3.2s``, ``45s``, ``3m05s``, ``1h02m``."""
    seconds = max(0.0, float(seconds))
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    m = int(round(seconds / 60))
    return f"{m // 60}h{m % 60:02d}m"


def format_rate(rate: float) -> str:
    """A rate with the digits that matter: ``312``, ``41.5``, ``4.1``, ``0.25``."""
    if rate >= 100:
        return f"{rate:.0f}"
    if rate >= 1:
        return f"{rate:.1f}"
    return f"{rate:.2g}"


class Progress:
    """Counts a job's finished units and logs its progress now and then (see the module's doc).

    ``total``: units the job will do (None: unknown, no percentage or time left); ``what``: the job's
    name at the start of each line; ``unit``: the plural unit word; ``log``: where lines go (None: none);
    ``clock``: seconds, monotonic (injectable for tests). Usable as a context manager, which calls
    :meth:`done` when the block ends without an exception.
    """

    SAMPLES = 32  # rate samples kept per window: memory stays bounded however often update is called

    def __init__(self, total: int | None, what: str, log: Callable[[str], None] | None, unit: str = "items",
                 min_interval: float = 30.0, max_lines: int = 20, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total = None if total is None else int(total)
        self.what, self.unit, self.log = what, unit, log
        self.min_interval, self.max_lines, self.window = float(min_interval), max(1, int(max_lines)), float(window)
        self.clock = clock
        self.start = clock()
        self.count = 0
        self.lines = 0  # progress lines logged (the final line not included)
        self.finished = False
        self._samples: deque[tuple[float, int]] = deque([(self.start, 0)])
        self._last_line = (self.start, 0)

    def update(self, n: int = 1) -> None:
        """``n`` more units are done."""
        self.update_to(self.count + int(n))

    def update_to(self, count: int) -> None:
        """``count`` units are done in all (a count below the current one is ignored)."""
        count = int(count)
        if count < self.count or self.finished:
            return
        self.count = count
        now = self.clock()
        if now - self._samples[-1][0] >= self.window / self.SAMPLES:
            self._samples.append((now, count))
        # keep the newest sample at least a window old as the window's start, drop the older ones
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        if self._due(now):
            self._emit(self.line(now))
            self.lines += 1
            self._last_line = (now, count)

    def _due(self, now: float) -> bool:
        last_time, last_count = self._last_line
        if self.total is not None and self.count == self.total:
            return False  # all done: the final line says it
        if self.total is not None and self.count < self.total:
            return (now - last_time >= self.min_interval
                    and self.count - last_count >= self.total / self.max_lines)
        interval = self.min_interval * 2 ** (self.lines // self.max_lines)
        return now - last_time >= interval and self.count > last_count

    def rate(self, now: float | None = None) -> float | None:
        """Units per second over the last ``window`` seconds, else since the start; None before any time passed."""
        now = self.clock() if now is None else now
        t0, c0 = self._samples[0]
        if now - t0 > 0 and self.count > c0:
            return (self.count - c0) / (now - t0)
        elapsed = now - self.start
        return self.count / elapsed if elapsed > 0 else None

    def line(self, now: float | None = None) -> str:
        """The progress line for now: count (of total, percentage), rate, time left."""
        now = self.clock() if now is None else now
        if self.total:
            text = f"{self.what}: {self.count}/{self.total} {self.unit} ({int(100 * self.count / self.total)}%)"
        else:
            text = f"{self.what}: {self.count} {self.unit}"
        rate = self.rate(now)
        if rate:
            text += f", {format_rate(rate)} {self.unit}/s"
            if self.total is not None and self.total > self.count:
                text += f", about {format_duration((self.total - self.count) / rate)} left"
        return text

    def done(self) -> None:
        """Log the final line (count, elapsed time, mean rate), once."""
        if self.finished:
            return
        self.finished = True
        elapsed = self.clock() - self.start
        count = f"{self.count}" if self.total is None or self.count == self.total else f"{self.count}/{self.total}"
        text = f"{self.what}: done, {count} {self.unit} in {format_duration(elapsed)}"
        if elapsed > 0 and self.count:
            text += f", {format_rate(self.count / elapsed)} {self.unit}/s"
        self._emit(text)

    def _emit(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.done()
