"""Does padding the output head's vocabulary (not the tokenizer) from 50257 to 50304 speed it up?

Usage:
    python benchmarks/bench_head_pad.py                      # on CUDA if present, else CPU
    python benchmarks/bench_head_pad.py --tokens 2048 --rounds 5 --dtype bf16

Times the fused head + cross-entropy (model/loss.py), forward + backward, for GPT-2 small's width
(768) at V = 50257 (GPT-2's tokenizer) and at padded sizes (50304 = 393 x 128, also a multiple of
64). Targets stay below 50257, as with a padded head, where the extra rows are never a target.
Variants are timed round-robin (median of rounds) on the same hidden states.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from baseforge.model.loss import linear_cross_entropy

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_step(h, w, targets, dtype) -> None:
    with torch.autocast(h.device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = linear_cross_entropy(h, w, targets)
    loss.backward()


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=16 * 1024 if cuda else 1024)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, nargs="+", default=[50257, 50304])
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(args.tokens, args.width, generator=g).to(device).requires_grad_()
    targets = torch.randint(0, 50257, (args.tokens,), generator=g).to(device)
    weights = {
        v: (0.02 * torch.randn(v, args.width, generator=g)).to(device).requires_grad_() for v in args.vocab
    }
    times: dict[int, list[float]] = {v: [] for v in args.vocab}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for v, w in weights.items():
            h.grad = w.grad = None
            sync(device)
            t = time.perf_counter()
            one_step(h, w, targets, dtype)
            sync(device)
            times[v].append(time.perf_counter() - t)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {args.dtype}, {args.tokens} tokens x {args.width}")
    base = statistics.median(times[args.vocab[0]][1:])
    print("| vocab | forward + backward | vs 50257 | TFLOP/s |")
    print("|---:|---:|---:|---:|")
    for v, ts in times.items():
        med = statistics.median(ts[1:])
        tflops = 6 * args.tokens * args.width * v / med / 1e12
        print(f"| {v} | {1000 * med:.1f} ms | {base / med:.3f}x | {tflops:.2f} |")


if __name__ == "__main__":
    main()
