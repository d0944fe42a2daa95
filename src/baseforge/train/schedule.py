"""Learning-rate schedules, as a multiplier of the peak learning rate for each step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from baseforge.config import TrainConfig


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
    """A run's learning-rate schedule: the multiplier of the peak learning rate at each step."""

    kind: str
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float
    decay_fraction: float

    @classmethod
    def from_config(cls, cfg: TrainConfig, total_steps: int) -> Schedule:
        warmup = cfg.warmup_steps or round(cfg.warmup_fraction * total_steps)
        return cls(cfg.schedule, total_steps, warmup, cfg.min_lr_ratio, cfg.decay_fraction)

    def multiplier(self, step: int) -> float:
        return lr_multiplier(
            step, self.total_steps, self.kind, self.warmup_steps, self.min_lr_ratio, self.decay_fraction
        )
