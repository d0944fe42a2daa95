"""One stated time for the built-in demo: README.md says it; `--help` and `presets` point there."""

from __future__ import annotations

import re

from helpers import ROOT, baseforge

A_TIME = re.compile(r"\d+(\.\d+)?\s*(minutes?|min|m\d+s|seconds?|s\b)", re.IGNORECASE)


def test_help_and_presets_state_no_demo_time_of_their_own():
    help_text = baseforge("--help").stdout
    quick = next(line for line in help_text.splitlines() if line.startswith("Quick start"))
    assert not A_TIME.search(quick), quick
    assert "README" in quick
    tiny = next(line for line in baseforge("presets").stdout.splitlines() if "cpu-tiny" in line)
    assert not A_TIME.search(tiny), tiny


def test_readme_states_the_demo_time_once():
    readme = (ROOT / "README.md").read_text()
    assert len(re.findall(r"\*\*The demo takes about \d+ minutes", readme)) == 1
    assert "1 min 24 s" not in readme
