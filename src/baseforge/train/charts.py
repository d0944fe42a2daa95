"""PNG charts of a run from its metrics log: loss (train + validation), learning rate, grad norm.

Memory stays flat however often the charts are redrawn and however long the log grows:
- each series is drawn from a bounded view of the log (`downsample`: at most MAX_BUCKETS buckets,
  each drawn by its minimum and its maximum, so a one-row spike still shows);
- one Figure per process is reused (cleared between draws) instead of a new one per draw;
- after each draw the figure is cleared, Python's garbage is collected and glibc is asked to give
  freed heap back to the system (`malloc_trim`), which it otherwise keeps.
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

from baseforge.fileio import atomic_path
from baseforge.train.metrics import METRICS

MAX_BUCKETS = 1000  # per series: at most 2 * MAX_BUCKETS points are drawn

_figure = None  # the one reused Figure (see _reused_figure)


def downsample(xs: list, ys: list, buckets: int = MAX_BUCKETS) -> tuple[list, list]:
    """A bounded view of the series (xs ascending): the points themselves when there are at most
    2 * buckets, else for each of `buckets` consecutive runs its minimum and maximum, in x order.

    Faithful at the drawn resolution: every bucket's extremes are kept, so spikes survive."""
    n = len(xs)
    if n <= 2 * buckets:
        return list(xs), list(ys)
    out_x, out_y = [], []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        seg = [i for i in range(lo, hi) if ys[i] is not None and not math.isnan(ys[i])]
        if not seg:
            continue
        i_min = min(seg, key=lambda i: ys[i])
        i_max = max(seg, key=lambda i: ys[i])
        for i in sorted({i_min, i_max}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


def _reused_figure():
    # A bare Figure with the Agg canvas: no pyplot, so no global figure registry and no display.
    global _figure
    if _figure is None:
        from matplotlib.figure import Figure

        _figure = Figure(figsize=(8, 9))
    return _figure


def _release_memory() -> None:
    """Collect matplotlib's reference cycles and hand freed heap back to the OS (glibc only)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _read_series(run_dir: Path) -> tuple[dict[str, list], list, list] | None:
    """(tokens and loss / lr / grad_norm of the training rows, validation tokens, validation losses),
    streamed from the log one line at a time so that no list of row dicts is ever held (a log of
    12,000 rows would otherwise be ~12 MB of dicts per redraw). Torn lines are skipped, as in
    read_append_log. None when the log holds no row yet."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return None
    train: dict[str, list] = {"tokens": [], "loss": [], "lr": [], "grad_norm": []}
    val_x, val_y, rows = [], [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict):
                continue
            rows += 1
            if row.get("val_loss") is not None:
                val_x.append(row["tokens"])
                val_y.append(row["val_loss"])
            if row.get("loss") is not None:  # the step-0 row holds only val_loss
                for key, values in train.items():
                    values.append(row.get(key))
    return (train, val_x, val_y) if rows else None


def write_charts(run_dir: Path | str) -> Path | None:
    """Draw RUN/charts/training.png (three panels against tokens); None if there is nothing yet."""
    read = _read_series(Path(run_dir))
    if read is None:
        return None
    train, val_x, val_y = read
    tokens = train.pop("tokens")
    series = {key: downsample(tokens, values) for key, values in train.items()}
    val_x, val_y = downsample(val_x, val_y)
    del read, train, tokens
    fig = _reused_figure()
    fig.clear()
    try:
        axes = fig.subplots(3, 1, sharex=True)
        axes[0].plot(*series["loss"], label="train", lw=1)
        if val_x:
            axes[0].plot(val_x, val_y, "o-", label="validation", ms=4)
        axes[0].set_ylabel("loss")
        axes[0].legend()
        axes[0].grid(alpha=0.3)
        axes[1].plot(*series["lr"], lw=1)
        axes[1].set_ylabel("learning rate")
        axes[1].grid(alpha=0.3)
        axes[2].plot(*series["grad_norm"], lw=1)
        axes[2].set_ylabel("grad norm (pre-clip)")
        axes[2].set_xlabel("tokens")
        axes[2].set_yscale("log")
        axes[2].grid(alpha=0.3)
        fig.suptitle(Path(run_dir).resolve().name)
        fig.tight_layout()
        out = Path(run_dir) / "charts" / "training.png"
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        fig.clear()
        _release_memory()
    return out
