"""One process per run dir: an OS lock on RUN/.lock, held for the trainer's lifetime.

`with RunLock(run_dir): ...` takes an exclusive, non-blocking `flock` on RUN/.lock and writes the
holder's pid and host into it (JSON: {"pid", "host", "started"}). A second holder fails at once
with a UserError naming them. The kernel drops a flock when its holder dies, however it dies, so a
lock file left by a killed process never blocks anyone: the file is only a note, the lock is the OS's.
`RunLock(run_dir).check()` refuses the same way without taking the lock, for what reads the folder first.

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
    """An exclusive lock on a run dir; a context manager, or acquire() / release().

    `name`, `what`, `user` and `doing` let another kind of folder use the same mechanism: `prepare` locks
    a data dir with `RunLock(out, name=".prepare.lock", what="data dir", user="prepare", remove=True)`;
    a refusal reads "{what} DIR is {doing} by pid N on host H ...; wait for that {user} to finish".
    `remove=True` deletes the lock file on release, so the folder keeps no trace of it. That is safe
    because acquire() then checks, after the flock, that the path still names the file it locked (a
    holder may have deleted it in between) and tries again if not; release deletes the path only
    while it names the file this holds. Run dirs keep their file (remove=False).
    """

    def __init__(
        self,
        run_dir: Path | str,
        *,
        name: str = LOCK_FILE,
        what: str = "run dir",
        user: str = "run",
        doing: str = "in use",
        remove: bool = False,
    ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        self.what, self.user, self.doing, self.remove = what, user, doing, remove
        self.fd: int | None = None
        self.refused = False  # set when another process held it

    def acquire(self) -> "RunLock":
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _flock(fd, fcntl.LOCK_EX):
                raise self._in_use(fd)
        except BaseException:
            os.close(fd)
            raise
        if self.remove and not _same_file(self.path, fd):
            os.close(fd)  # the holder deleted the file between our open and flock: lock the new one
            return self.acquire()
        note = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (note + "\n").encode(), 0)
        self.fd = fd
        return self

    def check(self) -> None:
        """Refuse now, as acquire() would, if another process holds the lock; take nothing, write nothing.

        For what reads the folder before acquire(): `train --resume` reads the run's config and
        checkpoint pointer first, and a live run before its first checkpoint reads as one that stopped.
        """
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file (or no folder): nobody holds it
            return
        try:
            if not _flock(fd, fcntl.LOCK_SH):  # shared: two checks never refuse each other
                raise self._in_use(fd)
        finally:
            os.close(fd)  # drops the shared lock

    def _in_use(self, fd: int) -> UserError:
        self.refused = True
        return UserError(
            f"{self.what} {self.run_dir} is {self.doing} by {_read_holder(fd)} (it holds {self.path}); "
            f"wait for that {self.user} to finish or stop it, or choose another --out"
        )

    def release(self) -> None:
        if self.fd is not None:
            if self.remove and _same_file(self.path, self.fd):
                self.path.unlink(missing_ok=True)
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _flock(fd: int, mode: int) -> bool:
    """Take flock `mode` without blocking; False if another process holds it. Tried three times over
    60 ms, so that another process's check() (a shared lock held for microseconds) is not a holder."""
    import fcntl

    for pause in (0.0, 0.01, 0.05):
        time.sleep(pause)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            continue
    return False


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)


def _read_holder(fd: int) -> str:
    """'pid N on host H' from the lock file, or a vaguer phrase if the holder has not written it yet."""
    try:
        note = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {int(note['pid'])} on host {note['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
