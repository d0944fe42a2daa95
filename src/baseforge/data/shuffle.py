"""A shuffle of n items that needs no memory: a keyed pseudorandom permutation of [0, n).

An epoch of the train stream reads window `permute(k)` at its position k. `permute` is a 4-round
Feistel network over the fewest bits that cover n (a bijection of [0, 2^bits)), keyed by the run's
seed and the epoch, and walked in cycles until the value falls inside [0, n): a bijection of a
larger set, re-applied to whatever lands outside, is a bijection of [0, n) (cycle walking; under 4
passes on average). Each position is computed on its own, so a batch costs its own size in memory
whatever the data's, and window j of the stream is a pure function of (seed, j).

Why not a cheaper affine map k -> (a k + c) mod n: it is a permutation too, but no shuffle: positions
k and k + 2 land a fixed stride apart, so every batch holds a few short arithmetic runs of windows,
the same runs at each step a little further on. On the CPU proxy of benchmarks/ablation.py that order
cost up to 0.23 of final validation loss, depending on the seed (benchmarks/results/shuffle.md).
"""

from __future__ import annotations

import functools

import numpy as np

ROUNDS = 4
# splitmix64's finaliser: every output bit depends on every input bit (the Feistel round function)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@functools.lru_cache(maxsize=64)
def round_keys(seed: int, epoch: int) -> tuple[np.uint64, ...]:
    """The Feistel keys of one epoch's order (a pure function, shared safely between threads)."""
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    return tuple(
        np.uint64(k) for k in rng.integers(0, 2**64 - 1, size=ROUNDS, dtype=np.uint64, endpoint=True)
    )


def _feistel(x: np.ndarray, half: int, keys: tuple[np.uint64, ...]) -> np.ndarray:
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)
    left, right = x >> shift, x & mask
    for key in keys:
        left, right = right, left ^ (_mix(right, key) & mask)
    return (left << shift) | right


def permute(k: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """Positions `k` (each in [0, n)) of epoch `epoch`'s order -> the items there, as int64."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)  # 2 * half bits cover n
    keys = round_keys(seed, epoch)
    x = np.asarray(k, dtype=np.uint64).copy()
    outside = np.ones(len(x), dtype=bool)
    while outside.any():  # cycle walking: outside [0, n), apply the permutation again
        x[outside] = _feistel(x[outside], half, keys)
        outside = x >= np.uint64(n)
    return x.astype(np.int64)
