"""BOS-aligned best-fit packing of training windows (nanochat's `bestfit`), as a pure function of the seed.

With `packing = "concat"` (loader.py) a window is any stretch of the token stream, so most windows
begin mid-document. With `packing = "bestfit"` every window begins at a document start (its
<|endoftext|>, which prepare writes between documents and which serves as BOS), and the rest of the
window is filled best-fit: from a buffer of shuffled documents, the longest that still fits, again
and again; when none fits, the shortest is cropped to fill the window exactly. Nothing is padded; the
cropped tails and the last, unfinished window of an epoch are the tokens lost (`PackingStats`).

An epoch's packing depends only on (seed, epoch): its documents are shuffled by a seeded permutation
and packed in that order, from their lengths alone (no tokens are read). So window j of the stream is
a pure function of (seed, j), exactly as with concat packing, and resume and any number of processes
read the same windows. Every epoch has as many windows as epoch 0 (a later one that packs a few more
or fewer repeats or leaves out its last ones), so the stream's index arithmetic stays fixed.

A document here is a document start (an <|endoftext|>) up to the next one, within a shard; the
corpus's first document (no <|endoftext|> before it) counts, a shard's head that continues the
previous shard's last document does not (it is dropped). Cost: one pass over the train split's
tokens to find the document starts, then per epoch O(documents x log buffer) in Python (about a
second per 300k documents) and ~16 bytes per document of memory.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

import numpy as np
import torch

from baseforge.errors import UserError

BUFFER = 1000  # documents to choose from, as nanochat


@dataclass(frozen=True)
class Documents:
    """Where each document of a split is: its shard, first token and length."""

    shard: np.ndarray  # int32
    start: np.ndarray  # int64, offset in the shard
    length: np.ndarray  # int64
    dropped_heads: int  # tokens of shard heads continuing the previous shard's document

    @classmethod
    def find(cls, shards: list[np.ndarray], doc_token: int) -> Documents:
        shard_ids, starts, lengths, dropped = [], [], [], 0
        for i, tokens in enumerate(shards):
            begins = np.flatnonzero(np.asarray(tokens) == doc_token).astype(np.int64)
            if i == 0 and len(tokens) and (not len(begins) or begins[0] > 0):
                begins = np.concatenate([[0], begins])  # the corpus's first document
            elif len(begins):
                dropped += int(begins[0])
            else:
                dropped += len(tokens)
            ends = np.append(begins[1:], len(tokens))
            keep = ends - begins > 1  # a lone <|endoftext|> (the corpus's last) has no content
            shard_ids.append(np.full(int(keep.sum()), i, dtype=np.int32))
            starts.append(begins[keep])
            lengths.append((ends - begins)[keep])
        return cls(np.concatenate(shard_ids), np.concatenate(starts), np.concatenate(lengths), dropped)

    def __len__(self) -> int:
        return len(self.length)


@dataclass(frozen=True)
class Packing:
    """One epoch's windows: window r is segments [row_ptr[r], row_ptr[r+1]), each a document's first
    `take` tokens."""

    doc: np.ndarray  # int64 document of each segment
    take: np.ndarray  # int64 tokens taken from it
    row_ptr: np.ndarray  # int64, one more than the windows
    cropped: int  # tokens cut off the documents cropped to fill a window
    unfinished: int  # tokens of the epoch's last window, never completed

    @property
    def rows(self) -> int:
        return len(self.row_ptr) - 1


def pack(lengths: np.ndarray, order: np.ndarray, row_len: int, buffer: int = BUFFER) -> Packing:
    """Best-fit windows of `row_len` tokens from documents of `lengths`, drawn in `order`."""
    lens = lengths.tolist()
    pool: list[tuple[int, int]] = []  # (length, document), sorted
    docs, takes, row_ptr = [], [], [0]
    cropped, nxt, rem = 0, 0, row_len
    while True:
        while len(pool) < buffer and nxt < len(order):
            d = int(order[nxt])
            bisect.insort(pool, (lens[d], d))
            nxt += 1
        if not pool:
            break
        i = bisect.bisect_right(pool, (rem, len(lens))) - 1
        if i >= 0:  # the longest that fits, whole
            n, d = pool.pop(i)
        else:  # none fits: crop the shortest to fill the window
            (whole, d), n = pool.pop(0), rem
            cropped += whole - n
        docs.append(d)
        takes.append(n)
        rem -= n
        if rem == 0:
            row_ptr.append(len(docs))
            rem = row_len
    unfinished = int(sum(takes[row_ptr[-1] :]))
    done = row_ptr[-1]
    return Packing(
        np.asarray(docs[:done], dtype=np.int64),
        np.asarray(takes[:done], dtype=np.int64),
        np.asarray(row_ptr, dtype=np.int64),
        cropped,
        unfinished,
    )


@dataclass(frozen=True)
class PackingStats:
    """What epoch 0's packing keeps and loses, as fractions of the split's tokens."""

    documents: int
    windows: int
    tokens: int  # the split's tokens
    cropped: int
    dropped: int  # unfinished last window + shard heads

    def describe(self) -> str:
        return (
            f"packing bestfit: {self.windows:,} windows per epoch from {self.documents:,} documents, each "
            f"window starting at a document; {self.cropped / self.tokens:.1%} of tokens cropped, "
            f"{self.dropped / self.tokens:.1%} dropped"
        )


class BestFitStream:
    """The endless stream of best-fit windows of context + 1 tokens; window j depends on (seed, j)."""

    def __init__(
        self, shards: list[np.ndarray], context: int, seed: int, doc_token: int, split: str = "train"
    ):
        self.shards, self.context, self.seed = shards, context, seed
        # this stream's own cache (a mixture holds several): the epoch being read and the next
        self.packing = functools.lru_cache(maxsize=2)(self.packing)  # type: ignore[method-assign]
        self.docs = Documents.find(shards, doc_token)
        if not len(self.docs):
            raise UserError(f"the {split} split has no documents to pack (no <|endoftext|> in it)")
        first, _ = self.packing(0)
        if first.rows == 0:
            raise UserError(
                f"the {split} split's documents hold fewer tokens than one window of context {context} + 1; "
                "prepare more data or lower the context"
            )
        self.n = first.rows
        total = sum(len(s) for s in shards)
        self.stats = PackingStats(
            len(self.docs), first.rows, total, first.cropped, first.unfinished + self.docs.dropped_heads
        )

    @property
    def tokens(self) -> int:
        return self.n * self.context

    def packing(self, epoch: int) -> tuple[Packing, np.ndarray]:
        """Epoch `epoch`'s packing and the order its windows are read in. The windows are shuffled
        again after packing: best-fit fills them longest-first, so in packing order a window's
        position would say how long its documents are (and a buffer that holds the whole split
        would pack every epoch alike)."""
        rng = np.random.default_rng([self.seed, epoch, 0xB357])
        p = pack(self.docs.length, rng.permutation(len(self.docs)), self.context + 1)
        return p, rng.permutation(p.rows)

    def row(self, j: int) -> np.ndarray:
        epoch, r = divmod(j, self.n)
        p, order = self.packing(epoch)
        r = int(order[r % p.rows])
        parts = []
        for s in range(int(p.row_ptr[r]), int(p.row_ptr[r + 1])):
            d = int(p.doc[s])
            shard, start = int(self.docs.shard[d]), int(self.docs.start[d])
            parts.append(self.shards[shard][start : start + int(p.take[s])])
        return np.concatenate(parts)

    def rows(self, j) -> np.ndarray:
        """Stream windows j (any positions) as rows of context+1 ids (int64)."""
        return np.stack([self.row(int(i)) for i in j]).astype(np.int64)

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stream windows [start, start+count) as (inputs, targets), each (count, context) int64."""
        data = torch.from_numpy(self.rows(range(start, start + count)))
        return data[:, :-1], data[:, 1:]

    def micro_batch(self, step: int, micro_step: int, layout) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(layout.start(step, micro_step), layout.micro_batch)
