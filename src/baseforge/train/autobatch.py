"""Find the largest micro-batch that fits (`--set micro_batch=auto`), like the write-up's search.

Candidates are the divisors of the per-process batch, so the accumulation it implies is whole.
Each candidate runs real training steps, as the run will: `TrainStep`'s micro-step (loss divided
by the accumulation, GradScaler under fp16), two micro-steps, unscale, clip, optimizer step;
out-of-memory means too big. Binary search assumes that if b fits, every smaller b fits too.

Margin: the size found is the largest that fitted once; the run also holds what the trials did not
(DDP's gradient buckets, evaluation, allocator fragmentation over hours). So where the trial at that
size peaked above 90% of the GPU's memory (`MARGIN`), the next divisor down is taken.

Under DDP each rank searches alone on its plain model (no process group traffic in the trials, which
could hang a rank that ran out of memory while the others wait); the ranks then take the smallest of
their answers (all-reduce MIN), so every rank runs the same micro-batch.

Trials change the weights and draw random numbers; both are put back (CPU and CUDA generators), the
gradients are cleared even after an out-of-memory in backward, and the peak-memory counter is reset,
so the run that follows is the run it would have been with that micro-batch given explicitly.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

import torch

from baseforge.data.batch_plan import BatchLayout, BatchPlan
from baseforge.errors import UserError, is_oom
from baseforge.model.attention import window_tensor
from baseforge.train.device import rng_devices
from baseforge.train.optim import build_optimizers
from baseforge.train.parallel import ModelViews
from baseforge.train.step import TrainStep

if TYPE_CHECKING:
    from baseforge.config import TrainConfig
    from baseforge.train.device import Runtime

MARGIN = 0.10  # fraction of the GPU's memory the chosen micro-batch's trial must leave free


def divisors(n: int) -> list[int]:
    return [b for b in range(1, n + 1) if n % b == 0]


def largest_fitting(per_rank_batch: int, fits: Callable[[int], bool]) -> int:
    """The largest divisor b of per_rank_batch with fits(b); UserError if not even 1 fits."""
    candidates = divisors(per_rank_batch)
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


def with_margin(per_rank_batch: int, micro: int, peak: int, capacity: int) -> int:
    """`micro`, or the next divisor down where its trial left less than MARGIN of `capacity` free."""
    if not capacity or peak <= (1 - MARGIN) * capacity:
        return micro
    smaller = [b for b in divisors(per_rank_batch) if b < micro]
    return smaller[-1] if smaller else micro


class DeviceMemory:
    """What the search reads of the device's memory; on CPU nothing is known (no margin)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        """Bytes the allocator held at most since reset_peak (reserved: what an OOM is about)."""
        return torch.cuda.max_memory_reserved(self.device) if self.cuda else 0

    def capacity(self) -> int:
        """Bytes this process may use: the GPU's, times a set_per_process_memory_fraction cap."""
        if not self.cuda:
            return 0
        total = torch.cuda.get_device_properties(self.device).total_memory
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        return int(total * (fraction(self.device) if fraction else 1.0))

    def release(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


def step_fits(
    run_steps: Callable[[int], None],
    model: torch.nn.Module,
    memory: DeviceMemory,
    peaks: dict[int, int],
) -> Callable[[int], bool]:
    """Wrap `run_steps(b)` (a few real steps at micro-batch b) into a fits(b) test; records peaks[b]."""

    def fits(b: int) -> bool:
        memory.reset_peak()
        try:
            run_steps(b)
            peaks[b] = memory.peak()
            return True
        except Exception as exc:  # noqa: BLE001 - only OOM is an answer; anything else is a bug
            if not is_oom(exc):
                raise
            return False
        finally:
            # an OOM in backward leaves the gradients of the layers it reached
            model.zero_grad(set_to_none=True)
            memory.release()

    return fits


def agree(micro: int, runtime: Runtime) -> int:
    """The smallest of the ranks' answers (each rank searched alone): one micro-batch for all."""
    if not runtime.dist.enabled:
        return micro
    import torch.distributed as dist

    t = torch.tensor([micro], dtype=torch.int64, device=runtime.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def search_micro_batch(
    model: torch.nn.Module,
    data,
    cfg: TrainConfig,
    runtime: Runtime,
    per_rank: int,
    memory: DeviceMemory | None = None,
    window: int | None = None,
) -> int:
    """The largest micro-batch (a divisor of `per_rank`) whose real training steps fit in memory,
    less the margin, agreed by all ranks. Weights, RNG, gradients and the peak counter are put back.
    `window`: a window warmup's first window, which the trials use as the run's first steps will (the
    same attention kernel, so a CUDA run's FlexAttention compiles for it here once, not again later)."""
    memory = memory or DeviceMemory(runtime.device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    peaks: dict[int, int] = {}
    with torch.random.fork_rng(devices=rng_devices(runtime.device), device_type="cuda"):
        trial = functools.partial(_trial_steps, model, data, cfg, runtime, per_rank, window=window)
        fits = step_fits(trial, model, memory, peaks)
        micro = largest_fitting(per_rank, fits)
    model.load_state_dict(initial)
    micro = with_margin(per_rank, micro, peaks.get(micro, 0), memory.capacity())
    micro = agree(micro, runtime)
    memory.release()
    memory.reset_peak()  # max_memory_allocated is the run's, not the search's
    return micro


def _trial_steps(
    model, data, cfg: TrainConfig, runtime: Runtime, per_rank: int, b: int, window: int | None = None
) -> None:
    """One optimizer step of two micro-steps at micro-batch b, through the trainer's own TrainStep."""
    layout = BatchLayout(micro_batch=b, grad_accum=per_rank // b)
    optimizers = build_optimizers(model, cfg, runtime.device)
    views = ModelViews(model, model, model, "single", runtime)  # no sync: each rank searches alone
    plan = BatchPlan.constant(layout, model.config.context)
    step = TrainStep(views, optimizers, runtime, plan, schedule=None, grad_clip=cfg.grad_clip)
    x, y = data.micro_batch(0, 0, layout)
    x, y = x.to(runtime.device), y.to(runtime.device)
    size = None if window is None else window_tensor(window, runtime.device)
    step.forward_backward(x, y, sync=False, window=size, accum=layout.grad_accum)
    step.forward_backward(x, y, sync=True, window=size, accum=layout.grad_accum)
    step.update(bool(torch.isfinite(step.clip_gradients())))
