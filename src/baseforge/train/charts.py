"""PNG charts of a run from its metrics log: loss (train + validation), learning rate, grad norm.

The learning-rate panel names each line's optimizer and parameters: AdamW's rate (`lr`), and on a
Muon run Muon's (`muon_lr`) for the hidden matrices beside it. A Muon run's rows written before
`muon_lr` was logged held Muon's rate as `lr`; the run's config.json says which optimizer it used.

Memory stays flat however often the charts are redrawn and however long the log grows:
- each series is drawn from a bounded view of the log (`downsample`: at most MAX_BUCKETS buckets,
  each drawn by its minimum and its maximum, so a one-row spike still shows);
- one Figure per process is reused (cleared between draws) instead of a new one per draw;
- after each draw the figure is cleared, Python's garbage is collected and glibc is asked to give
  freed heap back to the system (`malloc_trim`), which it otherwise keeps.
"""

from __future__ import annotations

import bisect
import gc
import io
import math
from pathlib import Path

from baseforge.errors import UserError
from baseforge.fileio import atomic_path
from baseforge.records import read_json
from baseforge.rundir import RunDir
from baseforge.train.metrics import iter_metrics, read_resumes

MAX_BUCKETS = 1000  # per series: at most 2 * MAX_BUCKETS points are drawn
MUON = "Muon (hidden matrices)"
ADAMW = {"muon": "AdamW (embeddings, head, norms, biases)", "adamw": "AdamW (all parameters)"}
UNKNOWN_LR = "learning rate of the first parameter group"  # a log whose optimizer nothing says

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


def _run_optimizer(run_dir: Path) -> str | None:
    """The optimizer config.json names ("adamw", "muon"), or None when it cannot be read: the chart is
    drawn without it."""
    try:
        train = read_json(RunDir(run_dir).config, "run config").get("train")
    except (UserError, OSError, RecursionError):
        return None
    optimizer = train.get("optimizer", "adamw") if isinstance(train, dict) else None
    return optimizer if optimizer in ADAMW else None


def _rates(row, optimizer: str | None) -> tuple[float, float]:
    """(AdamW's rate, Muon's rate) of a row, NaN (a gap) where it has none."""
    nan = float("nan")
    lr = row.lr if row.lr is not None else nan
    if row.muon_lr is not None:
        return lr, row.muon_lr
    return (nan, lr) if optimizer == "muon" else (lr, nan)  # before muon_lr, a Muon run's lr was Muon's


def _read_series(run_dir: Path, optimizer: str | None) -> tuple[dict[str, list], dict] | None:
    """(step, tokens and loss / AdamW's and Muon's rates / grad_norm of the training rows, the validation
    curves {label: (tokens, losses)}: the run's, and a mixture's on each source), streamed from the log
    one line at a time so that no list of row dicts is ever held (a log of 12,000 rows would otherwise be
    ~12 MB of dicts per redraw). Torn lines are skipped (iter_metrics). None when the log holds no row."""
    keys = ("step", "tokens", "loss", "grad_norm")
    train: dict[str, list] = {key: [] for key in (*keys, "adamw_lr", "muon_lr")}
    val: dict[str, tuple[list, list]] = {}
    rows = 0
    for row in iter_metrics(run_dir):
        rows += 1
        points = {"validation": row.val_loss} if row.val_loss is not None else {}
        points.update({f"validation: {k[9:]}": v for k, v in row.evals.items() if k.startswith("val_loss/")})
        if row.evals.get("ema_val_loss") is not None:  # ema_decay's averaged weights
            points["validation, averaged weights"] = row.evals["ema_val_loss"]
        for label, value in points.items():
            xs, ys = val.setdefault(label, ([], []))
            xs.append(row.tokens)
            ys.append(value)
        if row.loss is not None:  # the step-0 row holds only val_loss
            for key in keys:
                train[key].append(getattr(row, key))
            for key, rate in zip(("adamw_lr", "muon_lr"), _rates(row, optimizer)):
                train[key].append(rate)
    return (train, val) if rows else None


