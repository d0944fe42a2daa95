"""What a data mixture does to a model: the same model and token budget trained on source A, on source B,
and on a 50/50 mixture of the two, each scored on both sources' held-out tokens.

Usage:
    python benchmarks/bench_data.py                            # the shared corpora, 3 seeds
    python benchmarks/bench_data.py --a data/web --b data/code  # any two data dirs of one tokenizer
    python benchmarks/bench_data.py --seeds 1 --steps 40       # a quick look

By default A is Tiny Shakespeare (cut into 1,500-character documents) and B the C4 web-text sample
(../shared/data/corpora), both prepared with GPT-2's tokenizer (a mixture needs one tokenizer). Every
run is the same model (4 layers, 128 wide, context 128), the same steps and batch, the same schedule;
after training each is scored with `baseforge eval` on the first --eval-tokens of each source's
validation split, so every run is compared on the same tokens. Writes
benchmarks/results/data-mixture.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, child_env  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = [
    "n_layer=4", "n_embd=128", "n_head=4", "context=128", "dropout=0", "micro_batch=16", "global_batch=16",
    "precision=fp32", "log_every=20", "eval_every=1000000", "eval_tokens=16384", "sample_tokens=0",
    "checkpoint_every=1000000", "lr=2e-3", "warmup_steps=10",
]  # fmt: skip


def baseforge(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "baseforge", *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return result


def shared_sources(tmp: Path) -> tuple[Path, Path]:
    """Tiny Shakespeare as JSON-lines documents and the C4 sample, both prepared with GPT-2's BPE."""
    text = (SHARED / "corpora" / "tinyshakespeare.txt").read_text()
    lines = tmp / "shakespeare.jsonl"
    lines.write_text(
        "".join(json.dumps({"text": text[i : i + 1500]}) + "\n" for i in range(0, len(text), 1500))
    )
    a, b = tmp / "shakespeare", tmp / "c4"
    baseforge("prepare", lines, "--out", a, "--tokenizer", "gpt2", "--min-val-tokens", "32768")
    baseforge(
        "prepare",
        SHARED / "corpora" / "c4-sample",
        "--out",
        b,
        "--tokenizer",
        "gpt2",
        "--min-val-tokens",
        "32768",
    )
    return a, b


def run_one(data: list[str], out: Path, seed: int, steps: int, sources: list[Path], eval_tokens: int) -> dict:
    """Train on `data` (--data values), then each source's held-out loss and the run's tokens/s."""
    flags = [arg for d in data for arg in ("--data", d)]
    sets = [arg for item in [*SETTINGS, f"seed={seed}", f"max_steps={steps}"] for arg in ("--set", item)]
    baseforge("train", *flags, "--out", out, *sets)
    scored = baseforge(
        "eval", out, *[a for s in sources for a in ("--data", s)], "--tokens", eval_tokens, "--json"
    )
    (row,) = json.loads(scored.stdout)
    summary = json.loads((out / "summary.json").read_text())
    names = [s.name for s in sources]
    return {"losses": {n: row[f"loss/{n}"] for n in names}, "tokens_per_s": summary["tokens_per_s"]}


def aggregate(runs: dict[str, list[dict]], names: list[str]) -> dict:
    """Per configuration: each source's mean loss and its spread over seeds, and tokens/s."""
    out = {}
    for config, rows in runs.items():
        out[config] = {
            n: (statistics.mean(r["losses"][n] for r in rows), _sd([r["losses"][n] for r in rows]))
            for n in names
        }
        out[config]["tokens_per_s"] = statistics.mean(r["tokens_per_s"] for r in rows)
    return out


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def write_results(runs: dict, names: list[str], command: str, steps: int) -> None:
    table = aggregate(runs, names)
    seeds = len(next(iter(runs.values())))
    lines = [
        "# A data mixture against its sources",
        "",
        f"Command: `{command}`",
        "",
        f"Same model (4 layers, 128 wide, context 128), {steps} steps of 16 x 128 tokens, "
        f"{seeds} seed(s) each;",
        "each run scored on the first held-out tokens of each source (`baseforge eval --data A --data B`).",
        "Mean loss ± standard deviation over seeds. tokens/s: each run's whole-run throughput",
        "(summary.json), beside whatever else the machine ran: indicative only (one model in every row).",
        "",
        "| trained on | " + " | ".join(f"loss on {n}" for n in names) + " | tokens/s |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for config, row in table.items():
        cells = " | ".join(f"{row[n][0]:.4f} ± {row[n][1]:.4f}" for n in names)
        lines.append(f"| {config} | {cells} | {row['tokens_per_s']:,.0f} |")
    mix, (a, b) = table["50/50"], names
    lines += [
        "",
        f"On {a}: the mixture {mix[a][0]:.4f}, between {a}-only {table[a][a][0]:.4f} and {b}-only "
        f"{table[b][a][0]:.4f}; on {b}: {mix[b][0]:.4f}, between {b}-only {table[b][b][0]:.4f} and "
        f"{a}-only {table[a][b][0]:.4f}. What the mixture costs on each source against its specialist: "
        f"{mix[a][0] - table[a][a][0]:+.4f} on {a}, {mix[b][0] - table[b][b][0]:+.4f} on {b}.",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data-mixture.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "data-mixture.json").write_text(
        json.dumps({"command": command, "runs": runs}, indent=2) + "\n"
    )
    chart(table, names)


def chart(table: dict, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    configs = list(table)
    for k, n in enumerate(names):
        xs = [i + 0.15 * (2 * k - 1) for i in range(len(configs))]
        ax.errorbar(xs, [table[c][n][0] for c in configs], yerr=[table[c][n][1] for c in configs], fmt="o",
                    capsize=4, label=f"loss on {n}")  # fmt: skip
    ax.set_xticks(range(len(configs)), [f"trained on {c}" for c in configs])
    ax.set_ylabel("held-out loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "data-mixture.png", dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", type=Path, help="a prepared data dir (default: Tiny Shakespeare)")
    p.add_argument("--b", type=Path, help="another, with the same tokenizer (default: the C4 sample)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-tokens", type=int, default=32768)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = (args.a, args.b) if args.a and args.b else shared_sources(Path(tmp))
        names = [a.name, b.name]
        configs = {a.name: [f"{a}:1"], b.name: [f"{b}:1"], "50/50": [f"{a}:0.5", f"{b}:0.5"]}
        runs: dict[str, list[dict]] = {c: [] for c in configs}
        for seed in range(args.seeds):
            for config, data in configs.items():
                out = Path(tmp) / "runs" / f"{config.replace('/', '-')}-{seed}"
                runs[config].append(run_one(data, out, seed, args.steps, [a, b], args.eval_tokens))
                print(config, seed, runs[config][-1], flush=True)
        write_results(runs, names, " ".join(["python benchmarks/bench_data.py", *sys.argv[1:]]), args.steps)


if __name__ == "__main__":
    main()
