"""Model FLOPs utilisation: achieved model FLOPs per second over the device's peak.

Known GPUs get their datasheet peak from `baseforge.hardware` (exact names, dense tensor-core
figures). Other devices, CPUs included, get a measured matmul peak: the best of several short
timed matmuls at a few sizes (large enough to fill a big GPU), because one long measurement on a
busy machine comes out low and then the MFU reads above 100%. A measured peak can still be
under-measured, so `format_mfu` never shows an MFU above 100% as if it were real.
"""

from __future__ import annotations

import time

import torch

from baseforge.hardware import gpu_for_device_name

_measured: dict[tuple, float] = {}


def table_peak(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of a GPU named exactly as torch reports it, or None if unknown."""
    gpu = gpu_for_device_name(device_name)
    tflops = gpu.peak_tflops(precision) if gpu else None
    return tflops * 1e12 if tflops else None


MEASURE_BUDGET_S = 3.0


def _sizes(device: torch.device) -> tuple[int, ...]:
    # A CPU reaches its peak at 1024-2048; a big GPU needs 8192 to fill its tensor cores.
    return (1024, 2048) if device.type == "cpu" else (4096, 8192)


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] | None = None, repeats: int = 5
) -> float:
    """Best FLOP/s of `repeats` short timed square matmuls per size (cached per process), within about
    MEASURE_BUDGET_S: a CPU without native bf16 runs a 2048-square bf16 matmul for seconds, and rank 0
    measures before the process group forms, whose timeout the other ranks are waiting out."""
    sizes = sizes or _sizes(device)
    key = (str(device), dtype, sizes, repeats)
    if key in _measured:
        return _measured[key]
    best, start = 0.0, time.monotonic()
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm up the kernel
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * size**3 / max(time.perf_counter() - t, 1e-9))
            if time.monotonic() - start > MEASURE_BUDGET_S:
                _measured[key] = best
                return best
    _measured[key] = best
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_peak(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained: 'table: NAME' or 'measured')."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = table_peak(name, precision)
        if peak:
            return peak, f"table: {name}"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return measure_matmul_peak(device, dtype), "measured"


def format_peak(peak: float, source: str) -> str:
    """'989.5 TFLOP/s (table: NAME)', or for a measured CPU peak its GFLOP/s and why it may be off."""
    value = f"{peak / 1e12:.1f} TFLOP/s" if peak >= 1e12 else f"{peak / 1e9:.1f} GFLOP/s"
    if source == "measured":  # a busy machine times the matmul low, and every MFU after it reads high
        source = "measured by a matmul at start: low, and MFU high, if the machine was busy"
    return f"{value} ({source})"


def format_mfu(mfu: float | None) -> str | None:
    """'41.3%' for a plausible MFU; '>100% (peak under-measured)' above 100%; None when unknown."""
    if mfu is None or mfu != mfu or mfu < 0:
        return None
    if mfu > 1.0:
        return ">100% (peak under-measured)"
    return f"{100 * mfu:.1f}%"
