"""The train stream's order: the keyed Feistel shuffle (data/shuffle.py) against the affine order it
replaced (k -> a k + c mod n), on the round-2 proxy with the modern recipe, several seeds each.

Usage:
    python benchmarks/bench_shuffle.py --seeds 3          # writes benchmarks/results/shuffle.{md,json}
    python benchmarks/bench_shuffle.py --feistel-from recipes-round2   # the Feistel runs: the ablation's

Everything but the order is the ablation's (benchmarks/ablation.py): the same data, model, recipe and
budget; the affine order is put back for its runs only, as the loader computed it before.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def affine_indices(self, start: int, count: int) -> np.ndarray:
    """The order before data/shuffle.py: epoch e reads window (a k + c) mod n at position k."""
    n = self.windows.n
    out = []
    for j in range(start, start + count):
        rng = np.random.default_rng([self.seed, j // n])
        a = int(rng.integers(1, max(n, 2)))
        while math.gcd(a, n) != 1:
            a = a % n + 1 if n > 1 else 1
        out.append((a * (j % n) + int(rng.integers(0, n))) % n)
    return np.asarray(out, dtype=np.int64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=1_228_800)
    p.add_argument(
        "--feistel-from", default=None, help="take the Feistel runs from this ablation results stem"
    )
    args = p.parse_args()
    from baseforge.data import loader

    saved = RESULTS / "shuffle.json"
    runs: dict[str, list] = json.loads(saved.read_text()) if saved.is_file() else {}
    if args.feistel_from:
        runs["feistel"] = json.loads((RESULTS / f"{args.feistel_from}.json").read_text())["modern"]
    feistel = loader.TrainStream._window_indices
    with tempfile.TemporaryDirectory() as tmp:
        data = ablation.short_documents(Path(tmp))
        for order in ("affine", "feistel"):
            loader.TrainStream._window_indices = affine_indices if order == "affine" else feistel
            for seed in range(len(runs.get(order, [])), args.seeds):
                runs.setdefault(order, []).append(
                    ablation.run(ablation.MODERN, seed, data, Path(tmp), args.tokens, 25)
                )
                saved.write_text(json.dumps(runs))
                print(f"{order} seed {seed}: final val {runs[order][-1]['curve'][-1][2]:.4f}", flush=True)
    report(runs, args)


def report(runs: dict, args) -> None:
    finals = {order: [r["curve"][-1][2] for r in rs] for order, rs in runs.items()}
    lines = [
        "# The train stream's order: Feistel shuffle vs the affine order it replaced",
        "",
        f"Command: `python benchmarks/bench_shuffle.py --seeds {args.seeds}` (the round-2 proxy of "
        "benchmarks/ablation.py: modern recipe, 4 layers x 192, context 512, "
        f"{args.tokens:,} tokens, 1.3 passes over the train split).",
        "",
        "| order | final validation loss per seed | mean ± sd |",
        "|---|---|---:|",
    ]
    for order, values in finals.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = ", ".join(f"{v:.4f}" for v in values)
        lines.append(f"| {order} | {per_seed} | {statistics.mean(values):.4f} ± {sd:.4f} |")
    if len(finals.get("affine", [])) > 1 and len(finals.get("feistel", [])) > 1:
        p = ablation.welch_p(finals["affine"], finals["feistel"])
        lines += ["", f"Welch's t-test, affine vs Feistel: p = {p:.3f}"]
    (RESULTS / "shuffle.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
