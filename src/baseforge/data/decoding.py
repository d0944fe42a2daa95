"""Decoding the documents of JSON lines and Parquet files, and what each problem in them gets.

A text file (.txt, --include) is decoded leniently (sources.decode_text): a few bad bytes become
U+FFFD, a mostly undecodable one is binary and skipped, counted and named. JSON lines and Parquet
declare their text UTF-8, so a problem there is the file's, and prepare refuses it in one line
naming the file and line (or row) and what to do, rather than train on a guess:

    JSON line not UTF-8            refused: FILE:LINE, the byte; re-encode the file
    JSON line not valid JSON       refused: FILE:LINE, what json says (truncated, not an object...)
    JSON nested > MAX_JSON_DEPTH   refused: FILE:LINE
    no text field, or not a string refused: FILE:LINE, its type or the fields there are; --text-column
    lone surrogate escape          replaced: "\\ud800" is valid JSON but no Unicode text (a split
                                   emoji, mostly): each becomes U+FFFD; the documents are counted,
                                   the first named (`JsonlLines.replaced`, the manifest's "surrogates")
    Parquet text column not text   refused: FILE, the column and its type; --text-column
    Parquet string not UTF-8       refused: FILE, the row
    Parquet null                   skipped (a row without text, not counted)

The same piece always gives the same answer, in whichever process reads it, so the outcome is the
same for any number of workers.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from baseforge.data.files import shown
from baseforge.errors import UserError

# Deeper lines are refused: Python's json recurses per level and runs out of stack near 1,000 levels,
# at a depth that depends on the caller's stack (a worker's differs from the main process's).
MAX_JSON_DEPTH = 200
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = np.zeros(256, dtype=np.int8)
_BRACKETS[[ord("["), ord("{")]] = 1
_BRACKETS[[ord("]"), ord("}")]] = -1
_SURROGATE = re.compile("[\ud800-\udfff]")


def _too_deep(line: bytes) -> bool:
    if line.count(b"[") + line.count(b"{") <= MAX_JSON_DEPTH:  # nearly every line: no scan
        return False
    steps = _BRACKETS[np.frombuffer(_JSON_STRING.sub(b"", line), dtype=np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0)) > MAX_JSON_DEPTH


def _kind(value) -> str:
    """A JSON value's kind, for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else "a string"


class JsonlLines:
    """Whole lines of a .jsonl(.gz) file, as bytes, starting at line `first_line`.

    `read()` gives each line's text and lists in `replaced` where it replaced lone surrogates
    ("FILE:LINE"), for prepare to count.
    """

    def __init__(self, path: Path, first_line: int, data: bytes, text_column: str):
        self.path, self.first_line, self.data, self.text_column = path, first_line, data, text_column
        self.replaced: list[str] = []

    def read(self) -> list[str]:
        self.replaced = []
        docs = self._read_arrow()
        return docs if docs is not None else self._read_python()

    def _read_arrow(self) -> list[str] | None:
        """pyarrow's C++ JSON reader: a third of the time of json.loads per line, which costs a
        worker 15% on top of tokenizing. None whenever it might not give exactly the line-by-line
        reader's answer (a bad line, a missing or non-string text, an invalid surrogate, bytes
        that are not UTF-8, deep nesting, an object over two lines or two on one): that reader then
        gives the answer or the error message with its line number."""
        import pyarrow as pa
        import pyarrow.json as pj

        lines = [stripped for line in self.data.split(b"\n") if (stripped := line.strip())]
        if not lines or not _one_object_a_line(lines) or not _utf8(self.data) or any(map(_too_deep, lines)):
            return None  # checks arrow does not make
        try:
            table = pj.read_json(
                io.BytesIO(self.data),
                read_options=pj.ReadOptions(use_threads=False, block_size=max(len(self.data), 1 << 16) + 1),
                parse_options=pj.ParseOptions(
                    explicit_schema=pa.schema([(self.text_column, pa.string())]),
                    unexpected_field_behavior="ignore",
                ),
            )
        except (pa.ArrowException, ValueError):
            return None
        column = table.column(self.text_column)
        return None if column.null_count or len(column) != len(lines) else column.to_pylist()

    def _read_python(self) -> list[str]:
        docs = []
        for lineno, line in enumerate(self.data.split(b"\n"), self.first_line):
            if line.strip():
                docs.append(self._text(self._row(line, f"{shown(self.path)}:{lineno}"), lineno))
        return docs

    @staticmethod
    def _row(line: bytes, where: str):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{where}: not UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}); "
                "JSON lines must be UTF-8: re-encode the file (e.g. iconv -f latin1 -t utf-8)"
            ) from None
        if _too_deep(line):
            raise UserError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; remove that line")
        try:  # parse_int=float: a 5,000-digit number is no error (Python's int has a digit limit, arrow none)
            return json.loads(text.removeprefix("\ufeff"), parse_int=float)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{where}: not valid JSON at column {exc.colno} ({exc.msg.removesuffix(' at')}); "
                "fix or remove that line"
            ) from None

    def _text(self, row, lineno: int) -> str:
        where = f"{shown(self.path)}:{lineno}"
        value = row.get(self.text_column) if isinstance(row, dict) else None
        if isinstance(value, str):
            if value.isascii() or _SURROGATE.search(value) is None:
                return value
            self.replaced.append(f"{self.path}:{lineno}")
            return _SURROGATE.sub("\ufffd", value)
        if not isinstance(row, dict):
            what = f"{_kind(row)}, not an object with a {self.text_column!r} field"
        elif self.text_column in row:
            what = f"its {self.text_column!r} field is {_kind(value)}, not a string"
        else:
            names = [shown(k)[:40] for k in list(row)[:8]]
            more = ", ..." if len(row) > 8 else ""
            fields = f"fields: {', '.join(names)}{more}" if row else "an empty object"
            what = f"no {self.text_column!r} field ({fields})"
        raise UserError(f"{where}: {what}; name the field that holds the text with --text-column")


