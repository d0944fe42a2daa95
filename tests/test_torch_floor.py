"""The torch floor: pyproject's `torch>=` is the version the suite was run on (baseforge.TORCH_FLOOR),
and an older torch gets one line that says what to upgrade, before any verb runs."""

from __future__ import annotations

import re
import subprocess
import sys

import baseforge
from helpers import ROOT, assert_clean_error, cli_env


def test_pyproject_states_the_tested_floor():
    text = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([\d.]+)"', text)[1]
    assert tuple(map(int, floor.split("."))) == baseforge.TORCH_FLOOR


def test_an_older_torch_is_one_line_with_the_upgrade():
    code = (
        "import sys, torch\n"
        "torch.__version__ = '2.4.1+cpu'\n"
        "from baseforge.cli import main\n"
        "sys.exit(main(['presets']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert_clean_error(result, "torch >= 2.11", "found 2.4.1+cpu", "pip install -U 'torch>=2.11'")


def test_an_older_torch_that_breaks_a_verbs_imports_is_still_one_line():
    # The chosen verb's module is imported to parse its arguments; an API an old torch lacks fails there.
    code = (
        "import sys, torch\n"
        "torch.__version__ = '2.4.1+cpu'\n"
        "sys.modules['baseforge.eval.models'] = None\n"  # fails as one needing a newer torch would
        "from baseforge.cli import main\n"
        "sys.exit(main(['sample', 'runs/x']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert_clean_error(result, "baseforge sample: error:", "torch >= 2.11", "found 2.4.1+cpu")
