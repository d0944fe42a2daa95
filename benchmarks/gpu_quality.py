"""The seed recipe (gpt2-small-seed) against gpt2-small-modern (every round-2 key at context 1024:
documents apart through FlexAttention on CUDA, sliding windows, value embeddings, U-net skips, NorMuon,
best-fit packing, a batch schedule) and gpt2-speedrun (the same keys at context 2048) on one GPU:
same data, same tokens each.

Usage (normally as `python benchmarks/gpu_suite.py --part quality`):
    python benchmarks/gpu_quality.py --data DATA_DIR --work DIR [--tokens 12e6] [--quick]

Each recipe trains through the CLI (`baseforge train --preset P`, bf16, eager with FlexAttention
compiled, a fixed micro-batch per preset) on the same number of tokens (`max_tokens`: a batch
schedule's small early steps count as they are), each whole schedule (warmup, decay) inside it; the
runs differ in wall-clock. Eager and fixed micro-batches so that three recipes fit one call of the
suite: a whole-model compile per recipe and a micro-batch search would spend its minutes before
training (the flex-smoke and throughput parts measure compiled speed). A preset's batch schedule, if
it has one, is scaled to the budget (the same fractions of it as of the preset's max_tokens). From the runs'
metrics.jsonl: validation loss at equal training time and at equal tokens (linear interpolation
between evaluations), and tokens/s of each. `--quick` runs the same path on CPU with a tiny shape.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import common

ROOT = common.ROOT
RECIPES = ["gpt2-small-seed", "gpt2-small-modern", "gpt2-speedrun"]
GPU_KEYS = ["compile=false", "precision=bf16", "device=cuda", "sample_tokens=0"]
# A fixed micro-batch per preset, dividing each of its batch-schedule stages: about half of what
# `baseforge plan --gpu h100-sxm` fits (193, 119 and 59), since the plan is unchecked on a GPU yet.
MICRO = {"gpt2-small-seed": 32, "gpt2-small-modern": 16, "gpt2-speedrun": 32}
# The race's tokens: about 30 s of the seed recipe eager on an H100 (an estimate until measured): a
# comparison that fits the call, not a converged one.
TOKENS = 12_000_000
QUICK_KEYS = ["device=cpu", "precision=fp32", "compile=false", "n_layer=2", "n_embd=64", "n_head=2"]
QUICK_KEYS += ["context=64", "micro_batch=4", "global_batch=4", "sample_tokens=0"]
# The quick shape has 2 layers (3 value tables need 6) and 4 sequences a step.
QUICK_EXTRA = {
    "gpt2-small-modern": ["value_embeds=1", "batch_schedule=2@256"],
    "gpt2-speedrun": ["value_embeds=1", "batch_schedule=2@256"],
}


def train(data: Path, run: Path, preset: str, keys: list[str], runner) -> list[dict]:
    """`baseforge train` in a child through `runner(cmd)` (the suite's, with its env and deadline)."""
    from baseforge.train.metrics import read_metrics

    cmd = [sys.executable, "-m", "baseforge", "train", "--data", data, "--out", run, "--preset", preset]
    for key in keys:
        cmd += ["--set", key]
    runner(cmd)
    return read_metrics(run)


def plain_runner(cmd: list) -> str:
    """For running this file alone: the child gets common.child_env(), as under the suite."""
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=common.child_env())
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[4:]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout + result.stderr


def at(rows: list, key: str, x: float) -> float | None:
    """Validation loss at `key` (elapsed_s or tokens) = x, interpolated between evaluations."""
    pts = [
        (getattr(r, key), r.val_loss) for r in rows if r.val_loss is not None and getattr(r, key) is not None
    ]
    if not pts or x > pts[-1][0]:
        return None
    xs, ys = zip(*pts)
    return float(np.interp(x, xs, ys))


def compare(runs: dict[str, list[dict]]) -> dict:
    trained = {name: [r for r in rows if r.loss is not None] for name, rows in runs.items()}
    time = min(rows[-1].elapsed_s for rows in trained.values())
    tokens = min(rows[-1].tokens for rows in trained.values())
    out = {"equal_time_s": time, "equal_tokens": tokens, "recipes": {}}
    for name, rows in trained.items():
        evals = [r for r in rows if r.val_loss is not None]
        out["recipes"][name] = {
            "val_loss_at_equal_time": at(rows, "elapsed_s", time),
            "val_loss_at_equal_tokens": at(rows, "tokens", tokens),
            "final_val_loss": evals[-1].val_loss if evals else None,
            "tokens": rows[-1].tokens,
            "train_seconds": rows[-1].elapsed_s,
            "tokens_per_s": rows[-1].tokens / max(rows[-1].elapsed_s, 1e-9),
            "curve": [(r.elapsed_s, r.tokens, r.val_loss) for r in evals],
        }
    return out


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in result["recipes"].items():
        secs, toks, losses = zip(*r["curve"]) if r["curve"] else ((), (), ())
        axes[0].plot(secs, losses, marker="o", label=name)
        axes[1].plot([t / 1e6 for t in toks], losses, marker="o", label=name)
    axes[0].set_xlabel("training seconds")
    axes[1].set_xlabel("tokens (M)")
    for ax in axes:
        ax.set_ylabel("validation loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def steps_for(preset: str, keys: list[str], tokens: int) -> int:
    """The steps `preset` takes to train on `tokens` (its batch schedule's small steps counted)."""
    from baseforge.data.batch_plan import BatchPlan
    from baseforge.overrides import resolve_config

    config = resolve_config(preset, None, keys)
    return BatchPlan.from_config(config.train, config.model.context).steps_for(tokens)


def scaled_schedule(preset: str, tokens: int) -> list[str]:
    """A preset's batch schedule at the same fractions of `tokens` as of its own max_tokens."""
    from baseforge.data.batch_plan import parse_batch_schedule
    from baseforge.overrides import resolve_config

    cfg = resolve_config(preset).train
    if not cfg.batch_schedule or not cfg.max_tokens:
        return []
    stages = [f"{seqs}@{max(1, round(until * tokens / cfg.max_tokens))}" for seqs, until in
              parse_batch_schedule(cfg.batch_schedule)]  # fmt: skip
    return [f"batch_schedule={','.join(stages)}"]


def run_quality(data: Path, work: Path, tokens: int, quick: bool, runner=plain_runner) -> dict:
    """The three recipes on the same `tokens` each, in this order (the last is cut first)."""
    if quick:
        keys = [*QUICK_KEYS, "max_steps=4", "eval_every=2", "eval_tokens=512", "log_every=1"]
        return compare({p: train(data, work / p, p, keys + QUICK_EXTRA.get(p, []), runner) for p in RECIPES})
    runs = {}
    for preset in RECIPES:
        recipe = [*GPU_KEYS, f"micro_batch={MICRO[preset]}", *scaled_schedule(preset, tokens)]
        recipe += ["max_steps=0", f"max_tokens={tokens}"]
        steps = steps_for(preset, recipe, tokens)
        keys = [*recipe, f"eval_every={max(1, steps // 6)}", "log_every=10"]
        runs[preset] = train(
            data, work / preset, preset, keys + ["eval_tokens=262144", "checkpoint_every=1000000"], runner
        )
    return compare(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tokens", type=float, default=TOKENS, help="tokens each recipe trains on")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    result = run_quality(args.data, args.work, int(args.tokens), args.quick)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
