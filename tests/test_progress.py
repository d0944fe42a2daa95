"""Progress: tqdm bar on a terminal, plain periodic lines elsewhere, ETA from the rate since creation."""

from __future__ import annotations

import io

import pytest

from baseforge.progress import Progress, format_duration


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eta_after_resume_counts_only_the_rate_since_the_resume():
    # 900 of 1000 steps were done before the resume; this process does 10 steps in 30 s.
    clock = Clock()
    bar = Progress(1000, "train", "step", initial=900, file=io.StringIO(), clock=clock)
    assert bar.eta_s is None  # no rate yet
    for _ in range(10):
        clock.t += 3.0
        bar.update(1)
    assert bar.rate == pytest.approx(10 / 30)
    assert bar.eta_s == pytest.approx(90 * 3.0)  # 90 steps left at 3 s each, not 30 s / 910 steps done
    assert "eta 4m30s" in bar.line()


def test_plain_lines_when_not_a_terminal():
    clock, out = Clock(), io.StringIO()
    bar = Progress(100, "answer", "item", file=out, every_s=10.0, clock=clock)
    for _ in range(100):
        clock.t += 0.5  # 50 s in all: a line on the first update, then one per 10 s
        bar.update(1, loss=2.123456)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("answer 1/100 item (1%) | loss 2.123 |")
    assert lines[-1].startswith("answer 100/100 item (100%)") and "eta 0m00s" in lines[-1]
    assert len(lines) == 6  # steps 1, 21, 41, 61, 81 and the final 100


def test_final_line_is_not_repeated_and_write_callback_gets_the_lines():
    clock, seen = Clock(), []
    bar = Progress(2, "judge", "item", file=io.StringIO(), every_s=0.0, write=seen.append, clock=clock)
    clock.t += 1
    bar.update(1, failed=0)
    clock.t += 1
    bar.update(1, failed=1)
    bar.close()
    assert len(seen) == 2 and seen[-1].startswith("judge 2/2 item (100%) | failed 1")


def test_disabled_writes_nothing():
    out = Terminal()
    with Progress(10, "train", file=out, enabled=False) as bar:
        bar.update(5, loss=1.0)
    assert out.getvalue() == "" and bar.n == 5


def test_terminal_gets_a_tqdm_bar_with_postfix():
    out = Terminal()
    with Progress(10, "train", "step", initial=4, file=out) as bar:
        bar.update(2, loss=3.5)
    text = out.getvalue()
    assert "\r" in text and "train" in text and "6/10" in text and "loss=3.5" in text


def test_format_duration():
    assert format_duration(270) == "4m30s" and format_duration(3 * 3600 + 125) == "3h02m"
