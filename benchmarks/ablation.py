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
BATCH = 8  # sequences a step (a batch schedule's last stage)
SHAPE = ["n_layer=4", "n_embd=192", "n_head=4", "context=512", "vocab_size=none", "dropout=0"]
COMMON = [
    "micro_batch=8",
    f"global_batch={BATCH}",
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
# The keys that earned their place in the "+key" rows (p < 0.05 and a lower final loss at the same
# tokens, or less wall-clock), from the 3-seed phase of 2026-12-07 (results/recipes-round2.md): the
# final round-2 recipe, whose "-key" rows remove each again.
FINAL: list[str] = ["doc_mask", "value_embeds", "normuon"]
PREREQUISITE = {"rope_doc_reset": "doc_mask"}  # positions per document only make sense within documents


def recipes() -> dict[str, list[str]]:
    every = MODERN + [on for on, _ in ROUND2.values()]
    final = MODERN + [ROUND2[key][0] for key in FINAL]
    out = {"seed": SEED, "modern": MODERN, "round2-all": every, "round2": final}
    for key, (on, _) in ROUND2.items():
        out[f"+{key}"] = MODERN + [ROUND2[k][0] for k in (PREREQUISITE.get(key),) if k] + [on]
    for key in FINAL:
        out[f"-{key}"] = final + [ROUND2[key][1]]
    return out


def reference(name: str) -> str | None:
    """What an ablation row is compared with: +key with modern (+rope_doc_reset with +doc_mask, which
    it adds to), -key with the final recipe."""
    if name.startswith("+"):
        before = PREREQUISITE.get(name[1:])
        return f"+{before}" if before else "modern"
    return "round2" if name.startswith("-") else None


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


def run(
    recipe: list[str],
    seed: int,
    data: Path,
    tmp: Path,
    tokens: int,
    eval_every: int,
    trainer_cls=None,
    extra=lambda trainer: {},
) -> dict:
    """One run's validation curve and median tokens/s; `trainer_cls` (default Trainer) trains it and
    `extra(trainer)` adds to the record (round3.py: its averaged weights' losses)."""
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer

    # The budget in tokens (max_tokens), so that a batch schedule's smaller steps train on as many.
    overrides = SHAPE + COMMON + recipe + [f"seed={seed}", "max_steps=0", f"max_tokens={tokens}"]
    overrides += [f"eval_every={eval_every}"]
    run_dir = tmp / f"run-{time.monotonic_ns()}"
    trainer = (trainer_cls or Trainer)(
        resolve_config("cpu-small", None, overrides), data, run_dir, log=lambda *a: None
    )
    result = trainer.run()
    if result.stopped:  # SIGTERM/SIGINT stop a run gracefully: a short run is no result
        raise SystemExit(f"stopped by signal {result.signal} at step {result.step}: nothing recorded")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [
        (r["tokens"], r.get("elapsed_s") or 0.0, r["val_loss"]) for r in rows if r.get("val_loss") is not None
    ]
    rates = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    return {"curve": curve, "tokens_per_s": statistics.median(rates) if rates else None, **extra(trainer)}


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


def rate(recipe: list[str], data: Path, tmp: Path, steps: int) -> float:
    """Training tokens/s of `recipe` over `steps` steps after the first logged row (warm-up): the
    rows' harmonic mean, i.e. their tokens over their seconds (a window warmup's faster early steps
    count as they come)."""
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer

    overrides = SHAPE + COMMON + recipe + ["seed=0", f"max_steps={steps}", "log_every=5"]
    overrides += ["eval_every=1000000", "eval_tokens=4096"]
    run_dir = tmp / f"rate-{time.monotonic_ns()}"
    Trainer(resolve_config("cpu-small", None, overrides), data, run_dir, log=lambda *a: None).run()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.harmonic_mean([r["tokens_per_s"] for r in rows if r.get("tokens_per_s")][1:])


def whole_run_rate(recipe: list[str], data: Path, tmp: Path, steps: int, budget: int) -> float:
    """Tokens/s over a whole run of `budget` tokens: with a batch schedule, each stage's batch size is
    timed alone and weighted by the tokens the stage trains on."""
    from baseforge.data.batch_plan import parse_batch_schedule

    schedule = next(
        (item.split("=", 1)[1] for item in reversed(recipe) if item.startswith("batch_schedule=")), ""
    )
    stages, seconds, done = parse_batch_schedule(schedule), 0.0, 0
    for seqs, until in [*stages, (BATCH, budget)]:
        fixed = [*recipe, "batch_schedule=", f"global_batch={seqs}", f"micro_batch={seqs}"]
        seconds += (min(until, budget) - done) / rate(fixed, data, tmp, steps)
        done = min(until, budget)
    return budget / seconds


def throughput(chosen: dict, data: Path, tmp: Path, args) -> dict[str, float]:
    """Each recipe's whole-run tokens/s on a machine doing nothing else, alternating the recipes over
    `args.rounds` rounds (median of rounds): the ablation's runs time themselves too, but whatever
    else ran beside them then is in those figures."""
    rates: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(args.rounds):
        for name, recipe in chosen.items():
            rates[name].append(whole_run_rate(recipe, data, tmp, args.rate_steps, args.tokens))
            print(f"{name}: {rates[name][-1]:,.0f} tokens/s", flush=True)
    return {name: statistics.median(values) for name, values in rates.items()}


def main(args) -> None:
    stem = args.out if args.out != "recipes" else "recipes-round2"  # bench_recipes' default stem
    saved = RESULTS / f"{stem}.json"
    results: dict[str, list] = json.loads(saved.read_text()) if args.reuse and saved.is_file() else {}
    for part in args.merge or []:  # runs made by other processes at the same time (their own stems)
        results.update(json.loads((RESULTS / f"{part}.json").read_text()))
        saved.write_text(json.dumps(results))
    chosen = recipes() if args.recipes is None else {k: recipes()[k] for k in args.recipes}
    with tempfile.TemporaryDirectory() as tmp:
        data = short_documents(Path(tmp))
        if args.throughput:
            quiet = RESULTS / f"{stem}-throughput.json"
            rates = json.loads(quiet.read_text()) if args.reuse and quiet.is_file() else {}
            rates.update(throughput(chosen, data, Path(tmp), args))
            quiet.write_text(json.dumps(rates, indent=1))
            report(results, args, stem)
            return
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
    """The table (and chart): per recipe its final loss, the tokens and time it took to reach the seed
    recipe's final loss, its throughput, and for ablation rows the p-value and tokens/s cost against
    the reference; then round 2 against modern, the acceptance figures."""
    quiet_file = RESULTS / f"{stem}-throughput.json"
    quiet = json.loads(quiet_file.read_text()) if quiet_file.is_file() else {}
    finals = {k: [r["curve"][-1][2] for r in runs] for k, runs in results.items()}
    target = statistics.mean(finals["seed"])
    seed_tokens = statistics.mean(r["curve"][-1][0] for r in results["seed"])
    seed_seconds = statistics.mean(r["curve"][-1][1] for r in results["seed"])
    to_target = {k: [reach(r["curve"], target, 0) for r in runs] for k, runs in results.items()}
    # Under WSD a run is still at its peak rate when it passes the seed's final loss, so the target
    # misses what the decay brings; modern's own final loss is reached during the decay.
    modern_final = statistics.mean(finals["modern"])
    to_modern = {k: [reach(r["curve"], modern_final, 0) for r in runs] for k, runs in results.items()}
    lines = [
        f"# Round-2 recipe ablation ({args.tokens:,} tokens per run, 4 layers x 192, context 512, bpe:2048)",
        "",
        f"Command: `python benchmarks/bench_recipes.py --ablation --tokens {args.tokens} "
        f"--seeds {args.seeds}`; tokens/s on a quiet machine: the same with `--throughput`.",
        "",
        f"Target: the seed recipe's final validation loss, mean of {len(finals['seed'])} seeds = "
        f"{target:.4f}. Tokens to target: where each run's interpolated validation curve reaches it "
        "(mean over seeds), as a fraction of the seed recipe's budget. p: Welch's t-test of the final "
        "losses against the row's reference (+key: modern, +rope_doc_reset: +doc_mask; -key: round2). "
        "Quiet tokens/s: whole runs' throughput timed alone, recipes alternating; cost: that against "
        "the reference's; wall-clock to target: tokens to target at that throughput, as a fraction of "
        "the seed recipe's whole run. In-run seconds: the ablation's own clock (other work shared the "
        "machine: noisy). Tokens to modern's final: the same for the modern recipe's final validation "
        f"loss ({modern_final:.4f}), which a run passes during its decay, where the seed's loss is "
        "passed at the peak learning rate.",
        "",
        "| recipe | seeds | final val (mean ± sd) | p | tokens to target | quiet tokens/s | cost | "
        "wall-clock to target | in-run seconds to target | tokens to modern's final |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        f = finals[name]
        sd = statistics.stdev(f) if len(f) > 1 else 0.0
        sec = [reach(r["curve"], target, 1) for r in runs]
        ref = reference(name)
        p = welch_p(f, finals[ref]) if ref in finals else None
        rate, ref_rate = quiet.get(name), quiet.get(ref or "")
        cost = f"{rate / ref_rate:.2f}" if rate and ref_rate else ""
        clock = wall_clock(to_target[name], rate, seed_tokens, quiet.get("seed"))
        lines.append(
            f"| {name} | {len(f)} | {statistics.mean(f):.4f} ± {sd:.4f} | {'' if p is None else f'{p:.3f}'} "
            f"| {fraction(to_target[name], seed_tokens)} | {f'{rate:,.0f}' if rate else ''} | {cost} "
            f"| {clock} | {fraction(sec, seed_seconds)} | {fraction(to_modern[name], seed_tokens)} |"
        )
    lines += ["", *headline(to_target, quiet), *headline(to_modern, quiet, "modern's final loss")]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    chart(results, target, RESULTS / f"{stem}.png")


def wall_clock(tokens: list, rate: float | None, seed_tokens: float, seed_rate: float | None) -> str:
    """Seconds to the target at the quiet rate, as a fraction of the seed recipe's whole run."""
    if not rate or not seed_rate or any(t is None for t in tokens):
        return ""
    return f"{statistics.mean(tokens) / rate / (seed_tokens / seed_rate):.2f}"


def headline(to_target: dict, quiet: dict, target: str = "the seed recipe's final loss") -> list[str]:
    """Round 2 against modern: tokens and wall-clock to the target."""
    out = []
    for name in ("round2", "round2-all"):
        mine, theirs = to_target.get(name), to_target.get("modern")
        if not mine or not theirs or None in mine + theirs:
            continue
        tokens = statistics.mean(mine) / statistics.mean(theirs)
        line = f"{name} against modern: {tokens:.2f}x the tokens to {target}"
        if quiet.get(name) and quiet.get("modern"):
            line += f", {tokens * quiet['modern'] / quiet[name]:.2f}x the wall-clock (quiet throughput)"
        out.append(line + ".")
    return out


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
        bold = name in ("seed", "modern", "round2", "round2-all")
        ax.plot(tokens, mean, label=name, lw=2.5 if bold else 0.8, alpha=1 if bold else 0.6)
    ax.axhline(target, color="gray", ls="--", lw=1, label="seed recipe's final val loss")
    ax.set_xlabel("tokens")
    ax.set_ylabel("validation loss (mean over seeds)")
    ax.set_ylim(top=min(ax.get_ylim()[1], target + 2.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
