"""File I/O: atomic writes, and one reader of JSON-lines files.

Atomic writes: a file or folder appears complete under its final name, or not at all.

Everything baseforge writes (shards, manifests, checkpoints, pointers, charts) goes to a
temporary name in the same folder and is renamed into place, so a crash or a kill never
leaves a half-written file that looks valid.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path beside `path`; rename it over `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
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
def atomic_dir(path: Path | str):
    """Yield a temporary folder beside `path`; rename it to `path` if the block succeeds.

    `path` must not exist yet (a folder cannot be renamed over a non-empty one atomically).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                _fsync_file(f)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


def read_jsonl(path: Path | str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a .jsonl or .jsonl.gz file.

    A line that is not a JSON object raises UserError naming file:line; callers check the fields.
    """
    from baseforge.errors import UserError

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
