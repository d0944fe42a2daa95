"""The token shard format, and the data dir's manifest.

A shard is one file of token ids:

    offset  size  field
    0       8     magic b"BFTOKENS"
    8       4     format version, little-endian uint32 (1)
    12      4     bytes per token, uint32: 2 (uint16 ids) or 4 (uint32 ids, vocab > 65535)
    16      8     token count, uint64
    24      8     reserved, zero
    32      ...   the tokens, little-endian

Readers memory-map the tokens, so host memory does not grow with the data. Every read checks
the magic, version, width and that the file size matches the count, and names the bad file.

A data dir holds shards and `manifest.json` (see `write_manifest`), which lists the shards of
each split with their token and document counts, the tokenizer record (with its content hash,
`sha256`), how the text was packed, how the held-out split was chosen (`"held_out"`: "documents",
or "tail" when the corpus had too few documents and val is the end of the token stream), and the
binary files skipped (`"skipped"`: their count and the first one).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from baseforge.errors import UserError
from baseforge.fileio import atomic_path, atomic_write_json
from baseforge.records import inside

MAGIC = b"BFTOKENS"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # 32 bytes
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "baseforge-tokens"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def write_shard(path: Path | str, tokens: np.ndarray, vocab_size: int) -> None:
    """Write `tokens` atomically (temp name, then rename)."""
    dtype = token_dtype(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} >= vocab size {vocab_size}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, dtype.itemsize, tokens.size, 0))
            f.write(tokens.astype(dtype, copy=False).tobytes())


def read_shard(path: Path | str) -> np.ndarray:
    """Memory-map a shard's tokens (read-only). Raises UserError naming the file if it is bad."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
    except FileNotFoundError:
        raise UserError(f"shard {path} is missing; re-run `baseforge prepare` for this data dir") from None
    if len(head) < HEADER.size:
        raise UserError(f"shard {path} is corrupt: {size} bytes is shorter than the header; re-run prepare")
    magic, version, width, count, _ = HEADER.unpack(head)
    if magic != MAGIC:
        raise UserError(f"{path} is not a baseforge token shard (bad magic)")
    if version != VERSION:
        raise UserError(f"shard {path} has format version {version}; this baseforge reads version {VERSION}")
    if width not in (2, 4):
        raise UserError(f"shard {path} is corrupt: token width {width}")
    expected = HEADER.size + count * width
    if size != expected:
        raise UserError(
            f"shard {path} is corrupt or truncated: {size} bytes, header says {expected}; "
            "re-run `baseforge prepare`"
        )
    if count == 0:
        return np.zeros(0, dtype=np.dtype(f"<u{width}"))
    return np.memmap(path, dtype=np.dtype(f"<u{width}"), mode="r", offset=HEADER.size, shape=(count,))


def write_manifest(data_dir: Path | str, manifest: dict) -> None:
    atomic_write_json(Path(data_dir) / MANIFEST, {"format": MANIFEST_FORMAT, "version": VERSION, **manifest})


def read_manifest(data_dir: Path | str) -> dict:
    """The data dir's manifest. Raises UserError if the dir or manifest is missing or unreadable."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not data_dir.is_dir():
        raise UserError(
            f"data dir {data_dir} does not exist; create it with `baseforge prepare SOURCE --out {data_dir}`"
        )
    if not path.is_file():
        raise UserError(
            f"{data_dir} has no {MANIFEST}: not a prepared data dir (or prepare did not finish); "
            f"run `baseforge prepare SOURCE --out {data_dir}`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is corrupt ({exc}); re-run `baseforge prepare`") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} is not a baseforge manifest")
    return manifest


def split_shards(data_dir: Path | str, manifest: dict, split: str) -> list[np.ndarray]:
    """Memory-mapped shards of one split, each checked against the manifest's count."""
    splits = manifest.get("splits", {})
    if split not in splits:
        raise UserError(f"data dir {data_dir} has no {split!r} split (it has: {', '.join(splits) or 'none'})")
    out = []
    for entry in splits[split]["shards"]:
        tokens = read_shard(
            inside(Path(data_dir), entry.get("file"), f"{Path(data_dir) / MANIFEST} shard file")
        )
        if len(tokens) != entry["tokens"]:
            raise UserError(
                f"shard {Path(data_dir) / entry['file']} has {len(tokens)} tokens but the "
                f"manifest says {entry['tokens']}; re-run `baseforge prepare`"
            )
        out.append(tokens)
    return out
