"""Batches of token windows from memory-mapped shards, addressed by position, not by state.

The train split is cut into non-overlapping windows of `context + 1` tokens (inputs and targets
shifted by one), never crossing a shard boundary. The run reads the stream of windows
`perm_e(0), perm_e(1), ...` where epoch e's order is a keyed pseudorandom permutation
(`shuffle.permute`): it needs O(1) memory however large the data, and window j of the stream
depends only on (seed, j). So a training step's batch is a pure function of the step number,
which makes resume exact and lets any number of processes share one global batch:

    global batch of step s   = stream windows [s*G, (s+1)*G)
    rank r, micro-step m     = the b windows starting at s*G + m*(W*b) + r*b

(`batch_plan.BatchLayout` holds b, the accumulation, W and r, and computes those starts; with a
batch-size schedule, `batch_plan.BatchPlan` gives each step its layout and first window.)

With `packing = "bestfit"` the train windows come from `bestfit.BestFitStream` instead: each starts at
a document, under the same pure-function-of-(seed, j) contract. Validation reads the first windows of
the val split in order whatever the packing, so every evaluation (of every model, of every recipe)
sees the same tokens.
"""

from __future__ import annotations

import bisect
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from baseforge.data.batch_plan import BatchLayout
from baseforge.data.bestfit import BestFitStream, PackingStats
from baseforge.data.manifest import MANIFEST, Manifest, read_manifest
from baseforge.data.mixture import Source
from baseforge.data.shards import check_ids, split_shards
from baseforge.data.shuffle import permute
from baseforge.errors import UserError
from baseforge.tokenizer import load_tokenizer


