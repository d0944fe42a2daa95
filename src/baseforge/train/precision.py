"""Mixed precision: which dtype to compute in, the autocast context, and the fp16 grad scaler.

`auto` picks bf16 where the device runs it natively (CUDA compute capability >= 8.0, not the
emulated bf16 that `torch.cuda.is_bf16_supported()` also counts on V100/T4, and CPUs
with bf16 instructions such as AVX512-BF16 or AMX, where oneDNN's bf16 matmuls are several
times faster than fp32), fp16 with a GradScaler on older GPUs, and fp32 elsewhere. Weights and
optimizer state stay fp32; only the forward/backward matmuls run in low precision.

TF32 (fp32 matmuls on tensor cores, 10-bit mantissa) is switched on for bf16/fp16 runs, where the
matmuls that remain in fp32 are few, and off for `precision=fp32`, which then means fp32. The switch
is process-wide, so it is set both ways on every run, not only turned on.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch

from baseforge.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"config: device = {name!r} is not a device (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("config: device = cuda but no CUDA GPU is available; use device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"config: device = {name} but this machine has {torch.cuda.device_count()} CUDA GPU(s); "
            "use cuda:0 or another index"
        )
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps and mps.is_available()):
        raise UserError("config: device = mps but Apple's MPS backend is not available here; use device=cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"config: device = {name!r} is not supported (use auto, cpu, cuda, cuda:N or mps)")
    return device


def cpu_has_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return native or "AMX" in capability or "BF16" in capability


def gpu_has_bf16(device: torch.device) -> bool:
    """Native bf16 (compute capability >= 8.0); V100 and T4 only emulate it, far slower than fp16."""
    if "including_emulation" not in inspect.signature(torch.cuda.is_bf16_supported).parameters:
        return torch.cuda.get_device_capability(device) >= (8, 0)
    # is_bf16_supported asks about the current device: make it this one
    with torch.cuda.device(device) if device.index is not None else contextlib.nullcontext():
        return torch.cuda.is_bf16_supported(including_emulation=False)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls in hardware (MPS: assumed, as before this check existed)."""
    if device.type == "cuda":
        return gpu_has_bf16(device)
    return cpu_has_bf16() if device.type == "cpu" else True


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise UserError("config: precision = fp16 is not supported on CPU; use bf16 or fp32")
        if name == "bf16" and device.type == "cuda" and not gpu_has_bf16(device):
            raise UserError("config: this GPU has no bf16; use precision = fp16 (with loss scaling) or fp32")
        return name
    if device.type == "cuda":
        return "bf16" if native_bf16(device) else "fp16"
    if device.type == "cpu":
        return "bf16" if native_bf16(device) else "fp32"
    return "fp32"


@dataclass
class Precision:
    name: str  # bf16 | fp16 | fp32
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self):
        """A GradScaler for fp16 (whose small range underflows gradients), else None."""
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls and convolutions, on or off (process-wide), through the `allow_tf32`
    switches only. Why not torch's newer `fp32_precision` switches: once those are set, the legacy
    getters that torch.compile itself calls (`torch.get_float32_matmul_precision`, dynamo's
    `_get_cublas_allow_tf32`) raise "mix of the legacy and new APIs" (seen on torch 2.13), while the
    legacy setters keep both views consistent. One API, never mixed."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def setup_precision(name: str, device: torch.device) -> Precision:
    precision = Precision(resolve_precision(name, device), device)
    if device.type == "cuda":
        # TF32 for the fp32 matmuls that remain in a mixed-precision run (the write-up's "AMP + TF32").
        set_tf32(precision.name != "fp32")
    return precision
