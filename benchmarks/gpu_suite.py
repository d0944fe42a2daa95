"""The GPU suite: CUDA tests, training throughput, nanoGPT and llm.c side by side, and a quality race.

Usage, on a machine with one GPU (no network needed):
    cp -r ../shared/baselines .baselines                     # the peers travel with the checkout
    cp -r ../shared/data/gpt2/tiktoken-cache .baselines/     # optional: GPT-2's BPE offline
    python benchmarks/gpu_suite.py                           # all parts, about 6 minutes
    python benchmarks/gpu_suite.py --part throughput --part baselines   # rerun some parts
    python benchmarks/gpu_suite.py --quick                   # the same code paths on CPU, tiny shapes

Parts: tests (`pytest -m cuda`), throughput (gpt2-124m and gpt2-small-seed at context 1024, bf16 +
compile, micro-batch by search: tokens/s, MFU, peak memory), baselines (the same 124M config and
tokens with nanoGPT's train.py and llm.c's train_gpt2cu), quality (benchmarks/gpu_quality.py).
Everything trains through the CLI (`baseforge train ... --set max_steps=N`) and is read back from
metrics.jsonl. The corpus is this machine's own Python site-packages: its *.py files, copied as
.txt (until `prepare --include '*.py'` lands), prepared with `baseforge prepare`.
Real runs write benchmarks/results/gpu-<gpu name>.{md,json}; --quick writes only under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
PARTS = ["tests", "throughput", "baselines", "quality"]
PRESETS = ["gpt2-124m", "gpt2-small-seed"]
CONTEXT = 1024


@dataclass
class Suite:
    quick: bool
    work: Path
    baselines: Path
    steps: int
    results: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return "cpu" if self.quick else "cuda"

    def log(self, msg: str) -> None:
        print(f"[gpu_suite] {msg}", flush=True)


def env() -> dict:
    out = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for cache in (ROOT / ".baselines" / "tiktoken-cache", ROOT.parent / "shared/data/gpt2/tiktoken-cache"):
        if cache.is_dir():
            out.setdefault("TIKTOKEN_CACHE_DIR", str(cache))
    return out


def sh(suite: Suite, cmd: list, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    suite.log("$ " + " ".join(map(str, cmd)))
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env())
    if check and result.returncode != 0:
        raise RuntimeError(f"failed ({result.returncode}): {result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def baseforge(suite: Suite, *args) -> subprocess.CompletedProcess:
    return sh(suite, [sys.executable, "-m", "baseforge", *args])


# --- data ---------------------------------------------------------------------------------------------
def corpus(suite: Suite, megabytes: float) -> Path:
    """Site-packages *.py as .txt files (what `prepare DIR` reads today), up to `megabytes`."""
    out = suite.work / "corpus"
    if out.is_dir():
        return out
    out.mkdir(parents=True)
    budget = int(megabytes * 1e6)
    roots = {Path(sysconfig.get_paths()["purelib"]), Path(os.__file__).parent}
    for i, path in enumerate(sorted(p for root in roots for p in root.rglob("*.py"))):
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        (out / f"{i:07d}.txt").write_text(text)
        budget -= len(text)
        if budget <= 0:
            break
    return out


def prepare(suite: Suite) -> Path:
    data = suite.work / "data"
    if (data / "manifest.json").is_file():
        return data
    tokenizer = "gpt2" if "TIKTOKEN_CACHE_DIR" in env() else "bpe:4096"
    if tokenizer != "gpt2":
        suite.notes.append("no GPT-2 BPE cache: tokenizer bpe:4096 (the model heads stay 50257 wide)")
    source = corpus(suite, 0.3 if suite.quick else 150)
    tok, val = ("bpe:512", "0.1") if suite.quick else (tokenizer, "0.02")
    baseforge(suite, "prepare", source, "--out", data, "--tokenizer", tok, "--val-fraction", val)
    return data


# --- parts --------------------------------------------------------------------------------------------
def part_tests(suite: Suite) -> dict:
    r = sh(
        suite, [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"], ROOT, check=False
    )
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    failures = [line for line in r.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"summary": summary, "counts": counts, "failures": failures, "returncode": r.returncode}


def train_keys(suite: Suite, steps: int) -> list[str]:
    if suite.quick:
        keys = ["device=cpu", "precision=fp32", "compile=false", "n_layer=2", "n_embd=64", "n_head=2"]
        keys += ["context=64", "global_batch=4", "micro_batch=auto"]
    else:
        keys = ["device=cuda", "precision=bf16", "compile=true", "micro_batch=auto", f"context={CONTEXT}"]
    keys += [f"max_steps={steps}", "log_every=1", f"eval_every={steps}", "eval_tokens=65536"]
    return keys + ["checkpoint_every=1000000", "sample_tokens=0"]


def throughput_run(suite: Suite, data: Path, preset: str) -> dict:
    from baseforge.train.metrics import read_metrics

    run = suite.work / f"throughput-{preset}"
    shutil.rmtree(run, ignore_errors=True)
    keys = train_keys(suite, suite.steps)
    out = baseforge(
        suite,
        "train",
        "--data",
        data,
        "--out",
        run,
        "--preset",
        preset,
        *sum((["--set", k] for k in keys), []),
    )
    rows = [r for r in read_metrics(run) if r.get("loss") is not None]
    steady = rows[len(rows) // 3 :] or rows  # the first third: compilation and warm-up
    micro = re.search(r"micro_batch auto: (\d+) fits; gradient accumulation (\d+)", out.stdout + out.stderr)
    config = json.loads((run / "config.json").read_text())
    return {
        "preset": preset,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu": statistics.median(r["mfu"] for r in steady) if steady[0].get("mfu") is not None else None,
        "peak_mem_gb": max(r["mem_gb"] for r in rows),
        "micro_batch": int(micro[1]) if micro else None,
        "grad_accum": int(micro[2]) if micro else None,
        "global_batch": config["train"]["global_batch"],
        "context": config["model"]["context"],
        "steps": len(rows),
    }


def part_throughput(suite: Suite, data: Path) -> list[dict]:
    return [throughput_run(suite, data, preset) for preset in PRESETS]


def flat_tokens(data: Path, split: str) -> np.ndarray:
    from baseforge.data.shards import read_manifest, split_shards

    return np.concatenate(split_shards(data, read_manifest(data), split)).astype(np.uint16)


def nanogpt(suite: Suite, data: Path, ref: dict) -> dict | None:
    src = suite.baselines / "nanoGPT"
    if not (src / "train.py").is_file():
        suite.notes.append(
            f"nanoGPT skipped: {src}/train.py not found (copy ../shared/baselines to .baselines)"
        )
        return None
    work = suite.work / "nanogpt"
    (work / "data" / "bf").mkdir(parents=True, exist_ok=True)
    for name in ("train.py", "model.py", "configurator.py"):
        shutil.copy(src / name, work / name)
    for split in ("train", "val"):  # flat uint16 ids, no header: nanoGPT's format, the same tokens
        flat_tokens(data, split).tofile(work / "data" / "bf" / f"{split}.bin")
    micro, accum, context = ref["micro_batch"] or 4, ref["grad_accum"] or 1, ref["context"]
    args = [f"--batch_size={micro}", f"--gradient_accumulation_steps={accum}", f"--block_size={context}"]
    args += [f"--max_iters={suite.steps}", "--eval_interval=1000000", "--eval_iters=1", "--log_interval=1"]
    args += ["--dataset=bf", "--out_dir=out", "--always_save_checkpoint=False", "--dropout=0.0"]
    if suite.quick:
        args += [
            "--device=cpu",
            "--compile=False",
            "--dtype=float32",
            "--n_layer=2",
            "--n_head=2",
            "--n_embd=64",
        ]
    else:
        args += ["--device=cuda", "--compile=True", "--dtype=bfloat16"]
    out = sh(suite, [sys.executable, "train.py", *args], work).stdout
    ms = [float(t) for t in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", out)]
    steady = ms[len(ms) // 3 :] or ms
    tokens_per_iter = micro * accum * context
    return {"tokens_per_s": tokens_per_iter / (statistics.median(steady) / 1000), "iters": len(ms)}


def llmc(suite: Suite, data: Path, ref: dict) -> dict | None:
    src = suite.baselines / "llm.c"
    if suite.quick or shutil.which("nvcc") is None or not (src / "train_gpt2.cu").is_file():
        suite.notes.append(
            "llm.c skipped: " + ("--quick" if suite.quick else "no nvcc or no .baselines/llm.c")
        )
        return None
    work = suite.work / "llmc"
    if not (work / "train_gpt2cu").is_file():
        shutil.copytree(src, work, dirs_exist_ok=True)
        sh(suite, ["make", "train_gpt2cu", "USE_CUDNN=0", "NO_MULTI_GPU=1", f"-j{os.cpu_count()}"], work)
    for split in ("train", "val"):  # llm.c's shard: 256 x int32 header (magic, version, count), uint16 ids
        tokens = flat_tokens(data, split)
        header = np.zeros(256, dtype=np.int32)
        header[:3] = (20240520, 1, len(tokens))
        with open(work / f"bf_{split}_000000.bin", "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.tobytes())
    micro, context = ref["micro_batch"] or 8, ref["context"]
    total = micro * (ref["grad_accum"] or 1) * context
    args = ["-i", "bf_train_*.bin", "-j", "bf_val_*.bin", "-e", "d12", "-b", micro, "-t", context]
    args += ["-d", total, "-x", suite.steps, "-v", 1000000, "-s", 1000000, "-h", 0, "-o", "out"]
    out = sh(suite, ["./train_gpt2cu", *args], work).stdout
    rates = [float(t) for t in re.findall(r"\| ([\d.]+) tok/s", out)]
    steady = rates[len(rates) // 3 :] or rates
    return {"tokens_per_s": statistics.median(steady), "steps": len(rates)}


def part_baselines(suite: Suite, data: Path) -> dict:
    ref = next((r for r in suite.results.get("throughput", []) if r["preset"] == "gpt2-124m"), None)
    if ref is None:
        ref = throughput_run(suite, data, "gpt2-124m")
    out = {"baseforge": ref, "nanogpt": nanogpt(suite, data, ref), "llmc": llmc(suite, data, ref)}
    for peer in ("nanogpt", "llmc"):
        if out[peer]:
            out[f"ratio_vs_{peer}"] = ref["tokens_per_s"] / out[peer]["tokens_per_s"]
    return out


def part_quality(suite: Suite, data: Path, minutes: float) -> dict:
    from gpu_quality import chart, run_quality

    result = run_quality(data, suite.work / "quality", minutes, suite.quick, suite.log)
    chart(result, suite.work / "quality.png")
    return result


# --- report -------------------------------------------------------------------------------------------
def fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(suite: Suite, meta: dict) -> str:
    r = suite.results
    lines = [
        f"# GPU suite on {meta['gpu']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"torch {meta['torch']}, ",
    ]
    lines[-1] += f"{meta['date']}, total {meta['seconds']:.0f} s."
    if suite.quick:
        lines[-1] += " QUICK (CPU, tiny shapes): not GPU figures."
    if "tests" in r:
        lines += [
            "",
            "## CUDA tests",
            "",
            f"`pytest -m cuda`: {r['tests']['summary']}",
            *r["tests"]["failures"],
        ]
    if "throughput" in r:
        lines += ["", "## Throughput (bf16 + compile, micro-batch by search)", ""]
        lines += [
            "| preset | tokens/s | MFU | peak memory | micro x accum | context |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for t in r["throughput"]:
            mfu = fmt(100 * t["mfu"], ".1f") + "%" if t["mfu"] is not None else "-"
            lines.append(
                f"| {t['preset']} | {fmt(t['tokens_per_s'])} | {mfu} | {t['peak_mem_gb']:.1f} GB | "
                f"{t['micro_batch']} x {t['grad_accum']} | {t['context']} |"
            )
    if "baselines" in r:
        b = r["baselines"]
        lines += ["", "## Against nanoGPT and llm.c (same config, same tokens, same GPU, same run)", ""]
        lines += ["| trainer | tokens/s | baseforge / it |", "|---|---:|---:|"]
        lines.append(f"| baseforge | {fmt(b['baseforge']['tokens_per_s'])} | 1.00 |")
        for peer in ("nanogpt", "llmc"):
            if b[peer]:
                lines.append(f"| {peer} | {fmt(b[peer]['tokens_per_s'])} | {b[f'ratio_vs_{peer}']:.2f} |")
    if "quality" in r:
        q = r["quality"]
        lines += ["", f"## Quality: same data, ~equal training time ({q['equal_time_s']:.0f} s)", ""]
        lines += ["| recipe | val @ equal time | val @ equal tokens | final val | tokens | tokens/s |"]
        lines += ["|---|---:|---:|---:|---:|---:|"]
        for name, v in q["recipes"].items():
            lines.append(
                f"| {name} | {fmt(v['val_loss_at_equal_time'], '.4f')} "
                f"| {fmt(v['val_loss_at_equal_tokens'], '.4f')} | {fmt(v['final_val_loss'], '.4f')} "
                f"| {fmt(v['tokens'])} | {fmt(v['tokens_per_s'])} |"
            )
    if suite.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in suite.notes]]
    return "\n".join(lines) + "\n"


def write_results(suite: Suite, meta: dict) -> Path:
    from baseforge.fileio import atomic_write_json, atomic_write_text

    if suite.quick:
        stem = suite.work / "gpu-quick"
    else:  # only real GPU runs write into benchmarks/results
        stem = (
            ROOT
            / "benchmarks"
            / "results"
            / ("gpu-" + re.sub(r"[^a-z0-9]+", "-", meta["gpu"].lower()).strip("-"))
        )
    atomic_write_json(stem.with_suffix(".json"), {"meta": meta, "notes": suite.notes, **suite.results})
    atomic_write_text(stem.with_suffix(".md"), markdown(suite, meta))
    if (suite.work / "quality.png").is_file():
        shutil.copy(suite.work / "quality.png", f"{stem}-quality.png")
    return stem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", action="append", choices=PARTS, help="repeatable; default: all")
    ap.add_argument("--quick", action="store_true", help="same code paths on CPU with tiny shapes")
    ap.add_argument("--baselines", type=Path, default=ROOT / ".baselines")
    ap.add_argument("--work", type=Path, default=ROOT / ".gpu-suite")
    ap.add_argument("--steps", type=int, help="training steps per throughput run (default 30; quick 3)")
    ap.add_argument(
        "--minutes", type=float, default=1.5, help="training minutes per recipe in the quality part"
    )
    args = ap.parse_args(argv)
    import torch

    if not args.quick and not torch.cuda.is_available():
        print("gpu_suite: no CUDA GPU here; use --quick for the CPU smoke run", file=sys.stderr)
        return 2
    suite = Suite(args.quick, args.work, args.baselines, args.steps or (3 if args.quick else 30))
    suite.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    parts = args.part or PARTS
    data = prepare(suite) if set(parts) - {"tests"} else None
    for part in PARTS:
        if part not in parts:
            continue
        suite.log(f"part {part}")
        try:
            if part == "tests":
                suite.results["tests"] = part_tests(suite)
            elif part == "throughput":
                suite.results["throughput"] = part_throughput(suite, data)
            elif part == "baselines":
                suite.results["baselines"] = part_baselines(suite, data)
            else:
                suite.results["quality"] = part_quality(suite, data, args.minutes)
        except Exception as exc:  # noqa: BLE001 - one failed part must not lose the others' results
            suite.notes.append(f"part {part} failed: {type(exc).__name__}: {str(exc)[:1500]}")
            suite.log(suite.notes[-1])
    meta = {
        "gpu": "cpu (quick)" if args.quick else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "command": " ".join(
            ["python benchmarks/gpu_suite.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": time.time() - t0,
        "parts": parts,
    }
    stem = write_results(suite, meta)
    suite.log(f"wrote {stem}.md and .json")
    print(markdown(suite, meta))
    return 1 if any(n.startswith("part ") for n in suite.notes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
