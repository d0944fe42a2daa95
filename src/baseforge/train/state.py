"""The progress of a run as one typed object, saved in every checkpoint's state.json and restored whole.

Everything the loop accumulates lives here, so a resumed run continues the same sums: the step,
tokens seen, the best validation loss, counts of skipped and clipped steps, training time, and
the metrics row in progress (`LogInterval`: the sums since the last logged row).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from baseforge.errors import UserError
from baseforge.records import count, excerpt, number


@dataclass
class LogInterval:
    """Sums over the optimizer steps since the last metrics row."""

    loss_sum: float = 0.0
    steps: int = 0  # applied (finite) steps
    span: int = 0  # every step since the last row, skipped ones too: what its tokens and seconds cover
    gnorm_sum: float = 0.0
    clipped: int = 0
    tokens: int = 0
    seconds: float = 0.0
    flops: float = 0.0  # training FLOPs of those tokens (MFU's numerator)

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    def mean_grad_norm(self) -> float:
        return self.gnorm_sum / max(self.steps, 1)


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on
    initial_val: float | None = None  # validation loss before the first step
    best_val: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0  # evaluations without a new best (early stopping)
    skipped: int = 0  # non-finite steps skipped, in all
    bad_in_row: int = 0  # non-finite steps in a row, up to now
    clipped: int = 0  # steps whose gradient norm was clipped, in all
    elapsed_s: float = 0.0  # training wall time, evaluation excluded
    flops: float = 0.0  # training FLOPs of every step so far (the whole run's MFU)
    tail_from: int = 0  # an extended run's schedule: from this step on (0: not extended) ...
    tail_lr: float = 1.0  # ... the tail starts at this multiplier of the peak (schedule.Tail) ...
    tail_peak: float = 1.0  # ... and re-warms to this one ...
    tail_warmup: int = 0  # ... over this many steps (0: no re-warm)
    interval: LogInterval = field(default_factory=LogInterval)

    def record_step(self, loss: float, grad_norm: float, applied: bool, clip: float) -> None:
        """Count one optimizer step's outcome (before its tokens and time are added)."""
        self.step += 1
        self.interval.span += 1
        if not applied:
            self.skipped += 1
            self.bad_in_row += 1
            return
        self.bad_in_row = 0
        clipped = clip > 0 and grad_norm > clip
        self.interval.loss_sum += loss
        self.interval.gnorm_sum += grad_norm
        self.interval.steps += 1
        self.interval.clipped += int(clipped)
        self.clipped += int(clipped)

    def record_time(self, tokens: int, seconds: float, flops: float = 0.0) -> None:
        self.tokens += tokens
        self.interval.tokens += tokens
        self.interval.flops += flops
        self.interval.seconds += seconds
        self.elapsed_s += seconds
        self.flops += flops

    def record_val(self, val: float) -> None:
        improved = self.best_val is None or val < self.best_val
        self.evals_since_best = 0 if improved else self.evals_since_best + 1
        if improved:
            self.best_val, self.best_step = val, self.step

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, saved: dict, path: Path | str = "state.json") -> RunState:
        """From a checkpoint's state.json (`path`, for errors), every field checked: counts are whole
        numbers >= 0, losses and times finite; unknown keys (the tokenizer record, ...) are ignored."""
        values = {f.name: _field(saved, f.name, f.type, path) for f in fields(cls) if f.name != "interval"}
        kept = {k: v for k, v in values.items() if v is not None or k in _NULLABLE}
        interval = saved.get("interval")
        if interval is None:
            return cls(**kept)
        if not isinstance(interval, dict):
            raise UserError(f"{path}: interval is {excerpt(interval)}, not an object; corrupt checkpoint")
        sums = {
            f.name: _field(interval, f.name, f.type, path) for f in fields(LogInterval) if f.name in interval
        }
        sums.setdefault("span", sums.get("steps", 0))  # saved before the span was kept: its applied steps
        return cls(**kept, interval=LogInterval(**sums))


_NULLABLE = {"initial_val", "best_val", "best_step"}


def _field(record: dict, name: str, kind: object, path):
    """One RunState / LogInterval field read back: None when absent (the dataclass default then applies).
    `kind` is the field's annotation: a string, under `from __future__ import annotations`."""
    if name not in record or (record[name] is None and name in _NULLABLE):
        return None
    if str(kind).startswith("int"):
        return count(record, name, path)
    return number(record, name, path, optional=False)
