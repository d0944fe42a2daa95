"""The progress record of a `prepare`, so that an interrupted one resumes from its last full shard.

Whenever a train shard is full, its write, the held-out buffers' writes and a progress record (the
counts, the splits' shards so far, the tokenizer) are queued together; the train tokens past that
shard are saved beside it as a pending file. A prepare with the same arguments finds the record,
reloads the pending tokens and skips the pieces already read. The finished prepare clears it all.

After the pass, the stream-tail split and the val floor may read the last train shards back and
write them again, shorter: before that, `commit_now` saves a record that no longer lists them (their
tokens are in its pending file), so a prepare killed after those writes resumes from tokens that
are still what its record says.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from baseforge.data.packing import Counts
from baseforge.data.shards import token_dtype
from baseforge.fileio import atomic_path, atomic_write_text

PROGRESS = ".prepare-progress.json"
PENDING = ".prepare-pending-{}.npy"  # train tokens past the last full shard; numbered by that shard


def has_progress(out: Path) -> bool:
    return (out / PROGRESS).exists()


def commit_shard(out, key, tok, writers, counts: Counts, shard_tokens) -> list:
    """The writes of a full train shard, the held-out buffers and a progress record (for resume), in order."""
    jobs: list = []
    rest = writers["train"].flush(jobs, shard_tokens)
    return _commit(out, key, tok, writers, counts, jobs, rest)


def commit_now(out, key, tok, writers, counts: Counts) -> list:
    """The writes of the held-out buffers and a progress record of the state as it is, every buffered
    train token as the pending file: after the pass, before train shards that the last record vouched
    for are written again (the stream-tail split and the val floor read the last ones back)."""
    train = writers["train"]
    rest = np.concatenate(train.buffer) if train.buffer else None
    return _commit(out, key, tok, writers, counts, [], rest)


def _commit(out, key, tok, writers, counts: Counts, jobs: list, rest) -> list:
    for split in ("val", "test"):
        writers[split].flush(jobs)
    # The pending file is named after the shard count and written first, so a kill between the two
    # writes leaves the previous progress record pointing at the previous (intact) pending file.
    pending = PENDING.format(len(writers["train"].shards))
    rest = rest if rest is not None else np.zeros(0, dtype=token_dtype(tok.vocab_size))
    progress = json.dumps(
        {
            "args_key": key,
            "tokenizer": tok.record(),
            "counts": asdict(counts),
            "pending": pending,
            "splits": {s: w.state() for s, w in writers.items()},
        },
        indent=2,
    )  # as of now

    def save_pending():
        with atomic_path(out / pending) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, rest)

    def record_progress():
        atomic_write_text(out / PROGRESS, progress + "\n")
        for old in out.glob(PENDING.format("*")):
            if old.name != pending:
                old.unlink()

    return jobs + [save_pending, record_progress]


def read_progress(out: Path, key: str) -> dict | None:
    try:
        progress = json.loads((out / PROGRESS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if (
        progress.get("args_key") != key
        or "pieces" not in progress.get("counts", {})
        or not (out / progress.get("pending", "-")).is_file()
    ):
        return None  # another prepare's leftovers: start over
    return progress


def clear(out: Path, splits: dict) -> None:
    """After the manifest: the progress record, pending tokens, shards no split names (an earlier
    run's) and half-written files go."""
    for stale in [out / PROGRESS, *out.glob(PENDING.format("*"))]:
        stale.unlink(missing_ok=True)
    keep = {s["file"] for entry in splits.values() for s in entry["shards"]}
    for path in out.glob("*_[0-9][0-9][0-9][0-9][0-9][0-9].bin"):
        if path.name not in keep:
            path.unlink()
    for tmp in out.glob(".*.tmp"):  # half-written files of a killed run (see fileio.atomic_path)
        tmp.unlink()
