"""Learning-rate schedules, as a multiplier of the peak learning rate for each step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from baseforge.errors import UserError

if TYPE_CHECKING:
    from baseforge.config import TrainConfig


WINDOW_START, WINDOW_QUANTUM = 128, 64


def attention_window(step: int, total_steps: int, full: int, warmup: float) -> int | None:
    """The attention window of step `step` under a window warmup, None once it has grown to the
    model's own: from WINDOW_START positions, growing linearly in steps of WINDOW_QUANTUM to `full`
    (the model's attn_window, or its context) over the first `warmup` fraction of the steps
    (modded-nanogpt's attention-window warmup); a window under 4 x WINDOW_START starts at a quarter
    of itself, in quarter steps. A pure function of the step, so resume and N processes agree."""
    if not warmup:
        return None
    start = min(WINDOW_START, max(1, full // 4))
    quantum = min(WINDOW_QUANTUM, start)
    progress = min(1.0, step / max(1.0, warmup * total_steps))
    grown = max(start, math.ceil((start + progress * (full - start)) / quantum) * quantum)
    return grown if grown < full else None


def lr_multiplier(
    step: int,
    total_steps: int,
    schedule: str,
    warmup_steps: int,
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """Multiplier for optimizer step `step` (0-based) of `total_steps`.

    constant: linear warmup, then 1.
    cosine:   linear warmup, then cosine from 1 down to min_lr_ratio at the last step.
    wsd:      linear warmup, stable at 1, then linear decay to min_lr_ratio over the last
              decay_fraction of the steps (warmup-stable-decay).
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - 1 - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, round(total_steps * decay_fraction))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return 1.0 - (1 - min_lr_ratio) * progress
    raise ValueError(f"unknown schedule {schedule!r}")


@dataclass(frozen=True)
class Schedule:
    """A run's learning-rate schedule: the multiplier of the peak learning rate at each step.

    An extended run (`train --resume --extend`) keeps its schedule up to `tail_from`, then continues
    from the multiplier it had there (`tail_lr`): constant, then a linear decay to min_lr_ratio over the
    last decay_fraction of the steps after `tail_from` (warmup-stable-decay's tail)."""

    kind: str
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float
    decay_fraction: float
    tail_from: int = 0  # 0: not extended
    tail_lr: float = 1.0

    @classmethod
    def from_config(cls, cfg: TrainConfig, total_steps: int, tail: tuple[int, float] = (0, 1.0)) -> Schedule:
        warmup = cfg.warmup_steps or round(cfg.warmup_fraction * total_steps)
        return cls(cfg.schedule, total_steps, warmup, cfg.min_lr_ratio, cfg.decay_fraction, *tail)

    def multiplier(self, step: int) -> float:
        if self.tail_from and step >= self.tail_from:
            decay = max(1, round((self.total_steps - self.tail_from) * self.decay_fraction))
            start, end = self.total_steps - decay, min(self.min_lr_ratio, self.tail_lr)
            return self.tail_lr - (self.tail_lr - end) * min(1.0, max(0, step - start + 1) / decay)
        return lr_multiplier(
            step, self.total_steps, self.kind, self.warmup_steps, self.min_lr_ratio, self.decay_fraction
        )


def continued(old: Schedule, new: Schedule, step: int, extend: bool) -> tuple[int, float]:
    """The tail (tail_from, tail_lr) a run resumed at `step` continues with, when its schedule was `old`
    and its config now says `new` (another max_steps, say). Unchanged at `step`: the old tail. Changed:
    `extend` keeps the past and continues from the current rate; otherwise a UserError says what the
    change would do, since re-stretching a decaying schedule would move the rate backwards."""
    if extend:
        if new.total_steps <= step:
            raise UserError(f"--extend needs a run longer than its {step} steps so far: raise max_steps")
        return step, old.multiplier(step)
    if math.isclose(old.multiplier(step), new.multiplier(step), rel_tol=1e-9, abs_tol=1e-12):
        return old.tail_from, old.tail_lr
    raise UserError(
        f"the new length ({new.total_steps} steps, was {old.total_steps}) re-stretches the {old.kind} "
        f"schedule: the learning rate at step {step} would jump from {old.multiplier(step):.4g}x to "
        f"{new.multiplier(step):.4g}x the peak. Add --extend to keep the schedule so far and continue from "
        "the current rate (then a decay over the last decay_fraction of the new steps), or keep max_steps"
    )
