"""Model FLOPs utilisation: achieved model FLOPs per second over the device's peak.

Peaks are dense (no sparsity) tensor-core numbers from the vendors' datasheets, for the
dtype in use, with FP32 accumulation (what autocast uses; GeForce cards run that at half the
FP16-accumulate rate that their headline numbers quote). Devices not in the table, CPUs
included, get a short measured matmul peak instead, labelled as measured.
"""

from __future__ import annotations

import time

import torch

# name substring (lower case) -> {precision: peak TFLOP/s}; first match wins, so specific names first.
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("b200", {"bf16": 2250, "fp16": 2250, "fp32": 1100}),  # fp32 column = TF32 tensor cores
    ("h200", {"bf16": 989, "fp16": 989, "fp32": 494}),
    ("h100 pcie", {"bf16": 756, "fp16": 756, "fp32": 378}),
    ("h100", {"bf16": 989, "fp16": 989, "fp32": 494}),
    ("a100", {"bf16": 312, "fp16": 312, "fp32": 156}),
    ("a10g", {"bf16": 70, "fp16": 70, "fp32": 35}),
    ("a10", {"bf16": 125, "fp16": 125, "fp32": 62.5}),
    ("l40s", {"bf16": 362, "fp16": 362, "fp32": 183}),
    ("l4", {"bf16": 121, "fp16": 121, "fp32": 60}),
    ("rtx 4090", {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),
    ("rtx 4080", {"bf16": 97.5, "fp16": 97.5, "fp32": 48.7}),
    ("rtx 3090", {"bf16": 71, "fp16": 71, "fp32": 35.6}),
    ("rtx 3080", {"bf16": 59.5, "fp16": 59.5, "fp32": 29.8}),
    ("rtx a6000", {"bf16": 154.8, "fp16": 154.8, "fp32": 77.4}),
    ("v100", {"fp16": 125, "fp32": 15.7}),
    ("t4", {"fp16": 65, "fp32": 8.1}),
]

_measured: dict[tuple, float] = {}


def table_peak(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s from the table, or None for an unknown device/dtype."""
    name = device_name.lower()
    for key, peaks in GPU_PEAKS:
        if key in name:
            tflops = peaks.get(precision)
            return tflops * 1e12 if tflops else None
    return None


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0
) -> float:
    """FLOP/s of a square matmul on this device, best of a short run (cached per process)."""
    key = (str(device), dtype, size)
    if key in _measured:
        return _measured[key]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):  # warm up the kernels
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - t))
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
