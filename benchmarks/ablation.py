"""The round-2 ablation (`python benchmarks/bench_recipes.py --ablation`): each round-2 key added alone
to today's modern recipe, and removed alone from the full round-2 recipe, several seeds each.

The proxy: context 512 with the shared corpora cut into short documents (`short_documents`: several
to a window), 4 layers x 192 wide, global batch 8, the same token budget for every recipe. For every
recipe: the final validation loss (mean, sd), the tokens and the training seconds it needed to reach
the seed recipe's final loss (as fractions of the seed recipe's budget and time), its tokens/s, and,
for every ablation row, a Welch t-test of its final loss against its reference (modern for "+key",
round2 for "-key"). Writes benchmarks/results/recipes-round2.{md,json,png}; `--reuse` continues.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from bench_recipes import MODERN_MODEL, MODERN_OPTIM, SEED
from common import SHARED

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = ["n_layer=4", "n_embd=192", "n_head=4", "context=512", "vocab_size=none", "dropout=0"]
COMMON = [
    "micro_batch=8",
    "global_batch=8",
    "log_every=25",
    "sample_tokens=0",
    "checkpoint_every=1000000",
    "precision=bf16",
    "eval_tokens=98304",  # 192 windows: most of the 102k held-out tokens
    "grad_clip=1.0",
    "weight_decay=0.1",
]
# Each round-2 key with the value round 2 tries (the model keys need a document token: the data's).
ROUND2 = {
    "packing": ("packing=bestfit", "packing=concat"),
    "doc_mask": ("attn_doc_mask=true", "attn_doc_mask=false"),
    "rope_doc_reset": ("rope_doc_reset=true", "rope_doc_reset=false"),
    "window": ("attn_window=256", "attn_window=0"),
    "window_warmup": ("attn_window_warmup=0.3", "attn_window_warmup=0"),
    "value_embeds": ("value_embeds=1", "value_embeds=0"),
    "unet_skips": ("unet_skips=true", "unet_skips=false"),
    "polar_express": ("muon_ns=polar_express", "muon_ns=jordan"),
    "normuon": ("normuon=true", "normuon=false"),
    "cautious_wd": ("cautious_wd=true", "cautious_wd=false"),
    # 2 sequences a step for the first 100k tokens (~98 steps), 4 until 300k (~98), then 8
    "batch_schedule": ("batch_schedule=2@100000,4@300000", "batch_schedule="),
}
MODERN = SEED + MODERN_MODEL + MODERN_OPTIM + ["muon_weight_decay=0.01"]
FULL = MODERN + [on for on, _ in ROUND2.values()]


def recipes() -> dict[str, list[str]]:
    out = {"seed": SEED, "modern": MODERN, "round2": FULL}
    for key, (on, off) in ROUND2.items():
        extra = [on]
        if key == "rope_doc_reset":  # positions per document only make sense within documents
            extra = ["attn_doc_mask=true", on]
        out[f"+{key}"] = MODERN + extra
        out[f"-{key}"] = FULL + [off]
    return out


def short_documents(out: Path) -> Path:
    """The shared corpora as many short documents, so several share a window of 512: Tiny
    Shakespeare cut at its blank lines (one speech each), NLTK webtext one line each (a post, a
    quote, a review), the C4 sample as it is; written as JSON lines and prepared with a 2048-token
    byte-level BPE, 5% of documents held out."""
    import gzip

    from baseforge.data.prepare import prepare

    corpora = SHARED / "corpora"
    docs = [d.strip() for d in (corpora / "tinyshakespeare.txt").read_text().split("\n\n")]
    for path in sorted((corpora / "webtext").glob("*.txt")):
        docs += [line.strip() for line in path.read_text(errors="replace").splitlines()]
    for path in sorted((corpora / "c4-sample").glob("*.json.gz")):
        docs += [json.loads(line)["text"] for line in gzip.open(path, "rt") if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    source = out / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs if len(d) > 20))
    data = out / "data"
    prepare([str(source)], data, "bpe:2048", val_fraction=0.05, workers=1, log=lambda *a: None)
    return data


def run(recipe: list[str], seed: int, data: Path, tmp: Path, tokens: int, eval_every: int) -> dict:
    from baseforge.config import resolve_config
    from baseforge.train.loop import Trainer

    # The budget in tokens (max_tokens), so that a batch schedule's smaller steps train on as many.
    overrides = SHAPE + COMMON + recipe + [f"seed={seed}", "max_steps=0", f"max_tokens={tokens}"]
    overrides += [f"eval_every={eval_every}"]
    run_dir = tmp / f"run-{time.monotonic_ns()}"
    Trainer(resolve_config("cpu-small", None, overrides), data, run_dir, log=lambda *a: None).run()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [
        (r["tokens"], r.get("elapsed_s") or 0.0, r["val_loss"]) for r in rows if r.get("val_loss") is not None
    ]
    rates = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    return {"curve": curve, "tokens_per_s": statistics.median(rates) if rates else None}


def reach(curve: list, target: float, column: int) -> float | None:
    """Tokens (column 0) or seconds (column 1) at which the interpolated validation curve reaches target."""
    for a, b in zip(curve, curve[1:]):
        if b[2] <= target:
            if a[2] <= target:
                return a[column]
            return a[column] + (b[column] - a[column]) * (a[2] - target) / (a[2] - b[2])
    return None


def welch_p(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def main(args) -> None:
    stem = args.out if args.out != "recipes" else "recipes-round2"  # bench_recipes' default stem
    saved = RESULTS / f"{stem}.json"
    results: dict[str, list] = json.loads(saved.read_text()) if args.reuse and saved.is_file() else {}
    chosen = recipes() if args.recipes is None else {k: recipes()[k] for k in args.recipes}
    with tempfile.TemporaryDirectory() as tmp:
        data = short_documents(Path(tmp))
        for seed in range(args.seeds):  # seed-major: a stopped run has every recipe at equal seeds
            for name, recipe in chosen.items():
                if len(results.get(name, [])) > seed:
                    continue
                t0 = time.perf_counter()
                results.setdefault(name, []).append(
                    run(recipe, seed, data, Path(tmp), args.tokens, args.eval_every)
                )
                saved.write_text(json.dumps(results))
                final = results[name][-1]["curve"][-1][2]
                print(
                    f"{name} seed {seed}: final val {final:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True
                )
    report(results, args, stem)


def report(results: dict, args, stem: str) -> None:
    finals = {k: [r["curve"][-1][2] for r in runs] for k, runs in results.items()}
    target = statistics.mean(finals["seed"])
    seed_tokens = statistics.mean(r["curve"][-1][0] for r in results["seed"])
    seed_seconds = statistics.mean(r["curve"][-1][1] for r in results["seed"])
    lines = [
        f"# Round-2 recipe ablation ({args.tokens:,} tokens per run, 4 layers x 192, context 512, bpe:2048)",
        "",
        "Command: `python benchmarks/bench_recipes.py --ablation "
        f"--tokens {args.tokens} --seeds {args.seeds}`",
        "",
        f"Target: the seed recipe's final validation loss, mean of {len(finals['seed'])} seeds = "
        f"{target:.4f}. "
        "Fractions are of the seed recipe's tokens and training seconds (same machine, same run). "
        "p: Welch's t-test of the final losses against the reference (+key: modern; -key: round2).",
        "",
        "| recipe | seeds | final val (mean ± sd) | tokens to target | seconds to target | tokens/s | p |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        f = finals[name]
        sd = statistics.stdev(f) if len(f) > 1 else 0.0
        tok = [reach(r["curve"], target, 0) for r in runs]
        sec = [reach(r["curve"], target, 1) for r in runs]
        rates = [r["tokens_per_s"] for r in runs if r["tokens_per_s"]]
        ref = "modern" if name.startswith("+") else "round2" if name.startswith("-") else None
        p = welch_p(f, finals[ref]) if ref in finals else None
        lines.append(
            f"| {name} | {len(f)} | {statistics.mean(f):.4f} ± {sd:.4f} | {fraction(tok, seed_tokens)} | "
            f"{fraction(sec, seed_seconds)} | {statistics.mean(rates):,.0f} | "
            f"{'' if p is None else f'{p:.3f}'} |"
        )
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    chart(results, target, RESULTS / f"{stem}.png")


def fraction(values: list, base: float) -> str:
    if all(x is not None for x in values):
        return f"{statistics.mean(values) / base:.2f}"
    return f"not reached ({sum(x is None for x in values)})"


def chart(results: dict, target: float, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for name, runs in results.items():
        n = min(len(r["curve"]) for r in runs)
        tokens = [p[0] for p in runs[0]["curve"][:n]]
        mean = [statistics.mean(r["curve"][i][2] for r in runs) for i in range(n)]
        bold = name in ("seed", "modern", "round2")
        ax.plot(tokens, mean, label=name, lw=2.5 if bold else 0.8, alpha=1 if bold else 0.6)
    ax.axhline(target, color="gray", ls="--", lw=1, label="seed recipe's final val loss")
    ax.set_xlabel("tokens")
    ax.set_ylabel("validation loss (mean over seeds)")
    ax.set_ylim(top=min(ax.get_ylim()[1], target + 2.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
