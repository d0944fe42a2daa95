"""Learning-rate schedules, as a multiplier of the peak learning rate for each step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from baseforge.errors import UserError
from baseforge.records import count, number

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


# An extension that would continue from under this fraction of the peak rate (a finished WSD run decays
# to min_lr_ratio, often 0) would train at almost no rate: it is refused unless extend_lr re-warms it.
EXTEND_FLOOR = 0.05


@dataclass(frozen=True)
class Tail:
    """An extended run's schedule after step `start` (0: not extended): from the multiplier it had there
    (`from_lr`), a linear re-warm over `warmup` steps to `to_lr` (none when `warmup` is 0: it stays at
    from_lr), constant, then a linear decay to min_lr_ratio over the last decay_fraction of the steps
    after `start` (warmup-stable-decay again, as in continued pretraining's re-warm and re-decay)."""

    start: int = 0
    from_lr: float = 1.0
    to_lr: float = 1.0
    warmup: int = 0

    @classmethod
    def from_state(cls, state: dict, where) -> Tail:
        """The tail a checkpoint's state.json records (RunState's tail_* fields); older ones lack the
        re-warm's."""
        start = count(state, "tail_from", where, optional=True) or 0
        from_lr = number(state, "tail_lr", where)
        from_lr = 1.0 if from_lr is None else from_lr
        to_lr = number(state, "tail_peak", where)
        warmup = count(state, "tail_warmup", where, optional=True) or 0
        return cls(start, from_lr, from_lr if to_lr is None else to_lr, warmup)

    def level(self, step: int) -> float:
        """The multiplier before the decay: the re-warm's ramp, then its target."""
        if not self.warmup:
            return self.from_lr
        done = min(1.0, (step - self.start + 1) / self.warmup)
        return self.from_lr + (self.to_lr - self.from_lr) * done


@dataclass(frozen=True)
class Schedule:
    """A run's learning-rate schedule: the multiplier of the peak learning rate at each step; an extended
    run (`train --resume --extend`) keeps it up to its tail's start, then follows the tail (Tail)."""

    kind: str
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float
    decay_fraction: float
    tail: Tail = Tail()

    @classmethod
    def from_config(cls, cfg: TrainConfig, total_steps: int, tail: Tail = Tail()) -> Schedule:
        warmup = cfg.warmup_steps or round(cfg.warmup_fraction * total_steps)
        return cls(cfg.schedule, total_steps, warmup, cfg.min_lr_ratio, cfg.decay_fraction, tail)

    def multiplier(self, step: int) -> float:
        tail = self.tail
        if tail.start and step >= tail.start:
            decay = max(1, round((self.total_steps - tail.start) * self.decay_fraction))
            start, level = self.total_steps - decay, tail.level(step)
            end = min(self.min_lr_ratio, max(tail.from_lr, tail.to_lr))
            return level - (level - end) * min(1.0, max(0, step - start + 1) / decay)
        return lr_multiplier(
            step, self.total_steps, self.kind, self.warmup_steps, self.min_lr_ratio, self.decay_fraction
        )


def extended(old: Schedule, new: Schedule, step: int, extend_lr: float) -> Tail:
    """The tail of a run extended at `step` from schedule `old` to `new`'s length: from the current rate,
    re-warmed to `extend_lr` x the peak where the rate has fallen below it (over the run's warmup, at
    least 1 step and at most a quarter of the added steps); a rate under EXTEND_FLOOR without an
    extend_lr is refused, since the added steps would train at almost no rate."""
    if new.total_steps <= step:
        raise UserError(f"--extend needs a run longer than its {step} steps so far: raise max_steps")
    rate = old.multiplier(step)
    if rate >= extend_lr:
        if rate < EXTEND_FLOOR:
            raise UserError(
                f"the learning rate has decayed to {rate:.4g}x the peak by step {step}: extending would "
                f"train at that rate. Add --set extend_lr=F to re-warm to F x the peak (e.g. 0.5) and "
                "decay again over the new steps, or --resume from a checkpoint before the decay"
            )
        return Tail(step, rate, rate)
    warmup = max(1, min(new.warmup_steps, (new.total_steps - step) // 4))
    return Tail(step, rate, extend_lr, warmup)


def continued(old: Schedule, new: Schedule, step: int, extend: bool, extend_lr: float = 0.0) -> Tail:
    """The tail a run resumed at `step` continues with, when its schedule was `old` and its config now
    says `new` (another max_steps, say). Unchanged at `step`: the old tail. Changed: `extend` keeps the
    past and continues from the current rate, or re-warms (extended); otherwise a UserError says what
    the change would do, since re-stretching a decaying schedule would move the rate backwards."""
    if extend:
        return extended(old, new, step, extend_lr)
    if math.isclose(old.multiplier(step), new.multiplier(step), rel_tol=1e-9, abs_tol=1e-12):
        return old.tail
    raise UserError(
        f"the new length ({new.total_steps} steps, was {old.total_steps}) re-stretches the {old.kind} "
        f"schedule: the learning rate at step {step} would jump from {old.multiplier(step):.4g}x to "
        f"{new.multiplier(step):.4g}x the peak. Add --extend to keep the schedule so far and continue from "
        "the current rate (then a decay over the last decay_fraction of the new steps), or keep max_steps"
    )
