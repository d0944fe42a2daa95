"""The data dir's manifest (`DATA/manifest.json`): what `prepare` made, typed, and read back checked.

    format, version     "baseforge-tokens", 1
    tokenizer           the tokenizer record (name, vocab_size, eot_id, sha256, and a trained BPE's file)
    pack, context       how documents became the token stream ("concat", "crop" with its context)
    sources             what was read
    documents, tokens   totals over every split
    splits              train / val / test: {"documents", "tokens", "shards": [{"file", "tokens"}]}
    held_out            how val was chosen: "sample" (a seeded sample of whole documents, docsample.py),
                        "tail" (the end of the token stream: --held-out tail, or too few documents),
                        or "documents" (every 1/f-th document: data dirs prepared before the sample)
    val_seed            the sample's seed (with "sample")
    skipped             files not read: binary ones (`binary_files`, the `first`), and symlinks out of a
                        source folder (`symlinks`, `first_symlink`; only when there were some)
    surrogates          texts whose lone surrogate escapes became U+FFFD (documents, first; when any)
    cropped             what crop packing dropped (documents, tokens)
    val_floor           present when --min-val-tokens moved documents into val (heldout.floor_record)
    args_key, args      the prepare arguments, so the same command finds its data dir already made

`write_manifest` is the one writer and `read_manifest` the one reader. A data dir may come from anyone,
so the reader checks every field's type and range, that each split's shard counts add up to its total,
and that each shard file is a plain file inside the dir, before anything is read or allocated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baseforge.errors import UserError
from baseforge.fileio import atomic_write_json
from baseforge.records import count, excerpt, inside, read_json, text

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "baseforge-tokens"
MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")
MAX_VOCAB = 1 << 32  # shards hold ids as uint16 or uint32
MAX_SHARDS = 1 << 20
HELD_OUT = ("sample", "tail", "documents")  # how val was chosen; "documents": before the sample


@dataclass(frozen=True)
class ShardEntry:
    file: str
    tokens: int


@dataclass(frozen=True)
class SplitEntry:
    tokens: int
    shards: tuple[ShardEntry, ...]
    documents: int | None = None  # unknown for a split cut from the stream's tail

    @classmethod
    def of(cls, shards: list[tuple[str, int]], documents: int | None = None) -> SplitEntry:
        """A split of `shards`, (file, tokens) each, its total counted from them."""
        entries = tuple(ShardEntry(f, n) for f, n in shards)
        return cls(sum(e.tokens for e in entries), entries, documents)


@dataclass(frozen=True)
class Manifest:
    tokenizer: dict
    splits: dict[str, SplitEntry]
    documents: int
    tokens: int
    pack: str = "concat"
    context: int | None = None
    sources: tuple[str, ...] = ()
    held_out: str = "sample"
    val_seed: int | None = None
    skipped: dict = field(default_factory=lambda: {"binary_files": 0, "first": None})
    surrogates: dict | None = None  # texts whose lone surrogates became U+FFFD: documents, first
    cropped: dict = field(default_factory=lambda: {"documents": 0, "tokens": 0})
    val_floor: dict | None = None
    args_key: str | None = None
    args: dict | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer["vocab_size"]

    @property
    def eot_id(self) -> int | None:
        return self.tokenizer.get("eot_id")

    def held_out_words(self) -> str:
        """How val was chosen, in words, for the lines a user reads (prepare, data info, train)."""
        if self.held_out == "sample":
            return f"a seeded sample of whole documents (seed {self.val_seed})"
        if self.held_out == "tail":
            return "the last tokens of the stream"
        return "every 1/f-th document (a data dir prepared before the seeded sample)"

    def to_json(self) -> dict:
        splits = {
            name: {
                "documents": s.documents,
                "tokens": s.tokens,
                "shards": [{"file": e.file, "tokens": e.tokens} for e in s.shards],
            }
            for name, s in self.splits.items()
        }
        record = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "tokenizer": self.tokenizer,
            "pack": self.pack,
            "context": self.context,
            "sources": list(self.sources),
            "documents": self.documents,
            "tokens": self.tokens,
            "splits": splits,
            "held_out": self.held_out,
            "val_seed": self.val_seed,
            "skipped": self.skipped,
            "surrogates": self.surrogates,
            "cropped": self.cropped,
            "val_floor": self.val_floor,
            "args_key": self.args_key,
            "args": self.args,
        }
        return {k: v for k, v in record.items() if v is not None or k == "context"}


def write_manifest(data_dir: Path | str, manifest: Manifest) -> None:
    atomic_write_json(Path(data_dir) / MANIFEST, manifest.to_json())


def read_manifest(data_dir: Path | str) -> Manifest:
    """The data dir's manifest, every field checked. Raises UserError (one line naming the file and the
    field) if the dir or manifest is missing, unreadable or not what `prepare` writes."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if data_dir.is_file():  # the raw corpus given where its prepared data dir belongs
        raise UserError(
            f"{data_dir} is a file, not a data dir: prepare it first "
            f"(`baseforge prepare {data_dir} --out data/{data_dir.stem}`) and pass that folder"
        )
    if not data_dir.is_dir():
        raise UserError(
            f"data dir {data_dir} does not exist; create it with `baseforge prepare SOURCE --out {data_dir}`"
        )
    if not path.exists() and not path.is_symlink():
        raise UserError(
            f"{data_dir} has no {MANIFEST}: not a prepared data dir (or prepare did not finish); "
            f"run `baseforge prepare SOURCE --out {data_dir}`"
        )
    record = read_json(path, "data dir manifest")
    if record.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} is not a baseforge manifest (format {excerpt(record.get('format'))})")
    if record.get("version") != MANIFEST_VERSION:
        raise UserError(
            f"{path} has version {excerpt(record.get('version'))}; this baseforge reads version "
            f"{MANIFEST_VERSION}: re-run `baseforge prepare`"
        )
    return _parse(record, path, data_dir)


