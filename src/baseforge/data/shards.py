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

A data dir holds shards and `manifest.json` (manifest.py), which lists the shards of each split.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from baseforge.data.manifest import Manifest
from baseforge.errors import UserError
from baseforge.fileio import atomic_path

MAGIC = b"BFTOKENS"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # 32 bytes


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
    except IsADirectoryError:
        raise UserError(f"shard {path} is a folder, not a shard file; re-run `baseforge prepare`") from None
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


def check_ids(batch: torch.Tensor | np.ndarray, vocab_size: int, where: str) -> None:
    """Refuse a batch holding an id past the vocabulary (bytes changed in a shard, or another tokenizer's
    shard) before it indexes an embedding: on the host, over the batch just gathered (B x T ints; no
    device sync), so the error names the data instead of an index error deep in the model."""
    ids = batch.numpy() if isinstance(batch, torch.Tensor) else batch  # a CPU batch: no tensor read
    top = int(ids.max()) if ids.size else 0
    if top >= vocab_size:
        raise UserError(
            f"{where} holds token id {top}, past the vocabulary's {vocab_size}: a corrupt shard; "
            "`baseforge data info DATA_DIR --check` names it, and re-running prepare rewrites it"
        )


def split_shards(data_dir: Path | str, manifest: Manifest, split: str) -> list[np.ndarray]:
    """Memory-mapped shards of one split, each checked against the manifest's count (read_manifest has
    checked that each names a plain file inside the data dir)."""
    if split not in manifest.splits:
        have = ", ".join(manifest.splits) or "none"
        raise UserError(f"data dir {data_dir} has no {split!r} split (it has: {have})")
    out = []
    for entry in manifest.splits[split].shards:
        tokens = read_shard(Path(data_dir) / entry.file)
        if len(tokens) != entry.tokens:
            raise UserError(
                f"shard {Path(data_dir) / entry.file} has {len(tokens)} tokens but the "
                f"manifest says {entry.tokens}; re-run `baseforge prepare`"
            )
        out.append(tokens)
    return out
