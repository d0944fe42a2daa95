"""The CPU allocator setting the trainer applies: freed large blocks stay with the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import cli_env

SCRIPT = """
import sys, torch
from baseforge.train.host import keep_freed_memory
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
applied = keep_freed_memory() if sys.argv[1] == "on" else False
x = torch.ones(64 * 2**20 // 4)  # 64 MB, every page touched
before = rss_mb()
del x
print(applied, before - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings are Linux-only")
def test_keep_freed_memory_keeps_large_blocks():
    def run(mode):
        # No MALLOC_* variables (those make the setting a no-op); this checkout's src/, installed or not.
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": cli_env()["PYTHONPATH"]}
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, env=env
        ).stdout.split()
        return out[0] == "True", float(out[1])

    applied, released = run("on")
    assert applied and released < 8  # the 64 MB block stays with the process, ready for reuse
    applied, released = run("off")
    assert not applied and released > 56  # glibc's default: unmapped at once
