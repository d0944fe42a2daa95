"""One process per run dir: an OS lock on RUN/.lock, held for the trainer's lifetime.

`with RunLock(run_dir): ...` takes an exclusive, non-blocking `flock` on RUN/.lock and writes the
holder's pid and host into it (JSON: {"pid", "host", "started"}). A second holder fails at once
with a UserError naming them. The kernel drops a flock when its holder dies, however it dies, so a
lock file left by a killed process never blocks anyone: the file is only a note, the lock is the OS's.

The file is never deleted: removing it while another process waits on it would let two holders
lock two different files. Forked children share the lock (their copy of the descriptor holds it
too) until they exit. On NFS, Linux maps flock onto byte-range locks, so it holds across hosts.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from baseforge.errors import UserError

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run dir; a context manager, or acquire() / release()."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(
                f"run dir {self.run_dir} is in use by {holder} (it holds {self.path}); "
                "wait for that run to finish or stop it, or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        note = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (note + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """'pid N on host H' from the lock file, or a vaguer phrase if the holder has not written it yet."""
    try:
        note = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {int(note['pid'])} on host {note['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