class TokenWindows:
    """Windows of context+1 tokens over one split of a data dir."""

    def __init__(self, data_dir: Path | str, split: str, context: int, manifest: Manifest | None = None):
        self.data_dir = Path(data_dir)
        self.manifest = manifest or read_manifest(self.data_dir)
        self.split = split
        self.context = context
        self.shards = split_shards(self.data_dir, self.manifest, split)
        counts = [max(0, (len(s) - 1) // context) for s in self.shards]
        self.starts = np.cumsum([0] + counts).tolist()  # first window index of each shard
        self._starts = np.asarray(self.starts, dtype=np.int64)
        self.n = self.starts[-1]
        if self.n == 0:
            tokens = sum(len(s) for s in self.shards)
            raise UserError(
                f"the {split} split of {self.data_dir} has {tokens} tokens: fewer than one window of "
                f"context {context} + 1; prepare more data or lower the context"
            )

    @property
    def tokens(self) -> int:
        return self.n * self.context

    def window(self, k: int) -> np.ndarray:
        """Window k (0 <= k < n), in storage order."""
        shard = bisect.bisect_right(self.starts, k) - 1
        offset = (k - self.starts[shard]) * self.context
        return self.shards[shard][offset : offset + self.context + 1]

    def rows(self, indices) -> np.ndarray:
        """Windows `indices` as rows of context+1 ids (int64), gathered shard by shard, ids checked."""
        k = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = np.empty((len(k), self.context + 1), dtype=np.int64)
        shard_of = np.searchsorted(self._starts, k, side="right") - 1
        span = np.arange(self.context + 1)
        for shard in np.unique(shard_of):
            mine = shard_of == shard
            offsets = (k[mine] - self._starts[shard]) * self.context
            rows[mine] = self.shards[shard][offsets[:, None] + span]
        check_ids(rows, self.manifest.vocab_size, f"the {self.split} split of {self.data_dir}")
        return rows

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows `indices` as (inputs, targets)."""
        data = torch.from_numpy(self.rows(indices))
        return data[:, :-1], data[:, 1:]


class TrainStream:
    """The shuffled, endless stream of train windows; window j depends only on (seed, j)."""

    def __init__(self, windows: TokenWindows, seed: int):
        self.windows = windows
        self.seed = seed

    def _window_indices(self, start: int, count: int) -> np.ndarray:
        return self._storage(np.arange(start, start + count, dtype=np.int64))

    def _storage(self, j: np.ndarray) -> np.ndarray:
        """Stream windows j as windows of the split: epoch j // n, read in that epoch's permutation."""
        n = self.windows.n
        epochs, k = j // n, j % n
        out = np.empty(len(j), dtype=np.int64)
        for epoch in np.unique(epochs):
            mine = epochs == epoch
            out[mine] = permute(k[mine], n, self.seed, int(epoch))
        return out

    def indices(self, start: int, count: int) -> list[int]:
        return self._window_indices(start, count).tolist()

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stream windows [start, start+count) as (inputs, targets), each (count, context) int64."""
        return self.windows.batch(self._window_indices(start, count))

    def rows(self, j: np.ndarray) -> np.ndarray:
        """Stream windows j (any positions) as rows of context+1 ids: what a mixture reads."""
        return self.windows.rows(self._storage(np.asarray(j, dtype=np.int64)))

    @property
    def tokens(self) -> int:
        return self.windows.tokens

    def micro_batch(
        self, step: int, micro_step: int, layout: BatchLayout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(layout.start(step, micro_step), layout.micro_batch)


def eval_batches(windows: TokenWindows, max_tokens: int, batch_size: int, rank: int = 0, world: int = 1):
    """The fixed validation slice: the first max_tokens/context windows in order, split over ranks."""
    n = min(windows.n, max(1, max_tokens // windows.context)) if max_tokens else windows.n
    mine = list(range(rank, n, world))
    for i in range(0, len(mine), batch_size):
        yield windows.batch(mine[i : i + batch_size])


class TokenData:
    """A prepared data dir as the trainer sees it: tokenizer, shuffled train stream, fixed val slice.

    The trainer only calls `micro_batch`, `val_batches` and reads `tokenizer`, `train_tokens` and
    `source`, so other data (the instruction set of the fine-tuning test) plugs in the same way.
    """

    def __init__(self, data_dir: Path | str, context: int, seed: int, packing: str = "concat"):
        self.source = Path(data_dir)
        manifest = read_manifest(self.source)
        self.tokenizer = load_tokenizer(manifest.tokenizer, self.source)
        built, record = self.tokenizer, manifest.tokenizer
        if built.vocab_size != manifest.vocab_size or record.get("sha256", built.sha256) != built.sha256:
            # the record's name picks what is built: an edited name would build another tokenizer
            raise UserError(
                f"{self.source / MANIFEST} records tokenizer {record['name']} ({manifest.vocab_size} tokens) "
                f"but it builds {built.name} ({built.vocab_size} tokens, another hash): re-run prepare"
            )
        self.vocab_size = manifest.vocab_size
        self.held_out = manifest.held_out_words()  # how val was chosen, for the opening lines
        self.stream: TrainStream | BestFitStream
        self.packing_stats: PackingStats | None = None
        if packing == "bestfit":  # windows that start at documents (bestfit.py)
            shards = split_shards(self.source, manifest, "train")
            self.stream = BestFitStream(shards, context, seed, self.tokenizer.eot_id)
            self.packing_stats = self.stream.stats
            self.train_tokens = self.stream.tokens
        else:
            self.stream = TrainStream(TokenWindows(self.source, "train", context, manifest), seed)
            self.train_tokens = self.stream.windows.tokens
        self.val = TokenWindows(self.source, "val", context, manifest) if "val" in manifest.splits else None

    @property
    def sources(self) -> list[Source]:
        """The one source, as a mixture's are listed (the run's data record)."""
        return [Source(self.source, 1.0, self.source.resolve().name)]

    def micro_batch(self, step: int, micro_step: int, layout: BatchLayout):
        x, y = self.stream.micro_batch(step, micro_step, layout)
        check_ids(y, self.vocab_size, f"the train split of {self.source}")  # x is y shifted by one
        check_ids(x[:, :1], self.vocab_size, f"the train split of {self.source}")
        return x, y

    def val_batches(self, max_tokens: int, batch_size: int, rank: int = 0, world: int = 1):
        if self.val is None:
            return iter(())
        return eval_batches(self.val, max_tokens, batch_size, rank, world)


@dataclass
class _Pending:
    data: object
    key: tuple[int, int, BatchLayout]
    future: Future


class Prefetcher:
    """The trainer's micro-batches, each gathered on a background thread while the previous one trains.

    A micro-batch is a pure function of (step, micro-step, layout), so the next one is known before it
    is asked for: after handing out one, the thread gathers the next. A request for anything else (the
    first, a resume, another layout) is gathered on the calling thread, so batches are the same with
    and without prefetching. With `pin` (a CUDA device) batches land in pinned memory: only from there
    is the trainer's `.to(device, non_blocking=True)` an asynchronous copy (from pageable memory it
    waits for the GPU).
    """

    def __init__(self, pin: bool = False):
        self.pin = pin
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baseforge-batches")
        self._pending: _Pending | None = None

    def _load(self, data, step: int, micro: int, layout: BatchLayout) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = data.micro_batch(step, micro, layout)
        if self.pin:  # contiguous first: a strided source is copied through pageable memory
            x, y = x.contiguous().pin_memory(), y.contiguous().pin_memory()
        return x, y

    def get(self, data, step: int, micro: int, layout: BatchLayout) -> tuple[torch.Tensor, torch.Tensor]:
        pending, self._pending = self._pending, None
        if pending is not None and pending.data is data and pending.key == (step, micro, layout):
            batch = pending.future.result()  # its errors surface here, where the batch was needed
        else:
            if pending is not None:
                pending.future.exception()  # wait: never two gathers at once; a stale one's error is moot
            batch = self._load(data, step, micro, layout)
        nxt = (step, micro + 1) if micro + 1 < layout.grad_accum else (step + 1, 0)
        self._pending = _Pending(data, (*nxt, layout), self._pool.submit(self._load, data, *nxt, layout))
        return batch
