"""Averaged weights: an exponential moving average (EMA) of the model's parameters, kept beside them.

From step `start` (ema_start x the run's steps) on, after every applied optimizer step:

    average <- decay * average + (1 - decay) * weights

starting from a copy of the weights at `start` (so no bias correction is needed); 1 / (1 - decay) steps
is roughly the span it averages over. Like LAWA or a tail EMA (modded-nanogpt), it smooths the last
steps' noise for free: the run trains on the raw weights, and the average is only read.

It is state: each checkpoint saves it as ema.safetensors (the model's names and layout, so eval, sample
and export read it as they read model.safetensors) and a resumed run restores it, so the average of a
resumed run is the uninterrupted one's. Every process holds the same average (DDP keeps the weights
equal on every rank); FSDP is refused (each rank would average its own shards: not written yet).
Evaluating it swaps it into the model and back (`swapped_in`): a transient second copy of the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from baseforge.config import TrainConfig
from baseforge.errors import UserError


@dataclass
class WeightAverage:
    decay: float
    start: int  # the step count from which it averages
    weights: list[torch.Tensor] | None = None  # in model.parameters() order; None before `start`

    @classmethod
    def from_config(cls, cfg: TrainConfig, total_steps: int) -> WeightAverage | None:
        if not cfg.ema_decay:
            return None
        if cfg.parallel == "fsdp":
            raise UserError("ema_decay is not supported with FSDP yet: use parallel=ddp or ema_decay=0")
        return cls(cfg.ema_decay, round(cfg.ema_start * total_steps))

    @property
    def started(self) -> bool:
        return self.weights is not None

    def update(self, model: torch.nn.Module, steps_done: int) -> None:
        """After an applied optimizer step (`steps_done` steps in all): start, or move the average."""
        params = [p.detach() for p in model.parameters()]
        if self.weights is None:
            if steps_done >= self.start:
                self.weights = [p.clone() for p in params]
            return
        torch._foreach_lerp_(self.weights, params, 1.0 - self.decay)

    def tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The average as a state dict of `model` (its buffers as they are), for saving."""
        assert self.weights is not None, "nothing averaged yet"
        averaged = {name: w for (name, _), w in zip(model.named_parameters(), self.weights)}
        return {k: averaged.get(k, v).detach().contiguous() for k, v in model.state_dict().items()}

    def load(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the average from a checkpoint's tensors (checked for names and shapes by the reader)."""
        # named_parameters() yields a tied head once, as wte: the name the checkpoint keeps
        self.weights = [tensors[n].to(p.device, p.dtype).clone() for n, p in model.named_parameters()]

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module) -> Iterator[None]:
        """`model` computes with the average inside the block; its own weights are back after it."""
        assert self.weights is not None, "nothing averaged yet"
        params = [p.data for p in model.parameters()]
        saved = [p.clone() for p in params]
        torch._foreach_copy_(params, self.weights)
        try:
            yield
        finally:
            torch._foreach_copy_(params, saved)
