"""The run-dir lock: a second holder is refused with the first's pid and host, in another process or
this one; a holder killed without cleanup never blocks the next; the lock is released on exit."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from baseforge.errors import UserError
from baseforge.runlock import RunLock
from helpers import cli_env

HOLD = """
import sys, time
from baseforge.runlock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_holder_is_refused_naming_the_first_and_a_dead_holder_never_blocks(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=cli_env()
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        host = re.escape(socket.gethostname())
        with pytest.raises(UserError, match=rf"in use by pid {holder.pid} on host {host}"):
            RunLock(run).acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the flock
        holder.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid  # its note is still there
    with RunLock(run) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=rf"pid {os.getpid()}"):  # a second holder in this process too
            RunLock(run).acquire()
    with RunLock(run):  # released on exit
        pass
