"""Which documents are held out: a seeded random sample, decided per document without looking ahead.

Document i of the stream is held out when u(seed, i) < val_fraction, where u is a uniform number in
[0, 1) from a 64-bit mix of (seed, i) (splitmix64's finaliser). A streaming prepare decides each
document as it comes, a resumed one decides it the same way, and the sample spreads over the whole
corpus: a corpus ordered by topic is held out from every topic, where the end of the stream would be
one (the `tail` method, kept as an option and for corpora of too few documents).

`stream` separates independent draws from one seed: the held-out rule uses stream 0, the floor's
extra documents (heldout.meet_floor) stream 1, so topping up val never reuses the rule's numbers.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def uniform(ids, seed: int, stream: int = 0) -> np.ndarray:
    """u(seed, stream, i) in [0, 1) for each id in `ids` (an int or an array of them), float64."""
    ids = np.asarray(ids, dtype=np.uint64)
    base = (np.uint64(seed & 0xFFFFFFFF) << np.uint64(32)) ^ np.uint64(stream & 0xFFFFFFFF)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        z = ids * _GOLDEN + base * _M2 + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def held_out(i, fraction: float, seed: int = 0):
    """Is document i (an int, or an array of them) held out? A bool, or a bool array."""
    held = uniform(i, seed) < fraction
    return bool(held) if np.ndim(held) == 0 else held
