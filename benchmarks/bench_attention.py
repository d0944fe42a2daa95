"""Causal attention on CPU, forward + backward: PyTorch's fused SDPA kernel vs explicit matmuls + softmax.

Usage:
    python benchmarks/bench_attention.py            # the shapes below, fp32 and bf16
    python benchmarks/bench_attention.py --masked   # attention within documents: the CPU kernels

This is the measurement behind `model/attention.py`'s choice of the explicit path for bf16 on CPU up
to EXPLICIT_ATTENTION_MAX_LEN positions. Each variant is timed (median of rounds), per layer.

`--masked` times one document-masked layer (documents of 33 and of 100 tokens packed into each window)
on the CPU: SDPA with the boolean mask, the banded kernel, and unmasked causal attention for scale.
(FlexAttention has no backward on the CPU in torch 2.13, so it is CUDA's kernel only.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from baseforge.model.attention import (  # noqa: E402
    Visibility,
    attend,
    band_for,
    banded_attention,
    documents,
    explicit_attention,
)

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


def explicit_causal_attention(q, k, v):
    return explicit_attention(q, k, v)


def masked(shapes, doc_lengths=(33, 100)) -> None:
    """One document-masked layer, forward + backward, three ways on the CPU: the boolean mask through
    SDPA, the banded kernel (when the documents fit its band), and, for scale, unmasked causal
    attention as the model runs it (explicit matmuls in bf16 up to 512 positions, else SDPA)."""
    print(f"{'shape (B, H, T, D)':<22}{'docs':>5} {'dtype':<9}{'sdpa+mask':>11}{'banded':>10}{'causal':>10}")
    for shape in shapes:
        B, H, T, D = shape
        for length in doc_lengths:
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(1, 1000, (B, T), generator=g)
            ids[:, ::length] = 0  # a document start every `length` tokens
            doc = documents(ids, 0)
            allowed = Visibility(doc=doc).allowed(T, "cpu")
            band = band_for(doc, 0, T)
            for dtype in (torch.float32, torch.bfloat16):
                q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
                grad = torch.randn(shape, dtype=dtype)
                sdpa = time_ms(
                    lambda q, k, v, m=allowed: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                    q, k, v, grad,
                )  # fmt: skip
                banded = (
                    time_ms(lambda q, k, v, d=doc, b=band: banded_attention(q, k, v, d, 0, b), q, k, v, grad)
                    if band
                    else float("nan")
                )
                causal = time_ms(lambda q, k, v: attend(q, k, v, Visibility(), 0.0), q, k, v, grad)
                print(
                    f"{str(shape):<22}{length:>5} {str(dtype).split('.')[1]:<9}{sdpa:>9.1f}ms"
                    f"{banded:>8.1f}ms{causal:>8.1f}ms",
                    flush=True,
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masked", action="store_true", help="document-masked attention: the CPU kernels")
    if p.parse_args().masked:
        masked([(8, 4, 512, 48), (4, 6, 512, 64), (2, 12, 1024, 64)])
        return
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
