"""Where a run computes: its process in the job, its device and precision, the device's peak, and compile.

`Runtime.create` is the one place that touches the hardware before training (device selection,
TF32 switches, the CPU allocator setting, the peak measurement for MFU); nothing happens when the
trainer is merely constructed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, cast

import torch

from baseforge.config import TrainConfig
from baseforge.model.attention import window_tensor
from baseforge.train.distributed import DistInfo, device_for
from baseforge.train.host import keep_freed_memory
from baseforge.train.mfu import device_peak
from baseforge.train.precision import Precision, resolve_device, setup_precision


@dataclass
class Runtime:
    dist: DistInfo
    device: torch.device
    precision: Precision
    peak: float  # FLOP/s, for MFU
    peak_source: str  # "table: NAME" or "measured"
    compile: bool = False  # torch.compile the model: the config's `compile`, resolved for this device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @classmethod
    def create(cls, cfg: TrainConfig, dist: DistInfo) -> Runtime:
        device = device_for(dist, resolve_device(cfg.device))
        precision = setup_precision(cfg.precision, device)
        if device.type == "cpu":
            keep_freed_memory()
        peak, source = device_peak(device, precision.name)
        return cls(dist, device, precision, peak, source, compile=resolve_compile(cfg.compile, device))


def resolve_compile(setting: bool | str, device: torch.device) -> bool:
    """`compile = auto`: on for CUDA (Inductor's fused kernels; eager is the fallback where it fails),
    off elsewhere: on this project's CPUs a compiled step is no faster (1.01x fp32, 1.02x bf16 in
    benchmarks/results/train-throughput.md, which a compile of 5-17 s does not repay in a short run) and
    a masked rule compiled on the CPU loses the banded kernel (its band is read from the data)."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA generators that work on `device` may advance (for torch.random.fork_rng)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def compile_for_training(
    model: torch.nn.Module, warm_up: Callable[[torch.nn.Module], None], log
) -> torch.nn.Module:
    """`torch.compile(model)`, warmed up by `warm_up(compiled)`; the eager model where compiling fails.

    Static shapes (`dynamic=False`): the run's shapes are few and known, so `warm_up` compiles each of
    them (a training step at the run's micro-batch, evaluation's batch shapes) while a failure can
    still fall back to eager, and nothing recompiles later; a dynamic-shape graph would be slower.
    The warm-up's random draws (dropout) are undone: the run's generators start where they would have.
    """
    try:
        # A module compiles to a module (an OptimizedModule); torch's stubs type any callable's result.
        compiled = cast(torch.nn.Module, torch.compile(model, dynamic=False))
        devices = rng_devices(next(model.parameters()).device)
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            warm_up(compiled)
        model.zero_grad(set_to_none=True)
        return compiled
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eager
        model.zero_grad(set_to_none=True)
        model.train()
        first_line = str(exc).splitlines()[0][:120] if str(exc) else ""
        log(f"torch.compile unavailable here ({type(exc).__name__}: {first_line}); training eager")
        return model


def warm_up_shapes(
    compiled: torch.nn.Module, *, data, batches, runtime: Runtime, eval_tokens: int, window: int | None
) -> None:
    """Run every graph a run uses through `compiled` now, where a failure still falls back to eager:
    a training step at each micro-batch size of the run's BatchPlan (a batch schedule's stages may
    use smaller ones), each also with a window warmup's window (`window`: the first step's, a tensor
    like every step's) if the run has one, and evaluation (no_grad, eval mode) at each of its batch
    shapes (the last batch of the validation slice may be partial)."""
    dist, layout = runtime.dist, batches.layout
    windows: list[dict] = [{}]
    if window is not None:
        windows.append({"window": window_tensor(window, runtime.device)})
    for micro in sorted({stage.micro_batch for stage in batches.layouts}):
        x, y = data.micro_batch(0, 0, replace(layout, micro_batch=micro, from_step=0, first_window=0))
        for kwargs in windows:
            with runtime.precision.autocast():
                compiled(x.to(runtime.device), y.to(runtime.device), **kwargs)[1].backward()
    val = data.val_batches(eval_tokens, layout.micro_batch, dist.rank, dist.world)
    shapes = {tuple(x.shape): (x, y) for x, y in val}
    compiled.eval()
    with torch.no_grad(), runtime.precision.autocast():
        for x, y in shapes.values():
            compiled(x.to(runtime.device), y.to(runtime.device))
    compiled.train()
