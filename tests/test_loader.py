"""The data loader: batch layout across world sizes, the train stream's permutation and its rank
partition, the vectorised gather against the per-window loop, prefetched batches against direct ones,
the fixed eval slice, and data shorter than a window."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from baseforge.data.batch_plan import BatchLayout
from baseforge.data.loader import Prefetcher, TokenWindows, TrainStream, eval_batches
from baseforge.data.manifest import Manifest, SplitEntry, write_manifest
from baseforge.data.shards import write_shard
from baseforge.data.shuffle import permute
from baseforge.errors import UserError
from baseforge.overrides import resolve_config
from conftest import build_data_dir


def test_batch_layout_keeps_global_batch_across_world_sizes():
    def resolve(global_batch, micro, accum, world):
        layout = BatchLayout.resolve(
            global_batch=global_batch, micro_batch=micro, grad_accum=accum, world=world, rank=0
        )
        return layout.global_batch, layout.micro_batch, layout.grad_accum

    assert resolve(32, 4, 1, 1) == (32, 4, 8)
    assert resolve(32, 4, 1, 2) == (32, 4, 4)
    assert resolve(0, 4, 3, 2) == (24, 4, 3)
    with pytest.raises(UserError, match="not divisible"):
        resolve(32, 5, 1, 1)


def test_batch_layout_from_config_is_the_one_constructor():
    cfg = resolve_config("cpu-tiny", None, ["micro_batch=2", "global_batch=8"]).train
    assert BatchLayout.from_config(cfg) == BatchLayout(2, 4, 1, 0)
    assert BatchLayout.from_config(cfg, world=2, rank=1) == BatchLayout(2, 2, 2, 1)
    auto = replace(cfg, micro_batch="auto")
    assert BatchLayout.from_config(auto).global_batch == 8  # what --dry-run and finetune count
    assert BatchLayout.from_config(auto, world=2, micro_batch=2) == BatchLayout(2, 2, 2, 0)  # the search's
    assert (
        BatchLayout.from_config(
            replace(cfg, global_batch=0, micro_batch=3, grad_accum=2), world=2
        ).global_batch
        == 12
    )
    with pytest.raises(UserError, match="decided by the search"):
        BatchLayout.from_config(replace(auto, global_batch=0))
    with pytest.raises(UserError, match="not divisible by micro_batch 3"):
        BatchLayout.from_config(replace(cfg, micro_batch=3))


def test_stream_is_a_permutation_and_ranks_partition_the_global_batch(shakespeare_dir):
    windows = TokenWindows(shakespeare_dir, "train", 64)
    stream = TrainStream(windows, seed=7)
    first_epoch = stream.indices(0, windows.n)
    assert sorted(first_epoch) == list(range(windows.n))  # every window exactly once per epoch
    assert stream.indices(0, 50) == TrainStream(windows, seed=7).indices(0, 50)  # depends only on (seed, j)
    assert stream.indices(0, 50) != TrainStream(windows, seed=8).indices(0, 50)

    # 2 ranks x micro 2 x accum 2 cover the same sequences as 1 rank x micro 2 x accum 4.
    def rows(world, accum):
        out = []
        for m in range(accum):
            for r in range(world):
                layout = BatchLayout(micro_batch=2, grad_accum=accum, world=world, rank=r)
                out += stream.micro_batch(3, m, layout)[0].tolist()
        return sorted(out)

    assert rows(2, 2) == rows(1, 4)
    x, y = stream.batch(0, 2)
    assert (x[:, 1:] == y[:, :-1]).all()  # targets are inputs shifted by one


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 1794, 65537])
def test_each_epochs_order_is_a_permutation_keyed_by_seed_and_epoch(n):
    order = permute(np.arange(n), n, seed=1, epoch=0)
    assert sorted(order.tolist()) == list(range(n))
    if n >= 64:
        assert not np.array_equal(order, permute(np.arange(n), n, seed=2, epoch=0))
        assert not np.array_equal(order, permute(np.arange(n), n, seed=1, epoch=1))


def test_the_order_is_a_shuffle_not_a_stride():
    """Windows read one after the other come from all over the split, not from a few short runs at
    a fixed stride (the affine order k -> a k + c mod n this replaced: one stride between positions k
    and k + 2 for the whole epoch, so every batch held a few arithmetic runs of windows)."""
    n = 1794
    order = permute(np.arange(n), n, seed=1, epoch=1)
    strides = (order[2:] - order[:-2]) % n
    assert len(set(strides.tolist())) > n // 2
    batches = order[: n // 8 * 8].reshape(-1, 8)  # 8 windows a step, as the round-2 proxy reads them
    spread = np.array([np.ptp(np.sort(b)) for b in batches])
    assert np.median(spread) > n / 2  # a batch spans most of the split


# --- gathering: vectorised, across shards, and prefetched ---------------------------------------------
@pytest.fixture
def sharded(tmp_path):
    """A train split of three shards of different lengths (windows never cross a shard boundary)."""
    rng = np.random.default_rng(0)
    entries = []
    for i, n in enumerate([700, 1234, 333]):
        write_shard(tmp_path / f"train_{i:06d}.bin", rng.integers(0, 60000, n), 65536)
        entries.append((f"train_{i:06d}.bin", n))
    train = SplitEntry.of(entries)
    tokenizer = {"name": "bpe:65536", "vocab_size": 65536, "eot_id": 0}
    write_manifest(tmp_path, Manifest(tokenizer, {"train": train}, documents=0, tokens=train.tokens))
    return tmp_path


def _window_loop_indices(seed: int, n: int, start: int, count: int) -> list[int]:
    """The stream's order one window at a time (the specification the vectorised gather must meet)."""
    return [int(permute(np.array([j % n]), n, seed, j // n)[0]) for j in range(start, start + count)]


def test_vectorised_gather_equals_the_window_loop(sharded):
    windows = TokenWindows(sharded, "train", 16)
    stream = TrainStream(windows, seed=3)
    start = 5 * windows.n - 7  # crosses from epoch 4 into epoch 5
    indices = stream.indices(start, 20)
    assert indices == _window_loop_indices(3, windows.n, start, 20)
    assert len(np.unique(np.searchsorted(windows.starts, indices, side="right"))) > 1  # several shards
    x, y = stream.batch(start, 20)
    rows = np.stack([windows.window(k) for k in indices]).astype(np.int64)
    assert torch.equal(x, torch.from_numpy(rows[:, :-1])) and torch.equal(y, torch.from_numpy(rows[:, 1:]))
    assert x.dtype == torch.int64


class _CountingData:
    """TokenData's micro_batch interface over a stream, recording which thread gathered what."""

    def __init__(self, stream):
        self.stream, self.calls, self.main = stream, [], threading.get_ident()

    def micro_batch(self, step, micro, layout):
        self.calls.append((step, micro, threading.get_ident() != self.main))
        return self.stream.micro_batch(step, micro, layout)


def test_prefetched_batches_equal_direct_ones(sharded):
    stream = TrainStream(TokenWindows(sharded, "train", 16), seed=1)
    data = _CountingData(stream)
    layout = BatchLayout(micro_batch=3, grad_accum=2)
    prefetch = Prefetcher()
    order = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (5, 1), (6, 0), (0, 0), (0, 1)]  # a jump, a restart
    for step, micro in order:
        got = prefetch.get(data, step, micro, layout)
        want = stream.micro_batch(step, micro, layout)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    background = {(s, m) for s, m, in_thread in data.calls if in_thread}
    assert {(0, 1), (1, 0), (1, 1), (2, 0)} <= background  # the ones that followed in order came ready
    assert (5, 1) not in background and (6, 0) in background


# --- evaluation batches, and data too short -----------------------------------------------------------
def test_eval_slice_is_fixed(shakespeare_dir):
    windows = TokenWindows(shakespeare_dir, "val", 64)
    a = [x.tolist() for x, _ in eval_batches(windows, 640, 3)]
    b = [x.tolist() for x, _ in eval_batches(windows, 640, 5)]
    assert sum(a, []) == sum(b, []) and len(sum(a, [])) == 10
    split = [x.tolist() for r in range(2) for x, _ in eval_batches(windows, 640, 3, rank=r, world=2)]
    assert sorted(sum(split, [])) == sorted(sum(a, []))


def test_loader_rejects_data_shorter_than_a_window(tmp_path):
    data = build_data_dir(tmp_path / "d", "a b c\n\n" * 40 + "hello world " * 50, vocab=260)
    with pytest.raises(UserError, match="fewer than one window"):
        TokenWindows(data, "val", 4096)
