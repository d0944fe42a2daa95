"""Muon's step on GPT-2 small's hidden matrices: one batched Newton-Schulz per shape vs a loop per matrix.

Usage:
    python benchmarks/bench_muon.py                 # 12 layers x 768 wide, on CUDA if present, else CPU
    python benchmarks/bench_muon.py --layers 2 --rounds 1

The per-matrix step is the loop Muon ran before batching, written out here as the reference (the
same math; tests/test_muon.py checks the two agree). Each variant is timed round-robin, median of
rounds; the parameters are reset between variants, so both time the same update.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from baseforge.train.muon import Muon, orthogonalize


def gpt2_matrices(layers: int, width: int, device) -> list[torch.nn.Parameter]:
    """attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj weights (nn.Linear's (out, in) layout) per layer."""
    shapes = [(3 * width, width), (width, width), (4 * width, width), (width, 4 * width)]
    g = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(*s, generator=g).to(device)) for _ in range(layers) for s in shapes
    ]


@torch.no_grad()
def per_matrix_step(opt: Muon) -> None:
    """The pre-batching step: one Newton-Schulz (and a dozen small kernels) per matrix."""
    for group in opt.param_groups:
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p in group["params"]:
            buf = opt.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            buf.lerp_(p.grad, 1 - beta)
            update = orthogonalize(p.grad.lerp(buf, beta), group["ns_steps"]).to(p.dtype)
            p.mul_(1 - lr * wd)
            p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    params = gpt2_matrices(args.layers, args.width, device)
    start = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = Muon(params, lr=0.02, weight_decay=0.01)
    variants = {"per-matrix loop": lambda: per_matrix_step(opt), "batched (Muon.step)": opt.step}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for name, step in variants.items():
            with torch.no_grad():
                for p, s in zip(params, start):
                    p.copy_(s)
            opt.state.clear()
            sync(device)
            t = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t)
    shape = f"{args.layers} layers x {args.width} wide"
    print(
        f"{len(params)} matrices ({shape}), {device}, torch {torch.__version__}"
        f", {torch.get_num_threads()} threads"
    )
    base = statistics.median(times["per-matrix loop"][1:])
    for name, ts in times.items():
        med = statistics.median(ts[1:])
        print(f"| {name} | {1000 * med:.1f} ms | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
