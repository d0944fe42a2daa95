"""Where documents come from: the built-in corpus, local files, or a dataset on the Hugging Face Hub.

Every source is an iterator of documents (str) in a fixed order, so a prepared data dir is a pure
function of its arguments. Files are read lazily: parquet row group by row group, jsonl line by
line, so the corpus is never held in memory.

    builtin                 the running Python's standard library source (~12.6 MB, ~800 files)
    PATH.txt                one document per file
    PATH.jsonl[.gz]         one document per line, from its `text` field
    PATH.parquet            one document per row, from its `text` column
    DIR                     every file above in DIR, recursively, in sorted order
    fineweb, fineweb-edu    HuggingFaceFW/fineweb(-edu), sample-10BT by default (see hub.py)
    hf:OWNER/NAME           any Hub dataset repo of parquet files with a text column
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Iterator

from baseforge.errors import UserError
from baseforge.fileio import read_jsonl

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet")


def builtin_files() -> list[Path]:
    """The standard library's .py files, tests excluded, sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] in ("site-packages", "dist-packages"):
            continue
        if any(p in ("test", "tests", "idle_test") or p.startswith("test") for p in parts):
            continue
        files.append(path)
    if not files:
        raise UserError(f"the built-in corpus is empty: no standard library sources under {root}")
    return files


def _is_data_file(path: Path) -> bool:
    return path.name.endswith(SUFFIXES)


def local_files(spec: str) -> list[Path]:
    path = Path(spec)
    if not path.exists():
        raise UserError(f"source {spec!r} not found: give a file (.txt, .jsonl, .jsonl.gz, .parquet), a folder "
                        "of them, 'builtin', 'fineweb', 'fineweb-edu' or 'hf:OWNER/NAME'")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_data_file(p))
        if not files:
            raise UserError(f"folder {spec} holds no .txt, .jsonl(.gz) or .parquet files")
        return files
    if not _is_data_file(path):
        raise UserError(f"{spec}: unknown file type; use .txt, .jsonl, .jsonl.gz or .parquet")
    return [path]


def read_documents(path: Path, text_column: str = "text") -> Iterator[str]:
    """The documents of one local file."""
    name = path.name
    try:
        if name.endswith((".txt", ".py")):
            yield path.read_text(encoding="utf-8", errors="replace")
        elif name.endswith(".parquet"):
            yield from _parquet_documents(path, text_column)
        else:
            for lineno, row in read_jsonl(path):
                if not isinstance(row.get(text_column), str):
                    raise UserError(f"{path}:{lineno}: no {text_column!r} string field")
                yield row[text_column]
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _parquet_documents(path: Path, text_column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise UserError(f"{path} is not a readable parquet file ({exc})") from None
    if text_column not in pf.schema_arrow.names:
        raise UserError(f"{path} has no {text_column!r} column (columns: {', '.join(pf.schema_arrow.names)})")
    for group in range(pf.num_row_groups):
        for text in pf.read_row_group(group, columns=[text_column]).column(0).to_pylist():
            if text is not None:
                yield text


class Source:
    """A named, ordered list of files and how to read documents from them."""

    def __init__(self, name: str, files: list, text_column: str = "text"):
        self.name = name
        self.files = files  # Paths, or hub.LazyFile objects that download on first use
        self.text_column = text_column

    def documents(self) -> Iterator[str]:
        for f in self.files:
            path = f.fetch() if hasattr(f, "fetch") else f
            yield from read_documents(path, self.text_column)


def open_source(spec: str, *, local: str | None = None, sample: str | None = None,
                text_column: str = "text", max_files: int | None = None) -> Source:
    """Resolve a SOURCE argument of `baseforge prepare`."""
    if spec == "builtin":
        return Source("builtin", builtin_files())
    if spec in ("fineweb", "fineweb-edu") or spec.startswith("hf:"):
        from baseforge.data.hub import hub_files

        return Source(spec, hub_files(spec, local=local, sample=sample, max_files=max_files), text_column)
    if local:
        raise UserError("--local applies to Hub sources (fineweb, fineweb-edu, hf:OWNER/NAME) only")
    return Source(spec, local_files(spec), text_column)
