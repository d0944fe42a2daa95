"""Training tokens/s of two versions of baseforge, measured alternately in the same run.

For a refactor: the old and the new source tree each train the reference config of
`bench_train.py` (GPT-2 vocab, 6 layers x 384, context 256, micro-batch 8, bf16 where the CPU has
it) in fresh processes, round-robin, so machine noise hits both alike. Each process does warm-up
steps, then times `--steps` real optimizer steps; the median step time of each round is kept.

    git worktree add --detach /tmp/before <old commit>
    python benchmarks/compare_throughput.py --before /tmp/before/src --after src --rounds 4 \
        --out benchmarks/results/refactor-throughput.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import REFERENCE  # noqa: E402
from common import synthetic_data_dir  # noqa: E402

# Runs under either version: old trainers build in __init__ and count `step`; new ones build in
# setup() and count `state.step`; `resolve_config` lives in config.py or overrides.py.
CHILD = """
import json, statistics, sys, time
from pathlib import Path
try:
    from baseforge.overrides import resolve_config
except ImportError:
    from baseforge.config import resolve_config
from baseforge.train.loop import Trainer
data, run, steps, warmup = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
trainer = Trainer(resolve_config("cpu-small", None, json.loads(sys.argv[5])), data, run, log=lambda *a: None)
getattr(trainer, "setup", lambda: None)()
times = []
for i in range(warmup + steps):
    t0 = time.perf_counter()
    trainer.train_step()
    if i >= warmup:
        times.append(time.perf_counter() - t0)
print(json.dumps({"step_s": statistics.median(times), "tokens_per_step": trainer.tokens_per_step}))
"""


def measure(src: Path, data: Path, tmp: Path, name: str, args) -> float:
    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    overrides = json.dumps([*REFERENCE, "precision=bf16" if args.bf16 else "precision=fp32"])
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        str(data),
        str(tmp / name),
        str(args.steps),
        str(args.warmup),
        overrides,
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["tokens_per_step"] / result["step_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fp32", dest="bf16", action="store_false", help="fp32 instead of bf16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rates = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data_dir(Path(tmp) / "data", 2_000_000)
        for r in range(args.rounds):
            for name, src in (("before", args.before), ("after", args.after)):
                rates[name].append(measure(src, data, Path(tmp), f"{name}{r}", args))
            print(
                f"round {r + 1}: before {rates['before'][-1]:.0f}, after {rates['after'][-1]:.0f} tok/s",
                flush=True,
            )
    before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
    spread = {k: (min(v), max(v)) for k, v in rates.items()}
    text = "\n".join([
        "# Training throughput before and after a refactor, same run",
        "",
        "Command: `python benchmarks/compare_throughput.py --before OLD/src --after src "
        f"--rounds {args.rounds}`"
        f" ({'bf16' if args.bf16 else 'fp32'}; the bench_train.py reference config; median of each round's"
        f" median step over {args.steps} steps after {args.warmup} warm-up steps).",
        "",
        "| version | tokens/s (median of rounds) | range over rounds |",
        "|---|---:|---:|",
        f"| before | {before:.0f} | {spread['before'][0]:.0f}-{spread['before'][1]:.0f} |",
        f"| after | {after:.0f} | {spread['after'][0]:.0f}-{spread['after'][1]:.0f} |",
        "",
        f"after / before = **{after / before:.3f}**",
        "",
    ])  # fmt: skip
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
