"""Reading what a run or data dir holds without trusting it: JSON records, names and paths, checked first.

Everything read back from disk may have been edited, torn or planted. The readers here turn each such
file into one `UserError` line that names the file, the field and what to do, quoting at most a short,
escaped excerpt of what was found. Paths a record names must stay inside the folder that holds it: no
absolute paths, no `..`, no symlinks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from baseforge.errors import UserError

MAX_RECORD_BYTES = 64 << 20  # a state.json, config.json or manifest is kilobytes; a larger one is not ours
MAX_COUNT = 1 << 53  # steps, tokens, sizes: an exact integer in JSON and in a float


def excerpt(value, limit: int = 40) -> str:
    """A short, escaped rendering of a value read from a file, for an error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_json(path: Path, what: str = "record", max_bytes: int = MAX_RECORD_BYTES) -> dict:
    """A JSON object from `path` (not a symlink, at most `max_bytes`), or a UserError naming the file."""
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"{path} is a symlink; baseforge reads its {what} only from a plain file")
    if not path.is_file():
        raise UserError(f"{path} is missing: this {what} is incomplete")
    if path.stat().st_size > max_bytes:
        raise UserError(f"{path} is {path.stat().st_size:,} bytes, too large to be a {what}")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{path} is not readable JSON ({type(exc).__name__} at {_where(exc)}): corrupt {what}"
        ) from None
    except RecursionError:  # nesting deeper than the parser's stack: no record of ours is
        raise UserError(f"{path} nests too deeply to be a {what}: corrupt file") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds {type(value).__name__}, not a JSON object: corrupt {what}")
    return value


def _where(exc: Exception) -> str:
    return f"position {getattr(exc, 'pos', getattr(exc, 'start', '?'))}"


def count(
    record: dict, key: str, path: Path, *, low: int = 0, high: int = MAX_COUNT, optional=False
) -> int | None:
    """An integer field in [low, high] (bools and floats refused); None when optional and absent."""
    if key not in record and optional:
        return None
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(
            f"{path}: {key} is {excerpt(value)}, not a whole number in [{low}, {high}]; corrupt file"
        )
    return value


def number(record: dict, key: str, path: Path, *, optional: bool = True) -> float | None:
    """A finite number field (or null / absent when optional)."""
    value = record.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{path}: {key} is {excerpt(value)}, not a finite number; corrupt file")
    return float(value)


def text(record: dict, key: str, path: Path, *, optional: bool = False) -> str | None:
    value = record.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise UserError(f"{path}: {key} is {excerpt(value)}, not a non-empty string; corrupt file")
    return value


def inside(root: Path, name, where: str) -> Path:
    """`root / name` for a relative `name` that stays inside `root` (no absolute path, no `..`, no symlink
    on the way); `where` names the record and field that gave it, for the error line."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UserError(f"{where} is {excerpt(name)}, not a file name; corrupt record")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise UserError(
            f"{where} names {excerpt(name)}, outside its folder {root}; baseforge reads only inside it"
        )
    path = Path(root) / relative
    for part in [path, *path.parents]:
        if part == Path(root) or len(part.parts) <= len(Path(root).parts):
            break
        if part.is_symlink():
            raise UserError(
                f"{where} names {excerpt(name)}, a symlink; baseforge reads only plain files in {root}"
            )
    return path
