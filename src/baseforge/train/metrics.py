"""The metrics log: one JSON row per logged step, appended; read back tolerating a torn last line.

`RUN/metrics.jsonl` holds one JSON object per logged step:

    step, tokens         optimizer steps done and tokens trained on so far
    loss                 mean training loss over the steps since the last row (null on the step-0
                         row, which holds only the validation loss before training)
    val_loss             validation loss on the fixed slice (only on rows where it was evaluated)
    lr                   AdamW's learning rate at this step (the schedule times the `lr` key): every
                         parameter's, or with optimizer=muon the embeddings', head's, norms' and biases'
    muon_lr              Muon's learning rate at this step (times `muon_lr`), for the hidden matrices;
                         Muon runs only. (Rows written before it was logged held Muon's rate as `lr`.)
    grad_norm            global gradient norm before clipping (mean since the last row)
    clip_frac            fraction of steps since the last row whose norm was clipped
    skipped              non-finite steps skipped so far
    tokens_per_s, mfu    throughput since the last row, and model FLOPs utilisation
    peak_alloc_gib,      CUDA: peak memory held by tensors, and peak memory the caching allocator
    peak_reserved_gib    reserved from the GPU (what an out-of-memory is about; `plan` and the
                         micro-batch search count this one), since the process started, in GiB
    peak_rss_gib         CPU: peak resident memory of the process, in GiB (instead of the two above)
    elapsed_s            training wall time so far (excluding evaluation)
    NAME_KEY             an in-training evaluator's figure (e.g. hellaswag_acc), on rows where it ran;
    NAME_KEY_stderr      its standard error (hellaswag_acc_stderr), and NAME_items the items it rests on

`MetricsRow` is a row; `MetricsLog.write` the one writer and `iter_metrics` the one reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from baseforge.fileio import atomic_write_text, io_errors, read_append_log
from baseforge.rundir import RunDir


@dataclass
class MetricsRow:
    """One row of metrics.jsonl (the module docstring says what each field is). Fields a row does not
    have are None and are not written; `evals` holds the in-training evaluators' figures."""

    step: int
    tokens: int
    loss: float | None = None
    lr: float | None = None
    muon_lr: float | None = None
    grad_norm: float | None = None
    clip_frac: float | None = None
    skipped: int | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_alloc_gib: float | None = None
    peak_reserved_gib: float | None = None
    peak_rss_gib: float | None = None
    elapsed_s: float | None = None
    val_loss: float | None = None
    evals: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The row as written: step, tokens and loss always (loss null on the step-0 row), then the
        fields it has, then the evaluators'."""
        out: dict = {"step": self.step, "tokens": self.tokens, "loss": self.loss}
        for f in fields(self)[3:-1]:
            if (value := getattr(self, f.name)) is not None:
                out[f.name] = value
        return {**out, **self.evals}

    @classmethod
    def from_json(cls, record) -> MetricsRow | None:
        """A row read back, or None for a line that is not one (a kill's torn line, an edit): a log's bad
        line is skipped, never an error (read_append_log)."""
        if not isinstance(record, dict):
            return None
        step, tokens = record.get("step"), record.get("tokens")
        if not (_whole(step) and _whole(tokens)):
            return None
        names = {f.name for f in fields(cls)} - {"step", "tokens", "evals"}
        known: dict[str, float] = {}
        evals: dict[str, float] = {}
        for key, value in record.items():
            if key in ("step", "tokens") or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            (known if key in names else evals)[key] = value
        return cls(step=step, tokens=tokens, **known, evals=evals)  # type: ignore[arg-type]


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def iter_metrics(run_dir: Path | str) -> Iterator[MetricsRow]:
    """The rows of RUN/metrics.jsonl, one line at a time (a chart of a long run holds no list of them);
    lines that are not rows are skipped. A missing log has none."""
    path = RunDir(run_dir).metrics
    if not path.is_file() or path.is_symlink():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = MetricsRow.from_json(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                continue
            if row is not None:
                yield row


def read_metrics(run_dir: Path | str) -> list[MetricsRow]:
    return list(iter_metrics(run_dir))


def truncate_metrics(run_dir: Path | str, step: int, set_aside: bool = False) -> int:
    """On resume: drop rows logged after the checkpoint we resume from (they will be redone); with
    `set_aside`, they are kept in RUN/discarded/metrics-after-step-N.jsonl. Returns how many went."""
    run = RunDir(run_dir)
    rows = read_metrics(run_dir)
    kept = [r for r in rows if r.step <= step]
    dropped = [r for r in rows if r.step > step]
    if set_aside and dropped:
        aside = run.discarded / f"metrics-after-step-{step}.jsonl"
        atomic_write_text(aside, "".join(json.dumps(r.to_json()) + "\n" for r in dropped))
    # Always rewritten: a torn last line (a kill mid-append) must not join the next row.
    atomic_write_text(run.metrics, "".join(json.dumps(r.to_json()) + "\n" for r in kept))
    return len(dropped)


def record_resume(run_dir: Path | str, step: int) -> None:
    """On resume from `step`: note it in RUN/resumes.jsonl, {"step": N} per resume, where a later process
    took over (the report and the chart mark it); resume points after `step` were an abandoned future."""
    path = RunDir(run_dir).resumes
    kept = [r for r in read_append_log(path) if r.get("step", 0) < step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in [*kept, {"step": step}]))


def read_resumes(run_dir: Path | str) -> list[int]:
    """The steps a run was resumed from (RUN/resumes.jsonl), in order; [] for a run never resumed."""
    return [
        int(r["step"]) for r in read_append_log(RunDir(run_dir).resumes) if isinstance(r.get("step"), int)
    ]


class MetricsLog:
    def __init__(self, run_dir: Path | str):
        self.path = RunDir(run_dir).metrics

    def write(self, row: MetricsRow) -> None:
        with io_errors(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row.to_json()) + "\n")
            f.flush()


GIB = 2**30


def peak_memory(device) -> dict[str, Any]:
    """The metrics row's memory fields (the module docstring names them), in GiB."""
    import torch

    if device.type == "cuda":
        return {
            "peak_alloc_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        }
    try:
        import resource

        return {
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
        }  # KiB on Linux
    except ImportError:  # pragma: no cover (Windows)
        return {}
