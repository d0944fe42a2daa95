"""File I/O: atomic writes, write-fault reporting, output-folder checks, and one JSON-lines reader.

Atomic writes: a file or folder appears complete under its final name, or not at all.

Everything baseforge writes (shards, manifests, checkpoints, pointers, charts) goes to a
temporary name in the same folder and is renamed into place, so a crash or a kill never
leaves a half-written file that looks valid. A write that fails (a full disk, an I/O error, a
read-only filesystem) removes its temporary file or folder and leaves the target as it was.
Files and folders get the modes a plain open() or mkdir() would give (0644 / 0755 under the usual
umask 022), not the private 0600 / 0700 of temporary files, so a shared filesystem can read them.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from baseforge.errors import UserError

# Write faults the CLI reports as one line (see describe_write_error) instead of a traceback.
WRITE_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only off Linux)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path beside `path`; rename it over `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with io_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with io_errors(path):  # a failed write names the target, whichever library wrote it
            yield Path(tmp)
            # After the block: the writer may have replaced the temp file with one of its own.
            os.chmod(tmp, 0o666 & ~current_umask())
            _fsync_file(tmp)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path: Path | str, staged: Path | str | None = None):
    """Yield a temporary folder beside `path`; rename it to `path` if the block succeeds.

    `path` must not exist yet (a folder cannot be renamed over a non-empty one atomically). `staged`:
    a temporary folder made beforehand, which other writers already filled (an FSDP run's ranks write
    their shards into it); it is completed and renamed instead of a new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if staged is not None:
        tmp = Path(staged)
    else:
        with io_errors(path):
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with io_errors(path):
            yield tmp
            apply_umask_modes(tmp)
            for f in tmp.rglob("*"):
                if f.is_file() and not f.is_symlink():
                    _fsync_file(f)
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def apply_umask_modes(root: Path | str) -> None:
    """Give folder `root`, and every file and folder under it, the mode a plain open() or mkdir()
    would (0644 / 0755 under umask 022): mkdtemp makes 0700 and some writers make 0600 (safetensors'
    save_file does), which the rename into place would otherwise keep. Symlinks are left alone."""
    umask = current_umask()
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def _fsync_file(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- write faults ---------------------------------------------------------------------------------
# torch.save and safetensors report a failed write without an errno ("unexpected pos", "file write
# failed", or the Rust error's text), so io_errors recognises them by their messages.
_WRITE_FAILED = re.compile(
    r"unexpected pos|file write failed|PytorchStreamWriter failed|No space left|Disk quota|"
    r"Input/output error|Read-only file system|Permission denied|IoError",
    re.IGNORECASE,
)
_CODE_IN_TEXT = re.compile(r"(?:code:|errno)\s*(\d+)", re.IGNORECASE)
_STRERROR_IN_TEXT = {
    "no space left": errno.ENOSPC,
    "disk quota": errno.EDQUOT,
    "input/output error": errno.EIO,
    "read-only file system": errno.EROFS,
    "permission denied": errno.EACCES,
}


@contextmanager
def io_errors(path: Path | str):
    """Turn any failed write inside the block into an OSError that names `path`.

    Wrap library writers (torch.save, safetensors) so that a full disk reaches the CLI as the same
    one-line error as any other write fault, not as a RuntimeError with a C++ trace.
    """
    try:
        yield
    except OSError as exc:
        named = exc.filename is not None and not _is_temp_name(exc.filename)
        if named or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
    except Exception as exc:  # noqa: BLE001 - RuntimeError (torch), SafetensorError, ...
        text = str(exc)
        if not _WRITE_FAILED.search(text):
            raise
        code, reason = _errno_in(text)
        raise OSError(code, reason, str(path)) from exc


def _is_temp_name(name) -> bool:
    """Is this one of atomic_path's / atomic_dir's temporary names (or a file inside one)?"""
    return any(part.startswith(".") and part.endswith(".tmp") for part in Path(os.fsdecode(name)).parts)


def _errno_in(text: str) -> tuple[int, str]:
    """(errno, reason) read from a library's error text; a bare short write is most likely a full disk."""
    match = _CODE_IN_TEXT.search(text)
    if match and int(match.group(1)) in errno.errorcode:
        code = int(match.group(1))
        return code, os.strerror(code)
    lowered = text.lower()
    for needle, code in _STRERROR_IN_TEXT.items():
        if needle in lowered:
            return code, os.strerror(code)
    return errno.ENOSPC, "write failed (most likely no space left on device)"


def describe_write_error(exc: OSError) -> str | None:
    """One line for a write fault: what happened, on which path, what to do; None for other errors."""
    if exc.errno not in WRITE_FAULTS:
        return None
    path = exc.filename or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"{exc.strerror}: writing {path}. Free space on that disk (or lower keep_last so fewer "
            "checkpoints are kept), then run the command again; a training run continues with --resume"
        )
    if exc.errno == errno.EIO:
        return (
            f"I/O error on {path}: the disk or network filesystem failed. Check it (dmesg, df), "
            "then run the command again"
        )
    if exc.errno == errno.EROFS:
        return f"{path} is on a read-only filesystem: choose a writable location (--out) or remount it"
    return (
        f"permission denied on {path}: check the owner and permissions of its folder, or choose another --out"
    )


