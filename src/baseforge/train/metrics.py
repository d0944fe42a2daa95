"""The metrics log and the progress line.

`RUN/metrics.jsonl` holds one JSON object per logged step:

    step, tokens         optimizer steps done and tokens trained on so far
    loss                 mean training loss over the steps since the last row (null on the step-0
                         row, which holds only the validation loss before training)
    val_loss             validation loss on the fixed slice (only on rows where it was evaluated)
    lr                   learning rate of the first param group at this step
    grad_norm            global gradient norm before clipping (mean since the last row)
    clip_frac            fraction of steps since the last row whose norm was clipped
    skipped              non-finite steps skipped so far
    tokens_per_s, mfu    throughput since the last row, and model FLOPs utilisation
    mem_gb               peak device memory (CUDA) or process RSS (CPU), in GB
    elapsed_s            training wall time so far (excluding evaluation)
"""

from __future__ import annotations

import json
from pathlib import Path

from baseforge.fileio import atomic_write_text, io_errors, read_append_log

METRICS = "metrics.jsonl"


def read_metrics(run_dir: Path | str) -> list[dict]:
    return read_append_log(Path(run_dir) / METRICS)


def truncate_metrics(run_dir: Path | str, step: int) -> None:
    """On resume: drop rows logged after the checkpoint we resume from (they will be redone)."""
    rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


class MetricsLog:
    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / METRICS

    def write(self, row: dict) -> None:
        with io_errors(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


class Progress:
    """One line per logged step: where the run is, how fast, and when it will finish.

    The ETA uses the rate since this process started (a resumed run's earlier time is not its rate).
    """

    def __init__(self, total_steps: int, log=print, start_step: int = 0, start_elapsed_s: float = 0.0):
        self.total = total_steps
        self.log = log
        self.start_step = start_step
        self.start_elapsed_s = start_elapsed_s

    def update(self, row: dict, elapsed_s: float) -> None:
        parts = [f"step {row['step']}/{self.total}", f"loss {row['loss']:.4f}"]
        if "val_loss" in row:
            parts.append(f"val {row['val_loss']:.4f}")
        parts += [
            f"lr {row['lr']:.2e}",
            f"gnorm {row['grad_norm']:.2f}",
            f"{format_count(row['tokens_per_s'])} tok/s",
        ]
        if row.get("mfu") is not None:
            parts.append(f"mfu {100 * row['mfu']:.1f}%")
        per_step = (elapsed_s - self.start_elapsed_s) / max(row["step"] - self.start_step, 1)
        parts.append(f"eta {format_duration((self.total - row['step']) * per_step)}")
        self.log(" | ".join(parts))


def memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux
    except ImportError:  # pragma: no cover (Windows)
        return 0.0
