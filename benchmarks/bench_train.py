"""Training throughput: tokens/s and MFU of real training steps, fp32 vs bf16, compile off vs on.

Usage:
    python benchmarks/bench_train.py                      # the reference config, all four variants
    python benchmarks/bench_train.py --variants bf16,fp32 --rounds 5 --steps 3
    python benchmarks/bench_train.py --memory             # host memory vs data size (memmapped shards)
    python benchmarks/bench_train.py --preset cpu-tiny    # a preset at its own shape: eager vs compiled, fp32
    python benchmarks/bench_train.py --preset cpu-small-modern --data short-docs --rounds 3 --steps 2

The reference config (issue 3): GPT-2 tokenizer (vocab 50257), 6 layers, width 384, 6 heads,
context 256, micro-batch 8, AdamW. Each variant is a full `Trainer` doing real optimizer steps
(data loading, autocast, fused loss, clipping, AdamW). Variants are timed round-robin, a few steps
each per round, and the median per-step time is reported, so that load from other processes on
a shared machine hits all variants alike. MFU is against the measured matmul peak of the dtype.

--preset NAME times that preset at its own shape instead (its context, micro-batch and recipe; the
vocabulary from the data, by default the built-in demo's: the Python standard library, bpe:4096),
fp32 eager against fp32 compiled unless --variants says otherwise, and reports what compiling costs:
the compiled variant's set-up (where the compile happens) and warm-up steps beyond the eager
variant's, the step time it saves, and the steps it takes to repay the compile. Compiles start from
an empty Inductor cache (a first run's cost). The optimizer's share of each step is timed apart (it
is never compiled), and for a masked model the share of eager forwards that took the CPU's banded
attention kernel (a compiled model always takes SDPA with a boolean mask).
"""

from __future__ import annotations

import argparse
import json
import os
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
# The demo's data (`baseforge train` with no arguments prepares it there).
DEMO_DATA = Path(__file__).resolve().parents[1] / "data" / "builtin"
WEBTEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "webtext"
SHORT_DOC_CHARS = 120  # at most this many characters a line: every document fits a 64-position band


def make_trainer(data: Path, run: Path, overrides: list[str], preset: str | None = None):
    """A set-up Trainer: the reference config (cpu-small + REFERENCE), or `preset` as it is."""
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer

    config = (
        resolve_config(preset, None, overrides)
        if preset
        else resolve_config("cpu-small", None, REFERENCE + overrides)
    )
    trainer = Trainer(config, data, run, log=lambda *a: None)
    trainer.setup()
    return trainer


def preset_data(choice: str, tmp: Path) -> Path:
    """The data a --preset run trains on: `builtin`, `short-docs` or a prepared data dir."""
    from baseforge.data.prepare import prepare

    if choice == "builtin":
        if (DEMO_DATA / "manifest.json").is_file():
            return DEMO_DATA
        out = tmp / "builtin"  # as `baseforge train` prepares it
        prepare(["builtin"], out, "bpe:4096", val_fraction=0.05, log=lambda *a: None)
        return out
    if choice == "short-docs":
        if not WEBTEXT.is_dir():
            sys.exit(f"short-docs needs the shared NLTK webtext corpus at {WEBTEXT}")
        docs = tmp / "short-docs.jsonl"
        with docs.open("w") as f:
            for name in ("firefox.txt", "overheard.txt"):
                for line in (WEBTEXT / name).read_text(encoding="utf-8", errors="replace").splitlines():
                    if line.strip() and len(line) <= SHORT_DOC_CHARS:
                        f.write(json.dumps({"text": line}) + "\n")
        out = tmp / "short-docs"
        prepare([str(docs)], out, "bpe:4096", val_fraction=0.05, log=lambda *a: None)
        return out
    return Path(choice)


