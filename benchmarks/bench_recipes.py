"""Recipe comparison on a CPU-sized model: the seed recipe vs the modern one vs each intervention alone.

Usage:
    python benchmarks/bench_recipes.py                       # seed and modern x 3 seeds, interventions x 1
    python benchmarks/bench_recipes.py --recipes seed,modern --seeds 3 --tokens 400000
    python benchmarks/bench_recipes.py --ablation --seeds 3   # round 2, context 512 (benchmarks/ablation.py)

Same data (the shared corpora: Tiny Shakespeare + NLTK webtext + the C4 sample, one byte-level BPE of
2048 tokens, 5% of documents held out), same model size (4 layers, 192 wide, 4 heads, context 128),
same token budget and global batch for every recipe. The seed recipe is the write-up's: learned
positions, LayerNorm, GELU, untied head, AdamW with warmup + cosine (dropout 0 here for every
recipe: the runs are far shorter than an epoch of overfitting). Validation loss is measured on the
same fixed slice of the held-out split every `--eval-every` steps. Writes
benchmarks/results/recipes.{md,png,json}.
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
from common import SHARED  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = ["n_layer=4", "n_embd=192", "n_head=4", "context=128", "vocab_size=none", "dropout=0"]
COMMON = [
    "micro_batch=16",
    "global_batch=16",
    "log_every=25",
    "sample_tokens=0",
    "checkpoint_every=1000000",
    "precision=bf16",
    "eval_tokens=65536",
    "grad_clip=1.0",
    "weight_decay=0.1",
]
SEED = [
    "pos_emb=learned",
    "norm=layernorm",
    "mlp_act=gelu",
    "tie_weights=false",
    "qkv_bias=false",
    "bias=true",
    "optimizer=adamw",
    "lr=2e-3",
    "schedule=cosine",
    "warmup_fraction=0.05",
    "min_lr_ratio=0.1",
]
MODERN_MODEL = [
    "pos_emb=rope",
    "norm=rmsnorm",
    "qk_norm=true",
    "mlp_act=relu2",
    "tie_weights=false",
    "zero_init_head=true",
    "logit_softcap=15",
    "bias=false",
]
MODERN_OPTIM = [
    "optimizer=muon",
    "muon_lr=0.03",
    "lr=6e-3",
    "schedule=wsd",
    "warmup_fraction=0.02",
    "decay_fraction=0.3",
    "min_lr_ratio=0.0",
]
INTERVENTIONS = {  # each alone, on top of the seed recipe
    "+rope": ["pos_emb=rope"],
    "+rmsnorm": ["norm=rmsnorm"],
    "+qk_norm": ["qk_norm=true"],
    "+relu2": ["mlp_act=relu2"],
    "+zero_head": ["zero_init_head=true"],
    "+softcap": ["logit_softcap=15"],
    "+muon": ["optimizer=muon", "muon_lr=0.03"],
    "+wsd": ["schedule=wsd", "warmup_fraction=0.02", "decay_fraction=0.3", "min_lr_ratio=0.0"],
}
RECIPES = {
    "seed": SEED,
    "modern": SEED + MODERN_MODEL + MODERN_OPTIM,
    **{name: SEED + extra for name, extra in INTERVENTIONS.items()},
}
# Numerics checks (--recipes seed-fp32,seed-compile): does the curve move beyond seed noise?
CHECKS = {"seed-fp32": SEED + ["precision=fp32"], "seed-compile": SEED + ["compile=true"]}


def prepare_data(out: Path) -> Path:
    from baseforge.data.prepare import prepare

    corpora = SHARED / "corpora"
    sources = [str(corpora / "tinyshakespeare.txt"), str(corpora / "webtext"), str(corpora / "c4-sample")]
    prepare(sources, out, "bpe:2048", val_fraction=0.05, workers=1, log=lambda *a: None)
    return out


def run(
    recipe: str, seed: int, data: Path, tmp: Path, steps: int, eval_every: int
) -> list[tuple[int, float]]:
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer

    overrides = (
        SHAPE
        + COMMON
        + {**RECIPES, **CHECKS}[recipe]
        + [f"seed={seed}", f"max_steps={steps}", f"eval_every={eval_every}"]
    )
    run_dir = tmp / f"{recipe}-{seed}"
    Trainer(resolve_config("cpu-small", None, overrides), data, run_dir, log=lambda *a: None).run()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["tokens"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First token count where the (linearly interpolated) validation curve reaches `target`."""
    for (t0, v0), (t1, v1) in zip(curve, curve[1:]):
        if v1 <= target:
            return t0 + (t1 - t0) * (v0 - target) / (v0 - v1) if v0 > target else t0
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--recipes",
        default=None,
        type=lambda s: s.split(","),
        help=f"from: {', '.join(RECIPES)}, {', '.join(CHECKS)} (default: all; with --ablation its own)",
    )
    p.add_argument("--ablation", action="store_true", help="the round-2 ablation (benchmarks/ablation.py)")
    p.add_argument("--out", default="recipes", help="results file stem in benchmarks/results/")
    p.add_argument("--seeds", type=int, default=3, help="seeds for seed and modern")
    p.add_argument("--intervention-seeds", type=int, default=1)
    p.add_argument("--tokens", type=int, default=614_400, help="token budget per run")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--reuse", action="store_true", help="keep the finished runs in the results file")
    p.add_argument("--throughput", action="store_true", help="with --ablation: tokens/s on a quiet machine")
    p.add_argument(
        "--merge",
        type=lambda s: s.split(","),
        default=None,
        help="with --ablation: first merge these results stems (runs of other processes) into --out",
    )
    p.add_argument("--rounds", type=int, default=2, help="--throughput: rounds of every recipe")
    p.add_argument("--rate-steps", type=int, default=30, help="--throughput: steps each timing takes")
    args = p.parse_args()
    if args.ablation:
        import ablation

        if args.tokens == p.get_default("tokens"):
            args.tokens = 1_228_800  # 300 steps of 8 x 512
        ablation.main(args)
        return
    args.recipes = args.recipes or list(RECIPES)
    steps = args.tokens // (16 * 128)
    RESULTS.mkdir(exist_ok=True)
    saved = RESULTS / f"{args.out}.json"
    curves: dict[str, list] = json.loads(saved.read_text()) if args.reuse and saved.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(Path(tmp) / "data")
        for recipe in args.recipes:
            seeds = (
                args.seeds if recipe in ("seed", "modern") or recipe in CHECKS else args.intervention_seeds
            )
            for seed in range(len(curves.get(recipe, [])), seeds):  # --reuse skips finished runs
                t0 = time.perf_counter()
                curves.setdefault(recipe, []).append(
                    run(recipe, seed, data, Path(tmp), steps, args.eval_every)
                )
                saved.write_text(json.dumps(curves))  # after every run: a long benchmark can be resumed
                print(
                    f"{recipe} seed {seed}: final val {curves[recipe][-1][-1][1]:.4f} "
                    f"({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
    report(curves, args)


def report(curves: dict, args) -> None:
    base = "seed" if "seed" in curves else next(iter(curves))
    target = statistics.mean(c[-1][1] for c in curves[base])
    lines = [
        f"# Recipe comparison ({args.tokens:,} tokens per run, 4 layers x 192, context 128, bpe:2048)",
        "",
        f"Command: `python benchmarks/bench_recipes.py --tokens {args.tokens} --seeds {args.seeds}`",
        "",
        f"Target: the {base} recipe's final validation loss, "
        f"mean of {len(curves[base])} seeds = {target:.4f}.",
        "",
        "| recipe | seeds | final val loss (mean ± sd) | tokens to reach the target (mean) "
        "| fraction of the seed budget |",
        "|---|---:|---:|---:|---:|",
    ]
    for recipe, runs in curves.items():
        finals = [c[-1][1] for c in runs]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        reach = [tokens_to_reach(c, target) for c in runs]
        if all(r is not None for r in reach):
            mean_reach = statistics.mean(reach)
            frac = f"{mean_reach / args.tokens:.2f}"
            reach_s = f"{mean_reach:,.0f}"
        else:
            reach_s, frac = f"not reached by {sum(r is None for r in reach)} seed(s)", "-"
        lines.append(
            f"| {recipe} | {len(runs)} | {statistics.mean(finals):.4f} ± {sd:.4f} | {reach_s} | {frac} |"
        )
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for recipe, runs in curves.items():
        tokens = [t for t, _ in runs[0]]
        n = min(len(c) for c in runs)
        values = [[c[i][1] for c in runs] for i in range(n)]
        mean = [statistics.mean(v) for v in values]
        style = dict(lw=2.5) if recipe in ("seed", "modern") else dict(lw=1, alpha=0.7)
        (line,) = ax.plot(
            tokens[:n], mean, label=f"{recipe} ({len(runs)} seed{'s' * (len(runs) > 1)})", **style
        )
        if len(runs) > 1:
            ax.fill_between(
                tokens[:n],
                [min(v) for v in values],
                [max(v) for v in values],
                color=line.get_color(),
                alpha=0.15,
            )
    ax.axhline(target, color="gray", ls="--", lw=1, label="seed recipe's final val loss")
    ax.set_xlabel("tokens")
    ax.set_ylabel("validation loss")
    ax.set_ylim(top=min(ax.get_ylim()[1], target + 2.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.out}.png", dpi=100)


if __name__ == "__main__":
    main()
