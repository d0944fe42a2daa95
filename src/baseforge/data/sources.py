"""Where documents come from: the built-in corpus, local files, or a dataset on the Hugging Face Hub.

Every source is a sequence of documents (str) in a fixed order, so a prepared data dir is a pure
function of its arguments. Files are read lazily, a piece at a time (a parquet row group, a
megabyte of jsonl lines, a group of text files), so the corpus is never held in memory.

    builtin                 the running Python's standard library source (~12.6 MB, ~800 files)
    PATH.txt                one document per file
    PATH.jsonl[.gz]         one document per line, from its `text` field (and .jsonl.zst[d], as
                            DCLM ships on the Hub: read through pyarrow's zstd, no new dependency)
    PATH.parquet            one document per row, from its `text` column
    DIR                     every file above in DIR, recursively, in sorted order; with include
                            globs (--include '*.py'), the files matching any of them instead,
                            each read as one text document unless it is .jsonl/.parquet
    NAME                    an open corpus on the Hub known by name (corpora.py: fineweb,
                            fineweb-edu, climbmix, dclm, starcoderdata, open-web-math), read from
                            its own text column unless --text-column names another (see hub.py)
    hf:OWNER/NAME           any Hub dataset repo of parquet files with a text column

Which files of a local folder are read, symlinks included: files.py. How JSON lines and Parquet
text is decoded, and what a bad line or column gets: decoding.py.
"""

from __future__ import annotations

import functools
import gzip
import sysconfig
import zlib
from pathlib import Path
from typing import Iterator

from baseforge.data.corpora import ZSTD_LINES, hub_source, names
from baseforge.data.decoding import JsonlLines, check_text_column, read_text_column
from baseforge.data.files import local_files, shown
from baseforge.data.hub import hub_files, mirror_files
from baseforge.errors import UserError


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


# --- pieces: the units of reading and tokenizing ----------------------------------------------------
# A source is split, in the main process, into pieces whose reading is cheap to describe; a worker
# process reads a piece (parses its JSON lines, decodes its parquet row group) and tokenizes it, so
# the main process does little more than find line breaks and write shards. The pieces of a source
# depend only on its files, never on the number of workers.

PIECE_BYTES = 1 << 20  # jsonl bytes per piece, and small text files grouped up to this size


BINARY_SHARE = 0.25  # a file this share of whose characters is undecodable UTF-8 is not text


def decode_text(data: bytes) -> str | None:
    """The file's text (bad bytes replaced), or None for a binary file: a NUL byte, or mostly undecodable."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
    return None if text.count("\ufffd") > BINARY_SHARE * len(text) else text


class TextFiles:
    """Whole files, one document each (grouped: the built-in corpus is ~700 small files).

    A binary file is no document: read() skips it and lists it in `binary`, for prepare to report.
    """

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.binary: list[str] = []

    def read(self) -> list[str]:
        docs, self.binary = [], []
        for path in self.paths:
            try:
                text = decode_text(path.read_bytes())
            except OSError as exc:
                raise UserError(f"cannot read {shown(exc.filename)}: {exc.strerror}") from None
            if text is None:
                self.binary.append(str(path))
            else:  # universal newlines, as reading in text mode gives
                docs.append(text.replace("\r\n", "\n").replace("\r", "\n"))
        return docs


class ParquetRowGroup:
    def __init__(self, path: Path, group: int, text_column: str):
        self.path, self.group, self.text_column = path, group, text_column

    def read(self) -> list[str]:
        try:  # one thread: the workers are the parallelism
            stat = self.path.stat()
            file = _parquet_file(self.path, stat.st_mtime_ns, stat.st_size)
            column = file.read_row_group(self.group, columns=[self.text_column], use_threads=False).column(0)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise UserError(
                f"cannot read row group {self.group} of {shown(self.path)} ({_one_line(exc)})"
            ) from None
        return read_text_column(
            column, self.path, lambda: sum(file.metadata.row_group(g).num_rows for g in range(self.group))
        )


def _one_line(exc: BaseException) -> str:
    """A library's error text for a one-line message: its first line, cut at 200 characters."""
    text = str(exc).strip()
    return shown(text.splitlines()[0][:200] if text else type(exc).__name__)


@functools.lru_cache(maxsize=2)
def _parquet_file(path: Path, mtime_ns: int, size: int):
    """The open file, kept for its next row groups: parsing the footer again cost a third of the reading.
    Keyed by its modification time and size too: a file written again at the same path is opened again."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


def preload_readers() -> None:
    """Import the piece readers' libraries (0.25 s) once, before worker processes fork, not in each."""
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401


