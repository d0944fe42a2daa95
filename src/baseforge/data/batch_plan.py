"""How each step's global batch is cut (`BatchLayout`: micro-batches x accumulation x processes) and
the layout of every step (`BatchPlan`), with a batch-size schedule: small batches early, the run's own
after.

`batch_schedule = "2@1e5,4@4e5"` trains in steps of 2 sequences until the run has seen 100k tokens,
then of 4 until 400k, then of the run's `global_batch` (modded-nanogpt's batch-size schedule: early
on, when the gradient noise scale is small, a small batch gives as much progress per token as a large
one, in fewer tokens per step). The stages are in tokens, not in fractions of the run, so they never
move: a resumed or extended run, on any number of processes, reads exactly the windows it would have.

A step's batch stays a pure function of the step number: stage i covers steps [from_step_i, end_i)
and reads the stream windows that follow the previous stages' (`BatchLayout.from_step` and
`first_window`), so step s's global batch is windows [windows_before(s), windows_before(s + 1)).
Within a stage, micro-batches are the largest up to the run's micro_batch that divide the stage's
batch per process; the accumulation follows.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace

from baseforge.errors import ConfigError, UserError


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's global batch of sequences is cut: micro-batches x accumulation x ranks."""

    micro_batch: int
    grad_accum: int = 1
    world: int = 1
    rank: int = 0
    # From which step this layout holds, and the stream window that step's batch starts at: both 0
    # unless a batch schedule (batch_plan.py) ran smaller batches before.
    from_step: int = 0
    first_window: int = 0

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world

    def start(self, step: int, micro_step: int) -> int:
        """The first stream window of this rank's micro-batch `micro_step` of optimizer step `step`."""
        return (
            self.first_window
            + (step - self.from_step) * self.global_batch
            + micro_step * self.world * self.micro_batch
            + self.rank * self.micro_batch
        )

    @classmethod
    def from_config(
        cls, cfg, *, world: int = 1, rank: int = 0, micro_batch: int | None = None
    ) -> BatchLayout:
        """The run's layout from its TrainConfig: the one constructor `train`, `--dry-run` and
        `finetune` share. `micro_batch` is the size the search found when the config says "auto";
        without it, an "auto" run with a global_batch is laid out as one micro-batch per rank."""
        micro = micro_batch or cfg.micro_batch
        if micro == "auto":
            if not cfg.global_batch:
                raise UserError("micro_batch=auto without a global_batch: the batch is decided by the search")
            micro = max(1, cfg.global_batch // world)
        return cls.resolve(
            global_batch=cfg.global_batch,
            micro_batch=micro,
            grad_accum=cfg.grad_accum,
            world=world,
            rank=rank,
        )

    @classmethod
    def resolve(
        cls, *, global_batch: int, micro_batch: int, grad_accum: int, world: int, rank: int
    ) -> BatchLayout:
        """The layout for this world size.

        With global_batch set, it belongs to the run: accumulation follows from it, so a run can move
        between numbers of processes and keep its optimisation. Otherwise it is micro x accum x world.
        """
        if not global_batch:
            return cls(micro_batch, grad_accum, world, rank)
        if global_batch % world:
            raise UserError(f"global_batch {global_batch} is not divisible by {world} processes")
        per_rank = global_batch // world
        if per_rank % micro_batch:
            raise UserError(
                f"global_batch {global_batch} over {world} processes is {per_rank} sequences each, "
                f"not divisible by micro_batch {micro_batch}; pick a micro_batch that divides it"
            )
        return cls(micro_batch, per_rank // micro_batch, world, rank)


Stage = tuple[int, int]  # (sequences per step, tokens seen when the stage ends)


def parse_batch_schedule(text: str) -> tuple[Stage, ...]:
    """`"B@T,B@T"` -> ((B, T), ...): B sequences per step until T tokens in all; ConfigError if malformed."""
    stages: list[Stage] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        seqs, _, until = part.partition("@")
        try:
            b, t = int(seqs), float(until)
        except ValueError:
            b, t = 0, 0.0
        if b < 1 or not math.isfinite(t) or t < 1 or t != int(t) or t > 2**62:
            raise ConfigError(
                f"config: batch_schedule stage {part!r} must be SEQUENCES@TOKENS, a positive number of "
                "sequences per step and the tokens trained when the stage ends (e.g. 8@2e6)"
            )
        if stages and int(t) <= stages[-1][1]:
            raise ConfigError(f"config: batch_schedule's stages must end at growing token counts: {text!r}")
        stages.append((b, int(t)))
    return tuple(stages)


def largest_divisor_up_to(n: int, most: int) -> int:
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


@dataclass(frozen=True)
class BatchPlan:
    """The batch layout of every step: the schedule's stages, then the run's own layout (the last)."""

    layouts: tuple[BatchLayout, ...]  # each with from_step and first_window set; the last holds on
    ends: tuple[int, ...]  # the step at which each stage but the last ends (exclusive)
    context: int

    @classmethod
    def build(cls, layout: BatchLayout, stages: tuple[Stage, ...], context: int) -> BatchPlan:
        """The plan of a run whose own layout is `layout`, after `stages`."""
        layouts, ends, step, windows = [], [], 0, 0
        for seqs, until in stages:
            if seqs > layout.global_batch or seqs % layout.world:
                raise UserError(
                    f"batch_schedule stage {seqs}@{until}: {seqs} sequences must be at most the global "
                    f"batch ({layout.global_batch}) and divisible by the {layout.world} processes"
                )
            micro = largest_divisor_up_to(seqs // layout.world, layout.micro_batch)
            stage = BatchLayout(
                micro, seqs // layout.world // micro, layout.world, layout.rank, step, windows
            )
            steps = max(0, math.ceil((until - windows * context) / (seqs * context)))
            layouts.append(stage)
            step, windows = step + steps, windows + steps * seqs
            ends.append(step)
        layouts.append(replace(layout, from_step=step, first_window=windows))
        return cls(tuple(layouts), tuple(ends), context)

    @classmethod
    def from_config(
        cls, cfg, context: int, *, world: int = 1, rank: int = 0, micro_batch: int | None = None
    ) -> BatchPlan:
        """The one constructor of train, --dry-run and a resume's checks: BatchLayout.from_config's
        layout after cfg.batch_schedule's stages."""
        layout = BatchLayout.from_config(cfg, world=world, rank=rank, micro_batch=micro_batch)
        return cls.build(layout, parse_batch_schedule(cfg.batch_schedule), context)

    @classmethod
    def constant(cls, layout: BatchLayout, context: int) -> BatchPlan:
        return cls((layout,), (), context)

    @property
    def layout(self) -> BatchLayout:
        """The run's own layout, which holds from the end of the schedule on."""
        return self.layouts[-1]

    @property
    def scheduled(self) -> bool:
        return len(self.layouts) > 1

    def at(self, step: int) -> BatchLayout:
        return self.layouts[bisect.bisect_right(self.ends, step)]

    def windows_before(self, step: int) -> int:
        """Sequences trained on before step `step` (over all processes)."""
        layout = self.at(step)
        return layout.first_window + (step - layout.from_step) * layout.global_batch

    def tokens_before(self, step: int) -> int:
        return self.windows_before(step) * self.context

    def tokens_of(self, step: int) -> int:
        return self.at(step).global_batch * self.context

    def steps_for(self, tokens: int) -> int:
        """The fewest steps (at least 1) that train on at least `tokens` tokens."""
        for layout, end in zip(self.layouts, [*self.ends, None]):
            if end is None or tokens <= self.tokens_before(end):
                done = layout.first_window * self.context
                return max(
                    1, layout.from_step + math.ceil((tokens - done) / (layout.global_batch * self.context))
                )
        raise AssertionError("unreachable: the last layout holds on")

    def describe(self) -> str | None:
        """The schedule in words, for the run's opening lines (None without one)."""
        if not self.scheduled:
            return None
        parts = [
            f"{layout.global_batch} sequences for steps {layout.from_step}-{end - 1}"
            for layout, end in zip(self.layouts, self.ends)
            if end > layout.from_step
        ]
        return f"batch schedule: {', '.join(parts)}, then {self.layout.global_batch}"
