"""Find the largest micro-batch that fits (`--set micro_batch=auto`), like the write-up's search.

Candidates are the divisors of the per-process batch, so the accumulation it implies is whole.
Each candidate runs a few real training steps; out-of-memory means too big. Binary search
assumes that if b fits, every smaller b fits too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from baseforge.errors import UserError

if TYPE_CHECKING:
    from baseforge.config import TrainConfig
    from baseforge.train.device import Runtime


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def largest_fitting(per_rank_batch: int, fits: Callable[[int], bool]) -> int:
    """The largest divisor b of per_rank_batch with fits(b); UserError if not even 1 fits."""
    candidates = [b for b in range(1, per_rank_batch + 1) if per_rank_batch % b == 0]
    if not fits(candidates[0]):
        raise UserError(
            "out of memory even at micro_batch 1: use a smaller model or context, "
            "a lower precision, or more GPUs"
        )
    lo, hi = 0, len(candidates) - 1  # candidates[lo] fits; answer in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(candidates[mid]):
            lo = mid
        else:
            hi = mid - 1
    return candidates[lo]


def step_fits(run_steps: Callable[[int], None], device: torch.device) -> Callable[[int], bool]:
    """Wrap `run_steps(b)` (a few real steps at micro-batch b) into a fits(b) test."""

    def fits(b: int) -> bool:
        try:
            run_steps(b)
            return True
        except Exception as exc:  # noqa: BLE001 - only OOM is an answer; anything else is a bug
            if not is_oom(exc):
                raise
            return False
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()

    return fits


def search_micro_batch(
    model: torch.nn.Module, data, cfg: TrainConfig, runtime: Runtime, per_rank: int
) -> int:
    """The largest micro-batch (a divisor of `per_rank`) whose real training steps fit in memory.

    Trial steps change the weights and draw random numbers; both are put back, so the run that
    follows is the run it would have been with that micro-batch given explicitly.
    """
    from baseforge.data.loader import BatchLayout
    from baseforge.train.optim import build_optimizers

    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    def run_steps(b: int) -> None:
        opt = build_optimizers(model, cfg, runtime.device)
        x, y = data.micro_batch(0, 0, BatchLayout(micro_batch=b))
        for _ in range(2):
            with runtime.precision.autocast():
                _, loss = model(x.to(runtime.device), y.to(runtime.device))
            loss.backward()
            opt.step()
            opt.zero_grad()

    micro = largest_fitting(per_rank, step_fits(run_steps, runtime.device))
    model.load_state_dict(initial)
    torch.set_rng_state(rng)
    return micro
