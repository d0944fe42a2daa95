"""Packing tokenized documents into splits and shards: which document goes where, and the writes.

`Router` sends each batch of documents to the train, val and test buffers (the held-out rule and
the test slice are described in prepare.py) and keeps the `Counts`; `SplitWriter` turns a split's
buffer into numbered shards; `BackgroundWrites` writes them, in order, off the main thread.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np

from baseforge.data.docsample import held_out
from baseforge.data.shards import read_shard, write_shard


@dataclass
class Counts:
    """What a prepare has read and routed so far; saved in its progress record (field order is the
    record's key order) and reported in the manifest."""

    pieces: int = 0
    documents: int = 0
    tokens: int = 0
    held_out_tokens: int = 0
    cropped_documents: int = 0
    cropped_tokens: int = 0
    binary_files: int = 0
    first_binary: str = ""  # the first binary file skipped
    val_from_tail: int = 0  # 1 when validation is the stream's tail (too few documents)
    surrogate_documents: int = 0  # JSON texts whose lone surrogates became U+FFFD (decoding.py)
    first_surrogate: str = ""  # FILE:LINE of the first
    symlinks: int = 0  # symlinks out of a source folder, not read (files.py): found again each run
    first_symlink: str = ""

    @classmethod
    def from_record(cls, record: dict) -> Counts:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def add_piece(self, binary: list[str], surrogates: list[str]) -> None:
        """One more piece read, with the binary files it skipped and the texts it replaced surrogates in."""
        self.pieces += 1
        if binary:
            self.binary_files += len(binary)
            self.first_binary = self.first_binary or binary[0]
        if surrogates:
            self.surrogate_documents += len(surrogates)
            self.first_surrogate = self.first_surrogate or surrogates[0]


class SplitWriter:
    """Accumulates one split's tokens and writes them as numbered shards."""

    def __init__(self, out_dir: Path, split: str, vocab_size: int, state: dict | None = None):
        self.out_dir, self.split, self.vocab_size = out_dir, split, vocab_size
        state = state or {}
        self.shards = state.get("shards", [])
        self.documents = state.get("documents", 0)
        self.buffer: list[np.ndarray] = []
        self.buffered = 0

    def add(self, ids: np.ndarray) -> None:
        self.buffer.append(ids)
        self.buffered += len(ids)

    def flush(self, jobs: list, limit: int | None = None) -> np.ndarray | None:
        """Queue up to `limit` buffered tokens (all if None) as one shard's write; keep the rest buffered."""
        if not self.buffered:
            return None
        tokens = np.concatenate(self.buffer)
        take = tokens if limit is None else tokens[:limit]
        name = f"{self.split}_{len(self.shards):06d}.bin"
        jobs.append(partial(write_shard, self.out_dir / name, take, self.vocab_size))
        self.shards.append({"file": name, "tokens": int(len(take))})
        rest = tokens[len(take) :]
        self.buffer, self.buffered = ([rest], len(rest)) if len(rest) else ([], 0)
        return rest

    def reach_back(self, n: int) -> int:
        """Read back the last written shards until the buffer holds at least `n` tokens (or all of
        them); they are written again by later flushes. Returns how many shards were read back."""
        popped = 0
        while self.buffered < n and self.shards:
            last = self.shards.pop()
            self.buffer.insert(0, np.array(read_shard(self.out_dir / last["file"])))
            self.buffered += last["tokens"]
            popped += 1
        return popped

    def take_tail(self, n: int) -> np.ndarray:
        """Remove and return the split's last `n` tokens (reach_back reads the shards it needs)."""
        self.reach_back(n)
        tokens = np.concatenate(self.buffer)
        self.buffer, self.buffered = [tokens[:-n]], len(tokens) - n
        return tokens[-n:]

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def state(self) -> dict:
        return {"shards": self.shards, "documents": self.documents}

    def entry(self) -> dict:
        return {"documents": self.documents, "tokens": self.tokens, "shards": self.shards}


class Router:
    """Sends each batch of tokenized documents, in order, to the train, val and test buffers.

    Whole-batch numpy operations for the 99% of documents that go to train (a Python loop per
    document cost the parent process as much as a worker's tokenizing); held-out documents, which
    may straddle the test slice, one at a time.
    """

    def __init__(
        self,
        writers: dict,
        counts: Counts,
        crop: int | None,
        val_fraction: float,
        val_seed: int,
        test_start: int,
        test_tokens: int,
        max_tokens: int | None,
        max_train_tokens: int | None,
    ):
        self.writers, self.counts, self.crop, self.val_fraction = writers, counts, crop, val_fraction
        self.val_seed = val_seed
        self.test_start, self.test_tokens = test_start, test_tokens
        self.max_tokens, self.max_train_tokens = max_tokens, max_train_tokens

    def add_batch(self, flat: np.ndarray, lengths: np.ndarray) -> bool:
        """Route one batch; True once a token limit is reached (the batch is cut after that document)."""
        counts, train = self.counts, self.writers["train"]
        held = held_out(counts.documents + np.arange(len(lengths)), self.val_fraction, self.val_seed)
        if self.crop:
            cut = lengths > self.crop
            counts.cropped_documents += int(cut.sum())
            counts.cropped_tokens += int((lengths - self.crop)[cut].sum())
            starts = np.cumsum(lengths) - lengths
            flat = flat[np.arange(len(flat)) - np.repeat(starts, lengths) < self.crop]
            lengths = np.minimum(lengths, self.crop)
        done, keep = self._limit(lengths, held)
        if keep < len(lengths):
            flat, lengths, held = flat[: int(lengths[:keep].sum())], lengths[:keep], held[:keep]
        counts.documents += keep
        counts.tokens += int(lengths.sum())
        if not held.any():
            train.add(flat)
            train.documents += keep
            return done
        held_tokens = np.repeat(held, lengths)
        train.add(flat[~held_tokens])
        train.documents += int((~held).sum())
        starts = np.cumsum(lengths) - lengths
        for j in np.flatnonzero(held):
            self.hold_out(flat[starts[j] : starts[j] + lengths[j]])
        return done

    def _limit(self, lengths: np.ndarray, held: np.ndarray) -> tuple[bool, int]:
        """(limit reached?, documents of this batch to keep): stop after the document that reaches it."""
        reached = []
        if self.max_tokens:
            reached.append(self.counts.tokens + np.cumsum(lengths) >= self.max_tokens)
        if self.max_train_tokens:
            train = self.writers["train"]
            reached.append(
                train.tokens + train.buffered + np.cumsum(np.where(held, 0, lengths)) >= self.max_train_tokens
            )
        first = min((int(np.argmax(r)) for r in reached if r.any()), default=None)
        return (False, len(lengths)) if first is None else (True, first + 1)

    def to_val(self, doc: np.ndarray) -> None:
        """A document for val alone (the floor's: what it adds is counted as val's, none is test's)."""
        self.counts.held_out_tokens += len(doc)
        self.writers["val"].add(doc)
        self.writers["val"].documents += 1

    def hold_out(self, doc: np.ndarray) -> None:
        """Held-out tokens [test_start, test_start + test_tokens) go to test, the rest to val."""
        counts, writers = self.counts, self.writers
        pos = counts.held_out_tokens
        counts.held_out_tokens += len(doc)
        lo, hi = self.test_start, self.test_start + self.test_tokens
        a, b = max(pos, lo), min(pos + len(doc), hi)
        if self.test_tokens and a < b:
            if a > pos:
                writers["val"].add(doc[: a - pos])
            writers["test"].add(doc[a - pos : b - pos])
            writers["test"].documents += 1
            if b < pos + len(doc):
                writers["val"].add(doc[b - pos :])
        else:
            writers["val"].add(doc)
            writers["val"].documents += 1

    def sampled_everything(self) -> bool:
        """Did the sample hold out every document (a corpus of a few)? Then nothing was trained on yet."""
        train = self.writers["train"]
        return self.counts.held_out_tokens > 0 and not train.shards and not train.buffered

    def unroute_held_out(self) -> None:
        """Put the held-out stream (val, with the test slice back at its place) into train, in order;
        only while nothing is written (sampled_everything), for the tail rule to take over."""
        val, test, train = self.writers["val"], self.writers["test"], self.writers["train"]
        held = [np.concatenate(w.buffer) if w.buffer else np.zeros(0, dtype=np.uint32) for w in (val, test)]
        a = min(self.test_start, len(held[0]))
        train.add(np.concatenate([held[0][:a], held[1], held[0][a:]]))
        train.documents += val.documents + test.documents
        for w in (val, test):
            w.buffer, w.buffered, w.documents = [], 0, 0
        self.counts.held_out_tokens = 0

    def val_from_tail(self, n: int) -> None:
        """Hold out the last `n` tokens of the token stream (for a corpus of too few documents for the
        held-out rule; prepare.py picks n)."""
        self.hold_out(self.writers["train"].take_tail(n))
        self.counts.val_from_tail = 1


class BackgroundWrites:
    """Checkpoints' writes, on one thread, in order, so the workers need not wait for the disk (a
    100M-token shard and its fsync take about a second, in which 16 workers tokenize 60M tokens).
    One checkpoint is written while the next one's tokens gather: never more than two in memory."""

    def __init__(self):
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="prepare-writes")
        self.last = None

    def run(self, jobs: list) -> None:
        self.wait()
        self.last = self.thread.submit(lambda: [job() for job in jobs])

    def wait(self) -> None:
        if self.last is not None:
            self.last.result()  # re-raises a failed write here, in the main thread
            self.last = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.thread.shutdown()