# --- output folders -------------------------------------------------------------------------------
def check_out_file(path: Path | str, overwrite: bool, what: str = "--out") -> Path:
    """Check, before any work, that file `path` may be written: not a folder, and not an existing file
    unless `overwrite` (results of an earlier run are not lost at the end of this one)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file; choose a file path")
    if path.exists() and not overwrite:
        raise UserError(
            f"{what} {path} already exists; add --overwrite to replace it, or choose another path"
        )
    check_out_dir(path.parent, what)
    return path


def check_out_dir(path: Path | str, what: str = "--out", *, make_parents: bool = True) -> Path:
    """Check, before any work, that folder `path` can be used or made; UserError (one line) if not.

    A file in the way, a file among its parents, or an unwritable nearest existing folder are
    refused. Missing parents are fine (they will be created) unless make_parents is False.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; choose another path")
    if not make_parents and not path.parent.is_dir():
        raise UserError(
            f"{what} {path}: its parent folder {path.parent} does not exist; create it or fix the path"
        )
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{what} {path}: {existing} is a file, so no folder can be made under it; fix the path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{what} {path}: cannot write in {existing} (permission denied or read-only filesystem); "
            "choose another path"
        )
    return path


@contextmanager
def output_dir(path: Path | str, *, keep=lambda path: False):
    """Make folder `path` (and missing parents); if the block raises, remove every folder this made.

    A folder made here goes with its contents unless keep(path) says they are worth keeping (a
    resumable partial result); folders that existed before are never touched.
    """
    path = Path(path)
    made, p = [], path
    while not p.exists():
        made.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if made and not keep(path):
            shutil.rmtree(path, ignore_errors=True)
            for parent in made[1:]:
                try:
                    parent.rmdir()  # only if empty
                except OSError:
                    break
        raise


def swap_dir(staging: Path, out: Path, aside: Path) -> None:
    """Put the finished folder `staging` where `out` is: `out` renamed to `aside` first, then `staging` to
    `out`; if that second rename fails, `out` is put back. The caller removes `aside` once it is done."""
    with io_errors(out):
        os.rename(out, aside)
        try:
            os.rename(staging, out)
        except BaseException:
            os.rename(aside, out)
            raise


def read_jsonl(path: Path | str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a .jsonl or .jsonl.gz file.

    A line that is not a JSON object raises UserError naming file:line; callers check the fields.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno}: not valid JSON") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: not a JSON object")
            yield lineno, row


def read_append_log(path: Path | str) -> list[dict]:
    """The objects of an append-only JSON-lines log (metrics.jsonl, the judge's cache).

    Unlike `read_jsonl` (input data, where a bad line is the user's to fix), a log's bad line is
    one a kill left half-written: it is skipped, never an error. A missing log is empty.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
