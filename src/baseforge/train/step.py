"""One optimizer step over the global batch: the only code that runs forward and backward in training.

for each micro-batch of this rank: forward under autocast, loss / accumulation, backward
    (gradients all-reduce only on the last micro-batch: DDP's no_sync on the others)
unscale (fp16), clip the global norm, step the optimizers unless the norm is not finite
move the averaged weights (ema_decay) after an applied step
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from baseforge.data.batch_plan import BatchPlan
from baseforge.data.loader import Prefetcher
from baseforge.model.attention import window_tensor
from baseforge.train.average import WeightAverage
from baseforge.train.device import Runtime
from baseforge.train.optim import Optimizers
from baseforge.train.parallel import ModelViews
from baseforge.train.schedule import Schedule


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean loss over the global batch (this rank's share)
    grad_norm: float  # global gradient norm before clipping
    applied: bool  # False when the norm was not finite and the update was skipped


class TrainStep:
    def __init__(
        self,
        views: ModelViews,
        optimizers: Optimizers,
        runtime: Runtime,
        batches: BatchPlan,
        schedule: Schedule | None,  # None: no learning-rate schedule (autobatch's trials: no __call__)
        grad_clip: float,
        window: Callable[[int], int | None] = lambda step: None,  # attention's window at a step
        average: WeightAverage | None = None,  # ema_decay: moved after every applied step
    ):
        self.views = views  # forward through views.train, clipping over views.plain's parameters
        self.optimizers = optimizers
        self.runtime = runtime
        self.batches = batches  # each step's layout
        self.schedule = schedule
        self.grad_clip = grad_clip
        self.window = window
        self.average = average
        self.scaler = runtime.precision.grad_scaler()
        self.prefetch = Prefetcher(pin=runtime.device.type == "cuda")

    def forward_backward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        sync: bool,
        window: torch.Tensor | None = None,
        accum: int = 1,
    ) -> torch.Tensor:
        """Loss of one of `accum` micro-batches, divided by `accum`; its gradients added to .grad.
        `window`: a window warmup's attention window, a 0-dim tensor (one compiled graph for all)."""
        # Gradients reduce across processes on the last micro-step only (DDP's no_sync, FSDP's
        # set_requires_gradient_sync on the others): see ModelViews.gradient_sync.
        with self.views.gradient_sync(sync):
            with self.runtime.precision.autocast():
                _, loss = self.views.train(x, y) if window is None else self.views.train(x, y, window=window)
            loss = loss / accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        return loss.detach()

    def __call__(self, step: int, data) -> StepResult:
        """One optimizer step. Host-device syncs: none inside the micro-steps (batches arrive pinned,
        the loss stays on the device), then one per step, reading loss and gradient norm together to
        decide whether to skip a non-finite update (fp16's GradScaler.step adds its own)."""
        device = self.runtime.device
        assert self.schedule is not None, "a TrainStep without a schedule takes no whole steps"
        self.optimizers.set_lr_multiplier(self.schedule.multiplier(step))
        loss_sum = torch.zeros((), device=device)
        size, layout = self.window(step), self.batches.at(step)
        window = None if size is None else window_tensor(size, device)
        accum = layout.grad_accum
        for micro in range(accum):
            x, y = self.prefetch.get(data, step, micro, layout)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss_sum += self.forward_backward(x, y, micro == accum - 1, window, accum)
        grad_norm = self.clip_gradients()
        loss, norm = torch.stack([loss_sum, grad_norm.to(loss_sum.dtype)]).tolist()  # the one sync
        applied = math.isfinite(norm)  # identical on every rank: gradients are all-reduced
        self.update(applied)
        if self.average is not None and applied:
            self.average.update(self.views.plain, step + 1)
        return StepResult(loss, norm, applied)

    def clip_gradients(self) -> torch.Tensor:
        """Unscale (fp16), clip the global norm; the norm before clipping, on the device."""
        if self.scaler:
            self.optimizers.unscale_(self.scaler)
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.views.plain.parameters(), max_norm)
        # Under FSDP the norm of sharded gradients is a replicated DTensor, the same on every rank.
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def update(self, applied: bool) -> None:
        """Step the optimizers (unless the step is skipped), update the loss scale, clear gradients."""
        if applied:
            self.optimizers.step(self.scaler)
        if self.scaler:
            self.scaler.update()
        self.optimizers.zero_grad()
