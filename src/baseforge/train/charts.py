"""PNG charts of a run from its metrics log: loss (train + validation), learning rate, grad norm."""

from __future__ import annotations

from pathlib import Path

from baseforge.fileio import atomic_path
from baseforge.train.metrics import read_metrics


def write_charts(run_dir: Path | str) -> Path | None:
    """Draw RUN/charts/training.png (three panels against tokens); None if there is nothing yet."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    # A bare Figure with the Agg canvas: no pyplot, so no global figure registry and no display.
    from matplotlib.figure import Figure

    val = [(r["tokens"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    rows = [r for r in rows if r.get("loss") is not None]  # the step-0 row holds only val_loss
    tokens = [r["tokens"] for r in rows]
    fig = Figure(figsize=(8, 9))
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].plot(tokens, [r["loss"] for r in rows], label="train", lw=1)
    if val:
        axes[0].plot(*zip(*val), "o-", label="validation", ms=4)
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    axes[1].plot(tokens, [r["lr"] for r in rows], lw=1)
    axes[1].set_ylabel("learning rate")
    axes[1].grid(alpha=0.3)
    axes[2].plot(tokens, [r["grad_norm"] for r in rows], lw=1)
    axes[2].set_ylabel("grad norm (pre-clip)")
    axes[2].set_xlabel("tokens")
    axes[2].set_yscale("log")
    axes[2].grid(alpha=0.3)
    fig.suptitle(Path(run_dir).resolve().name)
    fig.tight_layout()
    out = Path(run_dir) / "charts" / "training.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return out
