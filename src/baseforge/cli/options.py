"""Options several verbs share, declared once here so each has one spelling, default and help.

A verb calls `add_which(p)`, `add_device(p)`, `add_json(p, what)`, `add_save_to(p, name)` in its
`register`; what differs from verb to verb (what --json prints, the file --save-to writes) is an
argument.

Every numeric argument takes one of the range types below as its argparse `type=`: a value out of
range is refused by the parser, in one line, before the verb loads anything.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from baseforge.records import excerpt


def whole(low: int = 0, high: int | None = None, *, scientific: bool = False):
    """An argparse type: a whole number in [low, high]; `scientific` also takes 1e6 or 10e6 (token
    counts), exact only where a float is (below 2**53)."""

    def parse(text: str) -> int:
        value: int | None = None
        try:
            value = int(text)
        except ValueError:
            number = float(text) if scientific and _is_float(text) else math.nan
            if math.isfinite(number) and number.is_integer():
                value = int(number)
        if value is None or value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"of {low} or more"
            spelled = ", such as 1000000 or 10e6" if scientific else ""
            raise argparse.ArgumentTypeError(f"{excerpt(text)} is not a whole number {bound}{spelled}")
        return value

    return parse


def real(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite number between `low` and `high`, each bound open or closed."""

    def parse(text: str) -> float:
        value = float(text) if _is_float(text) else math.nan
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            if high == math.inf:
                span = f"{'>' if low_open else '>='} {low:g}"
            else:
                span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{excerpt(text)} is not a number {span}")
        return value

    return parse


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


positive_int = whole(1)  # sizes, limits, steps, workers
non_negative_int = whole(0)  # 0 means none (few-shot examples, retries) or all (top-k)
seed = whole(0, 2**63 - 1)  # what torch's generators take
count = whole(0, scientific=True)  # token counts, 0 allowed
positive_count = whole(1, scientific=True)
positive_float = real(0, low_open=True)  # seconds, prices
non_negative_float = real(0)
fraction = real(0, 1, low_open=True)  # (0, 1]


def add_which(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--which",
        choices=["latest", "best", "ema"],
        default="latest",
        help="the checkpoint of a run dir: its latest, its best by validation loss, or the latest's averaged "
        "weights (runs with ema_decay) (default: latest)",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a CUDA GPU, else Apple's MPS, else the CPU), cpu, cuda, cuda:N or mps (default: auto)",
    )


def add_json(p: argparse.ArgumentParser, what: str) -> None:
    """--json: print `what` (e.g. "the plan as JSON") instead of the verb's text."""
    p.add_argument("--json", action="store_true", help=f"print {what}")


def add_save_to(p: argparse.ArgumentParser, name: str) -> None:
    """--save-to RUN_DIR: keep the results as RUN_DIR/evals/NAME.json, which the report shows; results
    already there are replaced only with --overwrite (as `prepare --overwrite` replaces a data dir)."""
    p.add_argument(
        "--save-to",
        type=Path,
        metavar="RUN_DIR",
        help=f"also keep the results in RUN_DIR/evals/{name}.json (for `baseforge report`)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"with --save-to: replace the results already in RUN_DIR/evals/{name}.json",
    )
