"""Training throughput: tokens/s and MFU of real training steps, fp32 vs bf16, compile off vs on.

Usage:
    python benchmarks/bench_train.py                      # the reference config, all four variants
    python benchmarks/bench_train.py --variants bf16,fp32 --rounds 5 --steps 3
    python benchmarks/bench_train.py --memory             # host memory vs data size (memmapped shards)

The reference config (issue 3): GPT-2 tokenizer (vocab 50257), 6 layers, width 384, 6 heads,
context 256, micro-batch 8, AdamW. Each variant is a full `Trainer` doing real optimizer steps
(data loading, autocast, fused loss, clipping, AdamW). Variants are timed round-robin, a few steps
each per round, and the median per-step time is reported, so that load from other processes on
a shared machine hits all variants alike. MFU is against the measured matmul peak of the dtype.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import synthetic_data_dir  # noqa: E402

REFERENCE = [
    "n_layer=6",
    "n_embd=384",
    "n_head=6",
    "context=256",
    "vocab_size=50257",
    "micro_batch=8",
    "global_batch=8",
    "dropout=0",
    "optimizer=adamw",
    "max_steps=100000",
    "log_every=100000",
    "eval_every=100000",
    "checkpoint_every=100000",
    "sample_tokens=0",
]
VARIANTS = {
    "fp32": ["precision=fp32"],
    "bf16": ["precision=bf16"],
    "fp32+compile": ["precision=fp32", "compile=true"],
    "bf16+compile": ["precision=bf16", "compile=true"],
}


def make_trainer(data: Path, run: Path, overrides: list[str]):
    from baseforge.config import resolve_config
    from baseforge.train.loop import Trainer

    trainer = Trainer(
        resolve_config("cpu-small", None, REFERENCE + overrides), data, run, log=lambda *a: None
    )
    trainer.setup()
    return trainer


def throughput(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data_dir(Path(tmp) / "data", 4_000_000)
        trainers = {}
        for name in args.variants:
            t0 = time.perf_counter()
            trainers[name] = make_trainer(data, Path(tmp) / name, VARIANTS[name])
            compiled = trainers[name].parts.views.train is not trainers[name].parts.views.plain
            print(
                f"{name}: set up in {time.perf_counter() - t0:.1f}s"
                + (
                    " (compiled)"
                    if "compile" in name and compiled
                    else " (compile fell back to eager)"
                    if "compile" in name
                    else ""
                ),
                flush=True,
            )
            for _ in range(args.warmup):
                trainers[name].train_step()
                trainers[name].state.step += 1
        times = {name: [] for name in trainers}
        for r in range(args.rounds):
            for name, trainer in trainers.items():
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    trainer.train_step()
                    times[name].append(time.perf_counter() - t0)
                    trainer.state.step += 1
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        rows = {}
        for name, trainer in trainers.items():
            per_step = statistics.median(times[name])
            tps = trainer.tokens_per_step / per_step
            rows[name] = {
                "tokens_per_s": tps,
                "mfu": trainer.parts.views.plain.flops_per_token() * tps / trainer.parts.runtime.peak,
                "peak_tflops": trainer.parts.runtime.peak / 1e12,
                "peak_source": trainer.parts.runtime.peak_source,
                "step_s_median": per_step,
                "params": trainer.parts.views.plain.num_params(),
                "compiled": trainer.parts.views.train is not trainer.parts.views.plain,
            }
        return rows


def memory(args) -> dict:
    """Peak RSS of a process that trains a few steps on data of 10M vs 100M tokens."""
    import subprocess

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tokens in (10_000_000, 100_000_000):
            data = synthetic_data_dir(Path(tmp) / f"d{tokens}", tokens)
            code = (
                f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r});"
                "from bench_train import make_trainer; from common import peak_rss_mb;"
                "from pathlib import Path;"
                f"t = make_trainer(Path({str(data)!r}), Path({tmp!r}) / 'run{tokens}', ['precision=bf16']);"
                "[t.train_step() for _ in range(3)]; print(peak_rss_mb())"
            )
            rss = float(
                subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, check=True
                ).stdout.split()[-1]
            )
            out[tokens] = rss
            print(
                f"{tokens / 1e6:.0f}M tokens of data ({tokens * 2 / 1e6:.0f} MB of shards): "
                f"peak RSS {rss:.0f} MB",
                flush=True,
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), type=lambda s: s.split(","))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--memory", action="store_true", help="measure host memory against data size instead")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.memory:
        result = memory(args)
    else:
        result = throughput(args)
        base = result.get("fp32", {}).get("tokens_per_s")
        print(f"\n{'variant':<14}{'tokens/s':>10}{'MFU':>8}{'peak TFLOP/s':>14}{'vs fp32':>9}")
        for name, r in result.items():
            ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
            print(
                f"{name:<14}{r['tokens_per_s']:>10.0f}{100 * r['mfu']:>7.1f}%{r['peak_tflops']:>10.3f} "
                f"({r['peak_source']}){ratio:>9}"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
