"""Learning-rate schedules, as a multiplier of the peak learning rate for each step."""

from __future__ import annotations

import math


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