def file_pieces(path: Path, text_column: str = "text") -> Iterator:
    """The pieces of one local file, in document order."""
    name = path.name
    try:
        if name.endswith(".parquet"):
            yield from _parquet_pieces(path, text_column)
        elif name.endswith((".jsonl", ".jsonl.gz", ".json.gz", *ZSTD_LINES)):
            yield from _jsonl_pieces(path, text_column)
        else:  # .txt, or any file an --include glob picked: one text document
            yield TextFiles([path])
    except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt .gz or .zst among them
        raise UserError(f"cannot read {shown(path)}: {_one_line(exc)}") from None


def _open_lines(path: Path):
    """The file's bytes, decompressed as its name says; a bad stream raises OSError as it is read."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(ZSTD_LINES):
        import pyarrow as pa

        return pa.input_stream(str(path), compression="zstd")
    return open(path, "rb")


def _jsonl_pieces(path: Path, text_column: str) -> Iterator[JsonlLines]:
    line, rest = 1, b""
    with _open_lines(path) as f:
        while block := f.read(PIECE_BYTES):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            if cut:
                yield JsonlLines(path, line, block[:cut], text_column)
                line += block.count(b"\n", 0, cut)
            rest = block[cut:]
    if rest.strip():
        yield JsonlLines(path, line, rest, text_column)


def _parquet_pieces(path: Path, text_column: str) -> Iterator[ParquetRowGroup]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise UserError(f"{shown(path)} is not a readable parquet file ({_one_line(exc)})") from None
    check_text_column(path, pf.schema_arrow, text_column)
    for group in range(pf.num_row_groups):
        yield ParquetRowGroup(path, group, text_column)


def _grouped(pieces: Iterator) -> Iterator:
    """Consecutive single text files merged into pieces of up to PIECE_BYTES."""
    group, size = [], 0
    for piece in pieces:
        if isinstance(piece, TextFiles):
            group += piece.paths
            size += piece.paths[0].stat().st_size
            if size < PIECE_BYTES:
                continue
            piece = TextFiles(group)
        elif group:
            yield TextFiles(group)
        group, size = [], 0
        yield piece
    if group:
        yield TextFiles(group)


class Source:
    """A named, ordered list of files and how to read documents from them."""

    def __init__(self, name: str, files: list, text_column: str = "text", links: list[Path] | None = None):
        self.name = name
        self.files = files  # Paths, or hub.LazyFile objects that download on first use
        self.text_column = text_column
        self.links = links or []  # symlinks out of a local folder, not followed (files.py)

    def pieces(self) -> Iterator:
        """Units of reading, in document order; Hub files are downloaded as their turn comes."""

        def each_file():
            for f in self.files:
                yield from file_pieces(f.fetch() if hasattr(f, "fetch") else f, self.text_column)

        return _grouped(each_file())

    def documents(self) -> Iterator[str]:
        for piece in self.pieces():
            yield from piece.read()


def open_source(
    spec: str,
    *,
    local: str | None = None,
    sample: str | None = None,
    text_column: str = "text",
    max_files: int | None = None,
    include: tuple[str, ...] = (),
    follow_symlinks: bool = False,
) -> Source:
    """Resolve a SOURCE argument of `baseforge prepare`; `include` globs apply to local folders, and
    symlinks out of a local folder (or a --local copy) are read only with `follow_symlinks`."""
    if spec == "builtin":
        return Source("builtin", builtin_files())
    hub = hub_source(spec)
    if hub is not None:
        # "text" is --text-column's default: a corpus keeps its own column (StarCoderData: content).
        column = hub.text_column if text_column == "text" else text_column
        if not local:
            return Source(spec, hub_files(spec, sample=sample, max_files=max_files), column)
        listing = mirror_files(spec, local, sample=sample, max_files=max_files, follow=follow_symlinks)
        return Source(spec, listing.files, column, listing.links)
    if local:
        raise UserError(f"--local applies to Hub sources ({names()}, hf:OWNER/NAME) only")
    if not Path(spec).exists() and not any(c in spec for c in "/\\."):  # a name, not a path
        raise UserError(
            f"source {shown(spec)} not found: no such file or folder, and not a corpus name "
            f"({names()}, builtin, or hf:OWNER/NAME)"
        )
    listing = local_files(spec, tuple(include), follow_symlinks)
    return Source(spec, listing.files, text_column, listing.links)