class StepParts:
    """Times each optimizer step of a trainer and records the band of each eager masked forward."""

    bands: list[int] = []  # every band_for answer, whichever trainer asked (read between steps)

    def __init__(self, trainer):
        self.optimizer_s = 0.0
        optimizers = trainer.built.optimizers
        step = optimizers.step

        def timed(*a, **k):
            t0 = time.perf_counter()
            step(*a, **k)
            self.optimizer_s += time.perf_counter() - t0

        optimizers.step = timed

    @classmethod
    def watch_bands(cls) -> None:
        """Record every band the model's attention rule asks for (wherever `band_for` is looked up)."""
        import baseforge.model.attention as attention
        import baseforge.model.gpt as gpt

        band_for = attention.band_for

        def recorded(*a, **k):
            band = band_for(*a, **k)
            cls.bands.append(band)
            return band

        for module in (attention, gpt):
            if getattr(module, "band_for", None) is band_for:
                module.band_for = recorded


def throughput(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        # A first run's compile: an empty Inductor cache (a warm one would hide most of the cost).
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor-cache")
        if args.preset:
            data = preset_data(args.data, Path(tmp))
            StepParts.watch_bands()
        else:
            data = synthetic_data_dir(Path(tmp) / "data", 4_000_000)
        trainers, setup_s, warmup_s, parts = {}, {}, {}, {}
        for name in args.variants:
            t0 = time.perf_counter()
            trainers[name] = make_trainer(
                data, Path(tmp) / name, args.overrides + VARIANTS[name], args.preset
            )
            setup_s[name] = time.perf_counter() - t0
            parts[name] = StepParts(trainers[name])
            compiled = trainers[name].built.views.train is not trainers[name].built.views.plain
            print(
                f"{name}: set up in {setup_s[name]:.1f}s"
                + (
                    " (compiled)"
                    if "compile" in name and compiled
                    else " (compile fell back to eager)"
                    if "compile" in name
                    else ""
                ),
                flush=True,
            )
            warmup_s[name] = []
            for _ in range(args.warmup):
                t0 = time.perf_counter()
                trainers[name].train_step()
                warmup_s[name].append(time.perf_counter() - t0)
                trainers[name].state.step += 1
            print(f"{name}: warm-up steps {', '.join(f'{t:.2f}s' for t in warmup_s[name])}", flush=True)
        times = {name: [] for name in trainers}
        optimizer_times = {name: [] for name in trainers}
        bands = {name: [] for name in trainers}
        for r in range(args.rounds):
            for name, trainer in trainers.items():
                for _ in range(args.steps):
                    parts[name].optimizer_s = 0.0
                    StepParts.bands.clear()
                    t0 = time.perf_counter()
                    trainer.train_step()
                    times[name].append(time.perf_counter() - t0)
                    optimizer_times[name].append(parts[name].optimizer_s)
                    bands[name] += StepParts.bands
                    trainer.state.step += 1
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        rows = {}
        for name, trainer in trainers.items():
            per_step = statistics.median(times[name])
            tps = trainer.tokens_per_step / per_step
            rows[name] = {
                "tokens_per_s": tps,
                "mfu": trainer.built.views.plain.flops_per_token() * tps / trainer.built.runtime.peak,
                "peak_tflops": trainer.built.runtime.peak / 1e12,
                "peak_source": trainer.built.runtime.peak_source,
                "step_s_median": per_step,
                "params": trainer.built.views.plain.num_params(),
                "compiled": trainer.built.views.train is not trainer.built.views.plain,
                "setup_s": setup_s[name],
                "warmup_step_s": warmup_s[name],
                "step_s": times[name],
                "optimizer_s": optimizer_times[name],
                "step_s_min": min(times[name]),
                "optimizer_s_median": statistics.median(optimizer_times[name]),
                "model_s_median": statistics.median(
                    t - o for t, o in zip(times[name], optimizer_times[name])
                ),
            }
            if args.preset and trainer.config.model.attn_doc_mask:
                rows[name]["banded_forwards"] = f"{sum(b > 0 for b in bands[name])}/{len(bands[name])}"
        return rows


def compile_cost(eager: dict, compiled: dict) -> dict:
    """What compiling costs and saves. The compile happens in set-up (`compile_for_training` runs every
    graph of the run once), so it costs the set-up's difference; the first step's excess over the
    median, compiled less eager, says whether anything compiled later. The saving is the median step
    less the optimizer's share (never compiled: the same work in both), which load on a shared machine
    blurs less than the whole step; break-even is the compile over that saving."""

    def first_extra(r: dict) -> float:
        return r["warmup_step_s"][0] - r["step_s_median"] if r["warmup_step_s"] else 0.0

    def paired(r_e: dict, r_c: dict, minus_optimizer: bool) -> float:  # steps of the same round, paired
        def model(r: dict) -> list[float]:
            return [t - o for t, o in zip(r["step_s"], r["optimizer_s"])] if minus_optimizer else r["step_s"]

        return statistics.median(e / c for e, c in zip(model(r_e), model(r_c)))

    compile_s = compiled["setup_s"] - eager["setup_s"]
    saved = eager["model_s_median"] - compiled["model_s_median"]
    return {
        "ratio_paired": paired(eager, compiled, False),
        "ratio_model_paired": paired(eager, compiled, True),
        "compile_s": compile_s,
        "first_step_extra_s": first_extra(compiled) - first_extra(eager),
        "saved_s_per_step": saved,
        "saved_s_per_step_whole": eager["step_s_median"] - compiled["step_s_median"],
        "ratio": eager["step_s_median"] / compiled["step_s_median"],
        "ratio_model": eager["model_s_median"] / compiled["model_s_median"],
        "break_even_steps": compile_s / saved if saved > 0 else None,
    }


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
    p.add_argument(
        "--variants", type=lambda s: s.split(","), help="default: all four; with --preset fp32,fp32+compile"
    )
    p.add_argument("--preset", help="time this preset at its own shape instead of the reference config")
    p.add_argument(
        "--data",
        default="builtin",
        help="with --preset: builtin (the demo's data, data/builtin or prepared as the demo does), "
        "short-docs (each line of the shared webtext's firefox and overheard files of at most "
        f"{SHORT_DOC_CHARS} characters a document, bpe:4096), or a prepared data dir",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every variant (repeatable)",
    )
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--memory", action="store_true", help="measure host memory against data size instead")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    args.variants = args.variants or (["fp32", "fp32+compile"] if args.preset else list(VARIANTS))
    if args.memory:
        result = memory(args)
    elif args.preset:
        result = throughput(args)
        what = " ".join([args.preset, *args.overrides, "on", args.data])
        print(f"\n{what}: median s/step (optimizer's), fastest, set-up, warm-up")
        for name, r in result.items():
            warm = ", ".join(f"{t:.2f}" for t in r["warmup_step_s"])
            print(
                f"{name:<14}{r['step_s_median']:>8.3f}s ({r['optimizer_s_median']:.3f}s)  "
                f"min {r['step_s_min']:.3f}s  set-up {r['setup_s']:.1f}s  warm-up {warm}s"
                + (f"  banded forwards {r['banded_forwards']}" if "banded_forwards" in r else "")
            )
        for base in [n for n in result if "compile" not in n]:
            if f"{base}+compile" in result:
                cost = compile_cost(result[base], result[f"{base}+compile"])
                result[f"{base}: compile"] = cost
                even, c = cost["break_even_steps"], cost
                print(
                    f"{base}: compiled {c['ratio']:.2f}x eager's speed ({c['ratio_model']:.2f}x without "
                    f"the optimizer; paired steps {c['ratio_paired']:.2f}x, {c['ratio_model_paired']:.2f}x), "
                    f"compile {c['compile_s']:.1f}s "
                    f"(first step {c['first_step_extra_s']:+.1f}s), "
                    f"saves {c['saved_s_per_step'] * 1e3:.0f} ms/step (whole step "
                    f"{c['saved_s_per_step_whole'] * 1e3:.0f}), break-even "
                    + (f"{even:.0f} steps" if even is not None else "never")
                )
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
