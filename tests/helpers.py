"""Running the CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A model small enough for tests: trains a step in milliseconds.
TINY = [
    "n_layer=2",
    "n_embd=64",
    "n_head=2",
    "context=64",
    "micro_batch=4",
    "global_batch=8",
    "dropout=0.1",
    "log_every=1",
    "eval_every=5",
    "eval_tokens=2048",
    "sample_tokens=0",
    "precision=fp32",
    "warmup_steps=3",
]


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def baseforge(*args, check=False, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`baseforge ARGS` in a subprocess; `env` adds variables to the test environment."""
    return subprocess.run(
        [sys.executable, "-m", "baseforge", *map(str, args)],
        capture_output=True,
        text=True,
        env={**cli_env(), **(env or {})},
        check=check,
        **kwargs,
    )


def popen(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "baseforge", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def sets(*items) -> list[str]:
    out = []
    for item in items:
        out += ["--set", item]
    return out


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: non-zero exit, one line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
