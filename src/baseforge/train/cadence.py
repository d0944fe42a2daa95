"""When the periodic actions of a run happen: logging, validation, HellaSwag, checkpoints.

One place decides, so the loop reads as the recipe: after each step ask `cadence.due(step)`.
The last step does everything; validation and HellaSwag steps are also logged steps (their
numbers land in the same metrics row). Time-based checkpoints (`checkpoint_minutes`) are the
one action that depends on the clock, so ranks must agree on them (the loop all-reduces the flag).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from baseforge.config import TrainConfig


@dataclass(frozen=True)
class Due:
    log: bool = False
    evaluate: bool = False
    evaluators: bool = False
    checkpoint: bool = False


@dataclass
class Cadence:
    log_every: int
    eval_every: int
    evaluators_every: int  # 0 = never
    checkpoint_every: int
    checkpoint_minutes: float  # 0 = off
    last_checkpoint_time: float = 0.0

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Cadence:
        return cls(
            cfg.log_every,
            cfg.eval_every,
            cfg.evaluators_every,
            cfg.checkpoint_every,
            cfg.checkpoint_minutes,
            time.monotonic(),
        )

    @staticmethod
    def _every(step: int, n: int) -> bool:
        return n > 0 and step % n == 0

    def due(self, step: int, last: bool) -> Due:
        evaluate = self._every(step, self.eval_every) or last
        evaluators = self.evaluators_every > 0 and (self._every(step, self.evaluators_every) or last)
        log = self._every(step, self.log_every) or evaluate or evaluators
        return Due(log, evaluate, evaluators, self._every(step, self.checkpoint_every) or last)

    def checkpoint_time_due(self) -> bool:
        """This process's clock says a time-based checkpoint is due."""
        elapsed = time.monotonic() - self.last_checkpoint_time
        return self.checkpoint_minutes > 0 and elapsed > 60 * self.checkpoint_minutes

    def checkpointed(self) -> None:
        self.last_checkpoint_time = time.monotonic()
