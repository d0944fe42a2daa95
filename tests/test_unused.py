"""No unused code: vulture over src/baseforge finds no function, class, method, attribute or variable
that nothing uses, at its default confidence for those (60%). What other code looks up by name
(hooks of urllib, lm-eval, transformers) is listed, with why, in tests/vulture_whitelist.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_no_unused_code():
    pytest.importorskip("vulture", reason="vulture is not installed (it comes with the dev extra: .[dev])")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vulture",
            str(ROOT / "src" / "baseforge"),
            str(ROOT / "tests" / "vulture_whitelist.py"),
            "--min-confidence",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        "unused code: delete it (or, if something calls it by name, say so in "
        f"tests/vulture_whitelist.py)\n{result.stdout}{result.stderr}"
    )
