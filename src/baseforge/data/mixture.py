"""Training on several prepared data dirs at once: a weighted mixture of their train windows.

`--data DIR:WEIGHT` (repeatable) names the sources; weights are shares of the training windows (so of
its tokens), normalised to sum to 1. Each source keeps its own stream (its packing, its shuffle, its
epochs: loader.TrainStream or bestfit.BestFitStream), and the mixture only decides which source
window j of the mixed stream comes from and which of that source's windows it is:

    a balanced binary tree over the sources; at a node whose left half holds share a of its weight,
    the node's k-th window goes left when floor((k+1)a) > floor(ka), as the left half's floor(ka)-th
    window, else right, as its (k - floor(ka))-th; down to a source.

That is a pure function of (weights, j) in O(log S) numpy operations, with no scan of the past: exact
resume, N processes sharing one global batch, best-fit packing and batch schedules are unchanged. Over
every prefix of J windows, source s has received J*w_s windows to within ceil(log2 S) (one window for
two sources): each level's floor moves a count by less than one window (tests/test_mixture.py). A
small source simply reaches its next epoch sooner, with that epoch's own permutation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from baseforge.errors import UserError

MAX_SOURCES = 64
MIN_WEIGHT = 1e-9  # of the weights' sum: a smaller share would round a source away


@dataclass(frozen=True)
class Source:
    """One data dir of a mixture: where it is, its share of the training windows, and its name in
    the metrics (`val_loss/NAME`)."""

    path: Path
    weight: float
    name: str


def parse_sources(specs: list[str] | list[Path]) -> list[Source]:
    """`--data` values (DIR, or DIR:WEIGHT for each of several) as sources, weights normalised."""
    parsed = []
    for spec in map(str, specs):
        head, sep, tail = spec.rpartition(":")
        weight = _weight(tail, spec) if sep and head and _looks_numeric(tail) else None
        parsed.append((Path(head) if weight is not None else Path(spec), weight))
    if len(parsed) > MAX_SOURCES:
        raise UserError(f"--data names {len(parsed)} sources; at most {MAX_SOURCES}")
    if len(parsed) > 1 and any(w is None for _, w in parsed):
        missing = next(str(p) for p, w in parsed if w is None)
        raise UserError(f"--data {missing} has no weight: with several sources give each one as DIR:WEIGHT")
    resolved = [resolve(p) for p, _ in parsed]
    if len(set(resolved)) < len(resolved):
        raise UserError("--data names the same data dir twice; give each source once, with its whole weight")
    total = sum(w or 1.0 for _, w in parsed)
    weights = [(w or 1.0) / total for _, w in parsed]
    if not math.isfinite(total) or min(weights) < MIN_WEIGHT:
        raise UserError(f"--data weights must be finite, none under {MIN_WEIGHT:g} of their sum")
    return with_names([p for p, _ in parsed], weights)


def with_names(paths: list[Path], weights: list[float]) -> list[Source]:
    """Sources of `paths` at exactly these `weights` (a resume keeps its recorded ones, bit for bit)."""
    return [Source(p, w, n) for p, w, n in zip(paths, weights, source_names(paths))]


def resolve(path: Path) -> Path:
    """The absolute path, or the user's one line for one that cannot be (a symlink loop, a NUL byte)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise UserError(f"--data {str(path)!r}: not a usable path ({exc})") from None


def _looks_numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9.eE+-]+", text))


def _weight(text: str, spec: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise UserError(f"--data {spec}: the weight {text!r} is not a number") from None
    if not (math.isfinite(weight) and weight > 0):
        raise UserError(f"--data {spec}: the weight must be a positive number, not {text}")
    return weight


def source_names(paths: list[Path]) -> list[str]:
    """Each source's name in metric keys: its folder's name (letters, digits, . _ -), made unique."""
    names: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", resolve(p).name) or "data"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def route(j: np.ndarray, weights: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(source, that source's window) for each mixed-stream window in `j` (module docstring)."""
    k = np.asarray(j, dtype=np.int64).copy()
    source = np.zeros(len(k), dtype=np.int64)
    _descend(np.arange(len(k)), 0, len(weights), list(weights), k, source)
    return source, k


def _descend(pos: np.ndarray, lo: int, hi: int, weights: list[float], k: np.ndarray, source: np.ndarray):
    if hi - lo == 1 or not len(pos):
        source[pos] = lo
        return
    mid = (lo + hi) // 2
    a = sum(weights[lo:mid]) / sum(weights[lo:hi])
    here = k[pos]
    before = np.floor(here * a).astype(np.int64)  # the left half's windows among the node's first k
    left = np.floor((here + 1) * a).astype(np.int64) > before
    k[pos] = np.where(left, before, here - before)
    _descend(pos[left], lo, mid, weights, k, source)
    _descend(pos[~left], mid, hi, weights, k, source)


def windows_taken(total: int, weights: list[float]) -> list[int]:
    """How many windows each source gives the first `total` windows of the mixed stream."""
    counts = [0] * len(weights)

    def walk(n: int, lo: int, hi: int) -> None:
        if hi - lo == 1 or n == 0:
            counts[lo] += n
            return
        mid = (lo + hi) // 2
        left = math.floor(n * (sum(weights[lo:mid]) / sum(weights[lo:hi])))
        walk(left, lo, mid)
        walk(n - left, mid, hi)

    walk(total, 0, len(weights))
    return counts


@dataclass(frozen=True)
class Segment:
    """Where the current mixture starts in the run's stream of windows, and the windows of each source
    the run read before it: after a --new-data change of weights (or of sources) each source goes on
    where it stopped, rather than re-reading or skipping part of its epoch."""

    start: int = 0
    offsets: tuple[int, ...] = ()


class MixtureStream:
    """The mixed stream of train windows; window j depends only on (each source's seed, weights, j)."""

    def __init__(self, streams: list, weights: list[float], context: int, segment: Segment = Segment()):
        self.streams, self.weights, self.context = streams, list(weights), context
        self.segment = segment
        self.offsets = np.asarray(segment.offsets or [0] * len(streams), dtype=np.int64)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed-stream windows [start, start+count) as (inputs, targets), each (count, context) int64."""
        assert start >= self.segment.start, "a mixture reads no window before its own segment"
        source, k = route(np.arange(start, start + count, dtype=np.int64) - self.segment.start, self.weights)
        k += self.offsets[source]
        rows = np.empty((count, self.context + 1), dtype=np.int64)
        for s in np.unique(source):
            mine = source == s
            rows[mine] = self.streams[s].rows(k[mine])
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]

    def micro_batch(self, step: int, micro_step: int, layout) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(layout.start(step, micro_step), layout.micro_batch)

    def windows_read(self, windows: int) -> list[int]:
        """Each source's windows among the run's first `windows` (those before the segment included)."""
        taken = windows_taken(max(0, windows - self.segment.start), self.weights)
        return [int(o) + t for o, t in zip(self.offsets, taken)]
