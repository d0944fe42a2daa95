"""Causal attention on CPU, forward + backward: PyTorch's fused SDPA kernel vs explicit matmuls + softmax.

Usage:
    python benchmarks/bench_attention.py            # the shapes below, fp32 and bf16

This is the measurement behind `model/gpt.py`'s choice of the explicit path for bf16 on CPU up to
EXPLICIT_ATTENTION_MAX_LEN positions. Each variant is timed round-robin (median of rounds), per layer.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from baseforge.model.gpt import explicit_causal_attention

SHAPES = [
    (16, 6, 128, 64),
    (8, 6, 256, 64),
    (4, 6, 512, 64),
    (2, 12, 1024, 64),
]  # batch, heads, length, head dim


def fused(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def time_ms(fn, q, k, v, grad, rounds: int = 7) -> float:
    def once():
        t = time.perf_counter()
        fn(q, k, v).backward(grad)
        return time.perf_counter() - t

    once()
    return 1e3 * statistics.median(once() for _ in range(rounds))


def main() -> None:
    print(f"{'shape (B, H, T, D)':<22}{'dtype':<10}{'fused SDPA':>12}{'explicit':>10}{'explicit/fused':>16}")
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
            grad = torch.randn(shape, dtype=dtype)
            a, b = time_ms(fused, q, k, v, grad), time_ms(explicit_causal_attention, q, k, v, grad)
            print(
                f"{str(shape):<22}{str(dtype).split('.')[1]:<10}{a:>10.1f}ms{b:>8.1f}ms{b / a:>15.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