def _one_object_a_line(lines: list[bytes]) -> bool:
    """Does each line, stripped, open with { and close with }? Then no object spans two lines (a line
    that ends with } is past a whole value, and a { cannot follow one inside an object), so arrow's
    rows are the lines when it finds as many. (A first row that is no object must never reach arrow:
    pyarrow 26 dies of SIGSEGV on a `null` one, apache/arrow#47409.)"""
    first = lines[0].removeprefix(b"\xef\xbb\xbf").lstrip()  # a byte order mark opens the file
    return first[:1] == b"{" and all(line[:1] == b"{" and line[-1:] == b"}" for line in [first, *lines[1:]])


def _utf8(data: bytes) -> bool:
    """Is `data` UTF-8, as strictly as Python's decoder? (Arrow's check: 20x faster than decoding.)"""
    import pyarrow as pa

    if data.isascii():
        return True
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    whole = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def check_text_column(path: Path, schema, text_column: str) -> None:
    """Refuse a Parquet file whose text column is missing, doubled or holds no strings, before reading it."""
    import pyarrow as pa

    names = schema.names
    found = names.count(text_column)
    if not found:
        columns = ", ".join(shown(n)[:40] for n in names[:20]) + (", ..." if len(names) > 20 else "")
        raise UserError(
            f"{shown(path)} has no {text_column!r} column (columns: {columns}); use --text-column"
        )
    if found > 1:
        raise UserError(
            f"{shown(path)} has {found} columns named {text_column!r}: cannot tell which holds the text"
        )
    kind = schema.field(text_column).type
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not (pa.types.is_string(value) or pa.types.is_large_string(value) or _is_string_view(value)):
        raise UserError(
            f"{shown(path)}: column {text_column!r} holds {kind}, not text (a string column); "
            "name the column that holds the text with --text-column"
        )


def _is_string_view(kind) -> bool:
    import pyarrow as pa

    return bool(getattr(pa.types, "is_string_view", lambda _: False)(kind))


def read_text_column(column, path: Path, first_row: Callable[[], int]) -> list[str]:
    """A row group's text column as strings (nulls skipped); a string that is not UTF-8 is refused,
    naming its row in the file (from 0; `first_row()` gives the row group's first, when needed)."""
    try:
        texts = column.to_pylist()
    except UnicodeDecodeError:
        for i, value in enumerate(column):
            try:
                value.as_py()
            except UnicodeDecodeError:
                raise UserError(
                    f"{shown(path)}: row {first_row() + i} (from 0) of its text column is not UTF-8; "
                    "re-encode that text (or drop the row)"
                ) from None
        raise  # unreachable: some row failed to decode
    return [text for text in texts if text is not None]