def _parse(record: dict, path: Path, data_dir: Path) -> Manifest:
    splits = _mapping(record, "splits", path)
    if "train" not in splits and "val" not in splits:
        raise UserError(f"{path}: splits holds neither train nor val; corrupt manifest: re-run prepare")
    context = (
        count(record, "context", path, low=1, high=1 << 24, optional=True) if record.get("context") else None
    )
    sources = record.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise UserError(f"{path}: sources is {excerpt(sources)}, not a list of names; corrupt manifest")
    held_out = record.get("held_out", "documents")
    if held_out not in HELD_OUT:
        raise UserError(
            f"{path}: held_out is {excerpt(held_out)}, not one of {', '.join(HELD_OUT)}; corrupt manifest"
        )
    return Manifest(
        tokenizer=_tokenizer(record, path),
        splits={name: _split(name, value, path, data_dir) for name, value in splits.items()},
        documents=_count(record, "documents", path),
        tokens=_count(record, "tokens", path),
        pack=text(record, "pack", path, optional=True) or "concat",
        context=context,
        sources=tuple(sources),
        held_out=held_out,
        val_seed=count(record, "val_seed", path, high=(1 << 32) - 1, optional=True),
        skipped=_counted(record, "skipped", path, {"binary_files": 0, "first": None}),
        surrogates=_counted(record, "surrogates", path, None),
        cropped=_counted(record, "cropped", path, {"documents": 0, "tokens": 0}),
        val_floor=_mapping(record, "val_floor", path, None),
        args_key=text(record, "args_key", path, optional=True),
        args=_mapping(record, "args", path, None),
    )


def _count(record: dict, key: str, path: Path) -> int:
    value = count(record, key, path)
    assert value is not None  # not optional
    return value


def _mapping(record: dict, key: str, path: Path, default=...) -> Any:
    value = record.get(key, default)
    if value is ... or (value is not None and not isinstance(value, dict)):
        raise UserError(
            f"{path}: {key} is {excerpt(value)}, not a JSON object; corrupt manifest: re-run prepare"
        )
    return value


def _counted(record: dict, key: str, path: Path, default: dict | None) -> Any:
    """A record of counts (and the first file named), each checked; `default` when absent."""
    value = _mapping(record, key, path, default)
    where = Path(f"{path} {key}")
    for name, field_value in (value or {}).items():
        if isinstance(field_value, str) or field_value is None:
            text(value, name, where, optional=True)
        else:
            count(value, name, where)
    return value


def _tokenizer(record: dict, path: Path) -> dict:
    tok = _mapping(record, "tokenizer", path)
    where = Path(f"{path} tokenizer")
    text(tok, "name", where)
    vocab = count(tok, "vocab_size", where, low=1, high=MAX_VOCAB)
    assert vocab is not None
    if tok.get("eot_id") is not None:
        count(tok, "eot_id", where, high=vocab - 1)
    text(tok, "sha256", where, optional=True)
    text(tok, "file", where, optional=True)
    return tok


def _split(name: str, value, path: Path, data_dir: Path) -> SplitEntry:
    where = Path(f"{path} splits.{name}")
    if name not in SPLITS or not isinstance(value, dict):
        raise UserError(f"{where} is {excerpt(value)}: not a split of {', '.join(SPLITS)}; corrupt manifest")
    shards = value.get("shards")
    if not isinstance(shards, list) or len(shards) > MAX_SHARDS:
        raise UserError(f"{where}: shards is {excerpt(shards)}, not a list of shard files; corrupt manifest")
    entries = tuple(_shard(entry, Path(f"{where}.shards[{i}]"), data_dir) for i, entry in enumerate(shards))
    tokens = _count(value, "tokens", where)
    if tokens != sum(e.tokens for e in entries):
        raise UserError(
            f"{where}: tokens {tokens} is not the sum of its shards' ({sum(e.tokens for e in entries)}); "
            "corrupt manifest: re-run prepare"
        )
    documents = (
        count(value, "documents", where, optional=True) if value.get("documents") is not None else None
    )
    return SplitEntry(tokens, entries, documents)


def _shard(entry, where: Path, data_dir: Path) -> ShardEntry:
    if not isinstance(entry, dict):
        raise UserError(f"{where} is {excerpt(entry)}, not a shard entry; corrupt manifest: re-run prepare")
    file = inside(data_dir, entry.get("file"), f"{where}.file")
    if file.exists() and not file.is_file():
        raise UserError(f"{where}.file names {file}, which is not a file; corrupt data dir: re-run prepare")
    return ShardEntry(entry["file"], _count(entry, "tokens", where))