def _draw_rates(ax, series: dict, optimizer: str | None) -> None:
    """The learning-rate panel: a line per optimizer that has a rate, each named in the legend."""
    has_muon = any(not math.isnan(y) for y in series["muon_lr"][1])
    if any(not math.isnan(y) for y in series["adamw_lr"][1]):
        kind = "muon" if has_muon else optimizer
        ax.plot(*series["adamw_lr"], lw=1, label=ADAMW.get(kind or "", UNKNOWN_LR))
    if has_muon:
        ax.plot(*series["muon_lr"], lw=1, label=MUON)
    ax.set_ylabel("learning rate")
    if ax.get_legend_handles_labels()[0]:  # rows without a rate (a hand-made log) draw no line
        ax.legend()


def _draw(fig, series: dict, val: dict, title: str, marks: list, optimizer: str | None) -> None:
    """Three panels against tokens; each (step, tokens) in `marks` is a resume, a dashed red line; the
    rates named by the run's `optimizer` (None: unknown)."""
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].plot(*series["loss"], label="train", lw=1)
    for label, points in val.items():  # the run's, then each source's of a mixture
        mixed = label == "validation"
        name = "validation (mixture)" if mixed and len(val) > 1 else label
        axes[0].plot(*points, "o-" if mixed else ".--", label=name, ms=4, lw=1)
    axes[0].set_ylabel("loss")
    _draw_rates(axes[1], series, optimizer)
    axes[2].plot(*series["grad_norm"], lw=1)
    axes[2].set_ylabel("grad norm (pre-clip)")
    axes[2].set_xlabel("tokens")
    if any(isinstance(g, (int, float)) and g > 0 for g in series["grad_norm"][1]):
        axes[2].set_yscale("log")
    for i, (step, x) in enumerate(marks):
        for ax in axes:
            ax.axvline(
                x, color="tab:red", ls="--", lw=1, label="resumed" if i == 0 and ax is axes[0] else None
            )
        axes[0].annotate(
            f"resumed at step {step:,}", (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
            textcoords="offset points", color="tab:red", fontsize=8,
        )  # fmt: skip
    axes[0].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()


def _render(run_dir: Path, title: str, resumes: list[int], save) -> bool:
    """Draw the run's chart on the one reused figure and hand it to `save(fig)`; False if the log
    holds no row yet."""
    optimizer = _run_optimizer(run_dir)
    read = _read_series(run_dir, optimizer)
    if read is None:
        return False
    train, curves = read
    steps, tokens = train.pop("step"), train.pop("tokens")
    # A resume at step s sits where the first training row at or after s was logged.
    marks = [(s, tokens[i]) for s in resumes if (i := bisect.bisect_left(steps, s)) < len(steps)]
    series = {key: downsample(tokens, values) for key, values in train.items()}
    val = {label: downsample(*points) for label, points in curves.items()}
    del read, train, tokens, steps
    fig = _reused_figure()
    fig.clear()
    try:
        _draw(fig, series, val, title, marks, optimizer)
        save(fig)
    finally:
        fig.clear()
        _release_memory()
    return True


def write_charts(run_dir: Path | str) -> Path | None:
    """Draw RUN/charts/training.png (three panels against tokens, resumes marked); None if there
    is nothing yet."""
    run_dir = Path(run_dir)
    out = RunDir(run_dir).chart

    def save(fig) -> None:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=100, format="png")

    return out if _render(run_dir, run_dir.resolve().name, read_resumes(run_dir), save) else None


def chart_png(run_dir: Path | str, title: str, resumes: list[int]) -> bytes | None:
    """The same chart as PNG bytes, under `title` (the report's); None if there is nothing yet."""
    buf = io.BytesIO()
    drawn = _render(Path(run_dir), title, resumes, lambda fig: fig.savefig(buf, dpi=100, format="png"))
    return buf.getvalue() if drawn else None
