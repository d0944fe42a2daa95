"""Round 3's report (`python benchmarks/round3.py report`): the runs in results/round3-runs/ and the
tokens/s in results/round3-speed.json pooled into results/recipes-round3.{md,json,png}.

- The -key table: each key removed from round2-all, its final loss against round2-all's (Welch's t-test),
  the tokens to the seed recipe's final loss (where the validation curve crosses it, as round 2), its
  tokens/s (quiet, before and after this round's speed work) and wall-clock to that loss.
- Averaged weights: every run's final loss with each EMA beside its raw weights' (paired: the same run).
- The budget scan: each recipe's final loss at 1/8 .. 1x of the budget, each a run with its own warmup
  and decay; a fitted L(T) = E + A * T^-alpha per recipe and the tokens each needs to reach the seed
  recipe's final loss at the whole budget, as a fraction of the seed's budget.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import round3
from ablation import reach, welch_p

RESULTS = round3.RESULTS
COMMAND = "python benchmarks/round3.py run --parts keys,budget --seeds 3 (workers: --worker i/2 --threads 1)"
SPEED_COMMAND = "python benchmarks/round3_speed.py (and --src OLD/src --as before)"


def load_runs() -> dict[str, dict[str, dict[float, list[dict]]]]:
    """{part: {recipe: {fraction: [run, ...] by seed}}}; budget's 1x runs are the keys part's."""
    out: dict = {"keys": {}, "budget": {}}
    for path in sorted(round3.RUNS.glob("*/*.json")):
        run = json.loads(path.read_text())
        out[run["part"]].setdefault(run["recipe"], {}).setdefault(run["fraction"], []).append(run)
    for name in round3.budget_recipes():
        if name in out["keys"]:
            out["budget"].setdefault(name, {})[1.0] = out["keys"][name][1.0]
    return out


def final(run: dict) -> float:
    return run["curve"][-1][2]


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} ± {sd:.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def keys_table(runs: dict, speed: dict) -> tuple[list[str], dict]:
    found = runs["keys"]  # in the recipes' order: seed, modern, round2-all, then each key removed
    keys = {n: found[n][1.0] for n in round3.key_recipes() if 1.0 in found.get(n, {})}
    target = statistics.mean(final(r) for r in keys["seed"])
    seed_tokens = round3.TOKENS
    after, before = speed.get("after", {}), speed.get("before", {})
    ref = [final(r) for r in keys.get("round2-all", [])]
    lines = [
        "| recipe | seeds | final val (mean ± sd) | vs round2-all | p | tokens to target | tokens/s before "
        "| tokens/s after | cost vs round2-all | wall-clock to target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    record = {}
    for name, rs in keys.items():
        f = [final(r) for r in rs]
        p = welch_p(f, ref) if name.startswith("-") else None
        delta = statistics.mean(f) - statistics.mean(ref) if ref and name != "round2-all" else None
        to = [reach(r["curve"], target, 0) for r in rs]
        frac = statistics.mean(to) / seed_tokens if None not in to else None
        rate = after.get(name)
        cost = rate / after["round2-all"] if rate and after.get("round2-all") else None
        clock = (
            frac * seed_tokens / rate / (seed_tokens / after["seed"])
            if frac is not None and rate and after.get("seed")
            else None
        )
        record[name] = {"finals": f, "p": p, "delta": delta, "tokens_to_target": frac, "tokens_per_s": rate}
        lines.append(
            f"| {name} | {len(f)} | {mean_sd(f)} | {_num(delta, '+.4f')} | {_num(p, '.3f')} "
            f"| {_num(frac, '.2f') if None not in to else f'not reached ({to.count(None)})'} "
            f"| {_num(before.get(name), ',.0f')} | {_num(rate, ',.0f')} | {_num(cost, '.2f')} "
            f"| {_num(clock, '.2f')} |"
        )
    return lines, {"target": target, "recipes": record}


def _num(value, spec: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def ema_table(runs: dict) -> tuple[list[str], dict]:
    """Per decay: the mean of (EMA - raw) final loss over runs, with a paired t-test, per recipe group."""
    from scipy.stats import ttest_rel

    pairs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for part, table in runs.items():
        for name, byf in table.items():
            for fraction, rs in byf.items():
                if part == "budget" and fraction == 1.0:  # the keys part's runs, counted there
                    continue
                for r in rs:
                    for decay, loss in (r.get("ema") or {}).items():
                        if loss is not None:
                            group = name if fraction == 1.0 else f"{name} @{fraction:g}"
                            pairs.setdefault((group, decay), []).append((final(r), loss))
    lines = [
        "| runs | EMA decay | n | raw final | EMA final | EMA - raw (mean ± sd) | p (paired) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    record = {}
    pooled: dict[str, list[tuple[float, float]]] = {}
    rank = {name: i for i, name in enumerate(round3.key_recipes())}
    for (group, decay), ps in sorted(pairs.items(), key=lambda kv: (rank.get(kv[0][0], 99), kv[0])):
        pooled.setdefault(decay, []).extend(ps)
        record[f"{group} {decay}"] = ps
        lines.append(_ema_line(group, decay, ps, ttest_rel))
    for decay, ps in sorted(pooled.items()):
        lines.append(_ema_line("all runs", decay, ps, ttest_rel))
    return lines, record


def _ema_line(group: str, decay: str, ps: list[tuple[float, float]], ttest_rel) -> str:
    raw, ema = [a for a, _ in ps], [b for _, b in ps]
    diff = [b - a for a, b in ps]
    p = float(ttest_rel(ema, raw).pvalue) if len(ps) > 1 else None
    sd = f" ± {statistics.stdev(diff):.4f}" if len(diff) > 1 else ""
    return (
        f"| {group} | {decay} | {len(ps)} | {statistics.mean(raw):.4f} | {statistics.mean(ema):.4f} "
        f"| {statistics.mean(diff):+.4f}{sd} | {_num(p, '.3f')} |"
    )


def fit(points: list[tuple[float, float]]):
    """(E, A, alpha) of L(T) = E + A * T^-alpha through (tokens, mean loss) points; None below 3."""
    if len(points) < 3:
        return None
    from scipy.optimize import curve_fit

    t = [p[0] / round3.TOKENS for p in points]  # in budgets: well-scaled parameters
    loss = [p[1] for p in points]
    try:
        params, _ = curve_fit(
            lambda x, e, a, alpha: e + a * x**-alpha,
            t,
            loss,
            p0=(min(loss) - 0.5, 0.5, 0.5),
            bounds=((0, 0, 0.01), (min(loss), 100, 3)),
            maxfev=20000,
        )
    except (RuntimeError, ValueError):
        return None
    return tuple(float(x) for x in params)


def tokens_for(params, loss: float) -> float | None:
    """Budgets (fractions of TOKENS) a fitted recipe needs to end at `loss`; None below its floor E."""
    e, a, alpha = params
    return (a / (loss - e)) ** (1 / alpha) if loss > e else None


def budget_table(runs: dict) -> tuple[list[str], dict, dict]:
    fractions = round3.FRACTIONS
    head = " | ".join(f"{f:g}x" for f in fractions)
    lines = [
        f"| recipe | {head} | fit E + A T^-alpha | budget to the seed's 1x loss |",
        "|---|" + "---:|" * (len(fractions) + 2),
    ]
    means: dict[str, list[tuple[float, float]]] = {}
    for name, byf in runs["budget"].items():
        means[name] = [
            (f * round3.TOKENS, statistics.mean(final(r) for r in byf[f])) for f in fractions if f in byf
        ]
    seed_points = dict(means.get("seed", []))
    target = seed_points.get(float(round3.TOKENS))
    record: dict = {"target": target, "recipes": {}}
    fits = {}
    for name, byf in runs["budget"].items():
        params = fit(means[name])
        fits[name] = params
        need = tokens_for(params, target) if params and target else None
        cells = [mean_sd([final(r) for r in byf[f]]) if f in byf else "" for f in fractions]
        shown = f"{params[0]:.3f} + {params[1]:.3f} T^-{params[2]:.3f}" if params else "too few points"
        lines.append(f"| {name} | {' | '.join(cells)} | {shown} | {_num(need, '.3f')} |")
        record["recipes"][name] = {"points": means[name], "fit": params, "budget_to_seed_loss": need}
    return lines, record, fits


# The recipe the modern presets take (presets.py), from the -key table: see the md's conclusion.
CHOSEN = "round2-all"


def headline(keys: dict, speed: dict) -> list[str]:
    """The acceptance figures: the chosen recipe against round 1's modern, tokens and wall-clock to the
    seed recipe's final loss, with the seeds' spread."""
    recipes, after = keys["recipes"], speed.get("after", {})
    mine, theirs = recipes.get(CHOSEN), recipes.get("modern")
    if not mine or not theirs or mine["tokens_to_target"] is None or theirs["tokens_to_target"] is None:
        return [f"{CHOSEN} against modern: not measured yet (both need runs that reach the target)."]
    tokens = mine["tokens_to_target"] / theirs["tokens_to_target"]
    line = f"{CHOSEN} against modern: {tokens:.2f}x the tokens to the seed recipe's final loss"
    if after.get(CHOSEN) and after.get("modern"):
        line += f", {tokens * after['modern'] / after[CHOSEN]:.2f}x the wall-clock (quiet tokens/s)"
    spread = [statistics.mean(mine["finals"]), min(mine["finals"]), max(mine["finals"])]
    return [line + f"; its final loss {spread[0]:.4f} (seeds {spread[1]:.4f} to {spread[2]:.4f})."]


def chart(runs: dict, fits: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for name, byf in runs["keys"].items():
        rs = byf.get(1.0, [])
        n = min(len(r["curve"]) for r in rs)
        tokens = [p[0] for p in rs[0]["curve"][:n]]
        mean = [statistics.mean(r["curve"][i][2] for r in rs) for i in range(n)]
        bold = name in ("seed", "modern", "round2-all")
        left.plot(tokens, mean, label=name, lw=2.5 if bold else 0.8, alpha=1 if bold else 0.6)
    left.set(xlabel="tokens", ylabel="validation loss (mean over seeds)", title="-key ablation")
    left.set_ylim(top=min(left.get_ylim()[1], 6.0))
    left.grid(alpha=0.3)
    left.legend(fontsize=7, ncol=2)
    for name, byf in runs["budget"].items():
        points = sorted((f * round3.TOKENS, statistics.mean(final(r) for r in rs)) for f, rs in byf.items())
        (line,) = right.plot([p[0] for p in points], [p[1] for p in points], "o", label=name)
        params = fits.get(name)
        if params:
            xs = [round3.TOKENS * 2 ** (k / 8) for k in range(-24, 9)]
            e, a, alpha = params
            right.plot(xs, [e + a * (x / round3.TOKENS) ** -alpha for x in xs], color=line.get_color(), lw=1)
    right.set(xscale="log", xlabel="tokens of the whole run (own warmup and decay)", ylabel="final val loss")
    right.set_title("budget scan, fitted E + A T^-alpha")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main() -> None:
    runs = load_runs()
    speed_file = RESULTS / "round3-speed.json"
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else {}
    key_lines, keys = keys_table(runs, speed)
    ema_lines, ema = ema_table(runs)
    budget_lines, budget, fits = budget_table(runs)
    machines = speed.get("machines", {})
    lines = [
        "# Round 3: which keys carry the whole set, a budget scan, averaged weights",
        "",
        "The round-2 proxy (4 layers x 192, context 512, global batch 8, bpe:2048 on short documents, "
        f"{round3.TOKENS:,} tokens), in fp32 on every machine; validation: a seeded sample of whole "
        "documents (so these losses are not on round 2's tail split and not comparable with its table).",
        "",
        f"Runs: `{COMMAND}`, then `python benchmarks/round3.py report`. Tokens/s: `{SPEED_COMMAND}` on "
        f"a machine doing nothing else ({'; '.join(f'{k}: {v}' for k, v in machines.items()) or 'not run'}).",
        "",
        "## Each key removed from the whole set",
        "",
        f"Target: the seed recipe's final loss, {keys['target']:.4f}. p: Welch's t-test of the final losses "
        "against round2-all's. Tokens to target: where the validation curve crosses it (mean over seeds), "
        "as a fraction of the budget. Wall-clock to target: at the quiet tokens/s, as a fraction of the "
        "seed recipe's whole run. Before: the library before this round (git 882d5dc).",
        "",
        *key_lines,
        "",
        *([f"Tokens/s: {speed['note']}", ""] if speed.get("note") else []),
        *headline(keys, speed),
        "",
        "## Averaged weights",
        "",
        f"Every run kept EMAs of its weights from {round3.EMA_START:.0%} of its steps (the product's "
        "WeightAverage) and scored each at its end beside the raw weights: paired, the same run.",
        "",
        *ema_lines,
        "",
        "## Budget scan",
        "",
        "Final validation loss of runs whose whole length is the fraction of the budget shown (each "
        "with its own warmup and decay; 1x: the runs above), mean ± sd over seeds; the fit through the "
        "means; the budget (in proxy budgets) each recipe needs to end at the seed recipe's 1x loss.",
        "",
        *budget_lines,
    ]
    (RESULTS / "recipes-round3.md").write_text("\n".join(lines) + "\n")
    record = {"keys": keys, "ema": ema, "budget": budget, "speed": speed}
    (RESULTS / "recipes-round3.json").write_text(json.dumps(record, indent=1))
    chart(runs, fits, RESULTS / "recipes-round3.png")
    print("\n".join(lines))
