"""synret.progress: rate, time left and a bounded number of lines, on a fake clock."""

import re

import pytest

from synret.progress import Progress, format_duration, format_rate


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(total, clock, **kwargs):
    lines = []
    return Progress(total, "generate", lines.append, unit="images", clock=clock, **kwargs), lines


@pytest.mark.parametrize("seconds, text", [
    (0, "0.0s"), (0.34, "0.3s"), (9.2, "9.2s"), (10, "10s"), (45, "45s"), (59.4, "59s"), (59.6, "1m00s"),
    (185, "3m05s"), (3599, "59m59s"), (3600, "1h00m"), (3720, "1h02m"), (100 * 3600 + 300, "100h05m"), (-1, "0.0s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_rate():
    assert [format_rate(r) for r in (312.4, 41.54, 4.12, 0.25, 0.0042)] == ["312", "41.5", "4.1", "0.25", "0.0042"]


def test_line_count_is_bounded_over_a_long_job():
    clock = Clock()
    progress, lines = make(10_000, clock)
    for _ in range(10_000):  # 10,000 images at 2 per second: 83 minutes
        clock.t += 0.5
        progress.update()
    progress.done()
    assert 15 <= len(lines) <= 21  # about max_lines progress lines, and the final one
    assert lines[-1] == "generate: done, 10000 images in 1h23m, 2.0 images/s"
    numbers = [int(re.match(r"generate: (\d+)/10000", line).group(1)) for line in lines[:-1]]
    assert all(b - a >= 500 for a, b in zip(numbers, numbers[1:]))  # at least total / max_lines apart
    assert numbers[-1] < 10_000  # no 100% line before the final one


def test_lines_are_min_interval_apart_on_a_fast_job():
    clock = Clock()
    progress, lines = make(10_000, clock, min_interval=30)
    for _ in range(10_000):  # 1,000 images per second: 10 s, shorter than min_interval
        clock.t += 0.001
        progress.update()
    progress.done()
    assert lines == ["generate: done, 10000 images in 10s, 1000 images/s"]


def test_rate_and_time_left_at_a_constant_rate():
    clock = Clock()
    progress, lines = make(400, clock, min_interval=30, window=60)
    for _ in range(120):  # 4 images per second
        clock.t += 0.25
        progress.update()
    assert progress.rate() == pytest.approx(4.0)
    assert progress.line() == "generate: 120/400 images (30%), 4.0 images/s, about 1m10s left"
    assert lines == ["generate: 120/400 images (30%), 4.0 images/s, about 1m10s left"]  # 30 s in, 120 >= 400/20


def test_rate_follows_the_recent_window():
    clock = Clock()
    progress, _ = make(None, clock, window=60)
    for _ in range(600):  # 10 per second for a minute ...
        clock.t += 0.1
        progress.update()
    for _ in range(120):  # ... then 1 per second for two minutes
        clock.t += 1
        progress.update()
    assert progress.rate() == pytest.approx(1.0, rel=0.05)


def test_unknown_total_has_no_percent_or_time_left():
    clock = Clock()
    progress, lines = make(None, clock, min_interval=10, max_lines=3)
    for _ in range(1000):
        clock.t += 1
        progress.update(5)
    progress.done()
    assert lines[0] == "generate: 50 images, 5.0 images/s"
    assert not any("%" in line or "left" in line for line in lines)
    # the interval doubles after every max_lines lines: 10 s x3, 20 s x3, 40 s x3, 80 s x3, 160 s x3, ...
    assert len(lines) - 1 < 20
    assert lines[-1] == "generate: done, 5000 images in 16m40s, 5.0 images/s"


def test_done_logs_once_and_stops_counting():
    clock = Clock()
    progress, lines = make(10, clock)
    clock.t += 2
    progress.update(10)
    progress.done()
    progress.done()
    progress.update(5)
    assert lines == ["generate: done, 10 images in 2.0s, 5.0 images/s"]


def test_done_names_a_short_count_and_a_job_without_time():
    clock = Clock()
    progress, lines = make(10, clock)
    progress.update(3)
    progress.done()
    assert lines == ["generate: done, 3/10 images in 0.0s"]


def test_update_to_goes_forward_only():
    clock = Clock()
    progress, lines = make(100, clock, min_interval=5)
    clock.t += 10
    progress.update_to(40)
    assert lines == ["generate: 40/100 images (40%), 4.0 images/s, about 15s left"]
    clock.t += 10
    progress.update_to(30)  # an earlier count (a stale read): ignored
    assert progress.count == 40 and len(lines) == 1
    progress.update_to(80)
    assert progress.count == 80
    assert lines[-1] == "generate: 80/100 images (80%), 4.0 images/s, about 5.0s left"


def test_context_manager_and_silent_log():
    clock = Clock()
    lines = []
    with Progress(3, "train", lines.append, unit="steps", clock=clock) as progress:
        clock.t += 3
        progress.update(3)
    assert lines == ["train: done, 3 steps in 3.0s, 1.0 steps/s"]
    with pytest.raises(RuntimeError):
        with Progress(3, "train", lines.append, unit="steps", clock=clock):
            raise RuntimeError("failed")
    assert len(lines) == 1  # a failed job logs no "done"
    silent = Progress(3, "train", None, clock=clock, min_interval=0)
    silent.update(3)
    silent.done()
    assert silent.count == 3
