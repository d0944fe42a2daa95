"""Options several verbs share, declared once here so each has one spelling, default and help.

A verb calls `add_which(p)`, `add_device(p)`, `add_json(p, what)`, `add_save_to(p, name)` in its
`register`; what differs from verb to verb (what --json prints, the file --save-to writes) is an
argument.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_which(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--which",
        choices=["latest", "best"],
        default="latest",
        help="the checkpoint of a run dir: its latest, or its best by validation loss (default: latest)",
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
    """--save-to RUN_DIR: keep the results as RUN_DIR/evals/NAME.json, which the report shows."""
    p.add_argument(
        "--save-to",
        type=Path,
        metavar="RUN_DIR",
        help=f"also keep the results in RUN_DIR/evals/{name}.json (for `baseforge report`)",
    )
