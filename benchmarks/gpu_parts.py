"""The GPU suite's parts: each takes the suite and its own deadline and returns a JSON-able result.

A child that runs past its part's deadline is killed with its whole process group and the part
raises Overran with what it had so far. Every child gets `common.child_env()` (this checkout's src/,
the tiktoken cache, HF offline) and its output goes to the suite's log as well.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

import common

ROOT = common.ROOT
CONTEXT = 1024


class Overran(Exception):
    def __init__(self, message: str, partial: dict | None = None):
        super().__init__(message)
        self.partial = partial or {}


def sh(suite, cmd: list, deadline: float, cwd: Path | None = None, check: bool = True) -> str:
    """Run `cmd` until `deadline` (time.monotonic()); its stdout+stderr, also appended to the log."""
    cmd = [str(c) for c in cmd]
    suite.log("$ " + " ".join(cmd))
    log = open(suite.log_file, "a")
    start = log.tell()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=common.child_env(), start_new_session=True
    )
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        # The output is in the log already; part_tests reads it from here to count what finished.
        partial = {"output": _since(suite, start)}
        raise Overran(f"stopped at its budget: {' '.join(cmd[:6])} ...", partial) from None
    log.close()
    out = _since(suite, start)
    if check and proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd[:6])} ...\n{out[-3000:]}")
    return out


def _since(suite, offset: int) -> str:
    with open(suite.log_file, errors="replace") as f:
        f.seek(offset)
        return f.read()


# --- env and data -------------------------------------------------------------------------------------
def part_env(suite, deadline: float) -> dict:
    import torch

    import baseforge

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "baseforge": str(Path(baseforge.__file__).parent),
        "tiktoken_cache": common.child_env().get("TIKTOKEN_CACHE_DIR"),
        "device": "cpu (quick)" if suite.quick else torch.cuda.get_device_name(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
    query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = sh(
            suite, ["nvidia-smi", f"--query-gpu={query}", "--format=csv"], deadline, check=False
        ).strip()
    if shutil.which("nvcc"):
        info["nvcc"] = sh(suite, ["nvcc", "--version"], deadline, check=False).strip().splitlines()[-1]
    return info


def gpt2_bpe_works(suite, deadline: float) -> bool:
    """Whether GPT-2's BPE loads from the cache, tried in a child with a timeout (tiktoken's own
    download has none, so a missing cache must never reach a training run)."""
    if "TIKTOKEN_CACHE_DIR" not in common.child_env():
        return False
    probe = [sys.executable, "-c", "import tiktoken; tiktoken.get_encoding('gpt2')"]
    try:
        sh(suite, probe, min(deadline, time.monotonic() + 30))
        return True
    except (Overran, RuntimeError):
        return False


def corpus(suite, megabytes: float) -> Path:
    """This machine's own Python sources (site-packages and the standard library), up to `megabytes`."""
    out = suite.work / "corpus"
    if out.is_dir():
        return out
    tmp = suite.work / "corpus.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    budget = int(megabytes * 1e6)
    roots = {Path(sysconfig.get_paths()["purelib"]), Path(os.__file__).parent}
    for i, path in enumerate(sorted(p for root in roots for p in root.rglob("*.py"))):
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        (tmp / f"{i:07d}.txt").write_text(text)
        budget -= len(text)
        if budget <= 0:
            break
    tmp.rename(out)
    return out


def part_data(suite, deadline: float) -> dict:
    data = suite.work / "data"
    if (data / "manifest.json").is_file():
        return {**_data_summary(data), "kept": "prepared by an earlier call on this machine"}
    gpt2 = gpt2_bpe_works(suite, deadline)
    tokenizer = "gpt2" if gpt2 else "bpe:4096"
    source = corpus(suite, 0.3 if suite.quick else 100)
    val = "0.1" if suite.quick else "0.02"
    sh(
        suite,
        [sys.executable, "-m", "baseforge", "prepare", source, "--out", data, "--tokenizer", tokenizer]
        + ["--val-fraction", val],
        deadline,
    )
    note = None if gpt2 else "no working GPT-2 BPE cache: tokenizer bpe:4096 (heads keep the presets' width)"
    return {**_data_summary(data), "note": note}


def _data_summary(data: Path) -> dict:
    from baseforge.data.manifest import read_manifest

    manifest = read_manifest(data)
    tokens = {name: split.tokens for name, split in manifest.splits.items()}
    return {"path": str(data), "tokenizer": manifest.tokenizer["name"], "tokens": tokens}


def data_dir(suite) -> Path:
    data = suite.work / "data"
    if not (data / "manifest.json").is_file():
        raise RuntimeError("no prepared data: run the data part first (it is first in each call)")
    return data


# --- throughput -----------------------------------------------------------------------------------
def train_keys(suite, steps: int) -> list[str]:
    if suite.quick:
        keys = ["device=cpu", "precision=fp32", "compile=false", "n_layer=2", "n_embd=64", "n_head=2"]
        keys += ["context=64", "global_batch=4", "micro_batch=auto"]
    else:
        keys = ["device=cuda", "precision=bf16", "compile=true", "micro_batch=auto", f"context={CONTEXT}"]
    keys += [f"max_steps={steps}", "log_every=1", f"eval_every={steps}", "eval_tokens=65536"]
    return keys + ["checkpoint_every=1000000", "sample_tokens=0"]


def throughput(suite, preset: str, deadline: float) -> dict:
    from baseforge.train.metrics import read_metrics

    run = suite.work / f"throughput-{preset}"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "baseforge", "train", "--data", data_dir(suite), "--out", run]
    cmd += ["--preset", preset, *sum((["--set", k] for k in train_keys(suite, suite.steps)), [])]
    out = sh(suite, cmd, deadline)
    rows = [r for r in read_metrics(run) if r.loss is not None]
    steady = rows[len(rows) // 3 :] or rows  # the first third: compilation and warm-up
    micro = re.search(r"micro_batch auto: (\d+) fits; gradient accumulation (\d+)", out)
    config = json.loads((run / "config.json").read_text())
    return {
        "preset": preset,
        "tokens_per_s": statistics.median(r.tokens_per_s for r in steady),
        "mfu": statistics.median(r.mfu for r in steady) if steady[0].mfu is not None else None,
        # GiB the CUDA allocator reserved at most (what plan and the search count); the CPU: peak RSS
        "peak_reserved_gib": max(r.peak_reserved_gib or r.peak_rss_gib or 0.0 for r in rows),
        "micro_batch": int(micro[1]) if micro else None,
        "grad_accum": int(micro[2]) if micro else None,
        "global_batch": config["train"]["global_batch"],
        "context": config["model"]["context"],
        "vocab_size": config["model"]["vocab_size"],
        "steps": len(rows),
    }


def reference(suite) -> dict:
    record = suite.results.get("throughput-gpt2-124m") or _from_out(suite, "throughput-gpt2-124m")
    if not record or record.get("status") != "ok":
        raise RuntimeError("needs throughput-gpt2-124m's result (same call, or its json in --out)")
    return record["result"]


def _from_out(suite, part: str) -> dict | None:
    found = sorted(suite.out.glob(f"*-{part}.json"))
    return json.loads(found[-1].read_text()) if found else None


# --- flex smoke: the document-masked presets train, compiled and not -------------------------------------
# Each preset at a fixed micro-batch (a quarter to a half of what `baseforge plan` fits on an 80 GB GPU:
# gpt2-speedrun 59, gpt2-small-modern 119), 3 steps, then an evaluation and a short sample, so that the
# training forward's FlexAttention, evaluation's masked SDPA and the sampler all run. Six layers instead
# of twelve (three value tables need six): every code path, half the compile time.
SMOKE = {"gpt2-speedrun": ["micro_batch=16"], "gpt2-small-modern": ["micro_batch=16"]}
SMOKE_QUICK = {
    "gpt2-speedrun": ["attn_window=32", "batch_schedule=2@256"],
    "gpt2-small-modern": ["attn_window=32", "batch_schedule=2@256"],
}


def smoke_keys(suite, preset: str, compiled: bool) -> list[str]:
    if suite.quick:
        keys = ["device=cpu", "precision=fp32", "n_layer=2", "n_embd=64", "n_head=2", "context=64"]
        keys += ["value_embeds=1", "micro_batch=2", "global_batch=4", *SMOKE_QUICK[preset]]
    else:
        keys = ["device=cuda", "precision=bf16", "n_layer=6", *SMOKE[preset]]
    keys += [f"compile={str(compiled).lower()}", "max_steps=3", "max_tokens=0", "log_every=1"]
    return keys + ["eval_every=3", "eval_tokens=65536", "checkpoint_every=1000000", "sample_tokens=16"]


def part_flex_smoke(suite, deadline: float) -> dict:
    """Both presets, compile off then on (the CPU rehearsal: off only; tests/test_cuda_path.py trains
    them compiled on the CPU): finite losses, the kernel each run named, any FlexAttention fallback."""
    from baseforge.train.metrics import read_metrics

    runs: dict[str, dict] = {}
    for preset in SMOKE:
        for compiled in (False,) if suite.quick else (False, True):
            name = f"{preset}{'+compile' if compiled else ''}"
            run = suite.work / f"smoke-{name}"
            shutil.rmtree(run, ignore_errors=True)
            cmd = [sys.executable, "-m", "baseforge", "train", "--data", data_dir(suite), "--out", run]
            cmd += ["--preset", preset, *sum((["--set", k] for k in smoke_keys(suite, preset, compiled)), [])]
            try:
                out = sh(suite, cmd, deadline)
            except Overran as exc:
                raise Overran(str(exc), {"runs": runs, "stopped": name}) from None
            rows = read_metrics(run)
            losses = [r.loss for r in rows if r.loss is not None]
            runs[name] = {
                "losses": losses,
                "val_loss": rows[-1].val_loss,
                "tokens_per_s": rows[-1].tokens_per_s,
                "peak_reserved_gib": rows[-1].peak_reserved_gib,
                "attention": next((ln for ln in out.splitlines() if ln.startswith("attention:")), None),
                "compiled": "compiled"
                in next((ln for ln in out.splitlines() if ln.startswith("device ")), ""),
                "flex_fallback": next((ln for ln in out.splitlines() if "FlexAttention is off" in ln), None),
                "flex_compiles": json.loads((run / "summary.json").read_text()).get("flex_compiles"),
            }
            if len(losses) != 3 or not all(np.isfinite(losses)):
                raise RuntimeError(f"{name}: losses {losses}")
    return {"runs": runs}


# --- the peers --------------------------------------------------------------------------------------
def flat_tokens(data: Path, split: str) -> np.ndarray:
    from baseforge.data.manifest import read_manifest
    from baseforge.data.shards import split_shards

    return np.concatenate(split_shards(data, read_manifest(data), split)).astype(np.uint16)


def part_nanogpt(suite, deadline: float) -> dict:
    src = suite.baselines / "nanoGPT"
    if not (src / "train.py").is_file():
        return {"skipped": f"{src}/train.py not found (benchmarks/pack_device.py packs it)"}
    ref = reference(suite)
    work = suite.work / "nanogpt"
    (work / "data" / "bf").mkdir(parents=True, exist_ok=True)
    for name in ("train.py", "model.py", "configurator.py"):
        shutil.copy(src / name, work / name)
    data = data_dir(suite)
    for split in ("train", "val"):  # flat uint16 ids, no header: nanoGPT's format, the same tokens
        flat_tokens(data, split).tofile(work / "data" / "bf" / f"{split}.bin")
    micro, accum, context = ref["micro_batch"] or 4, ref["grad_accum"] or 1, ref["context"]
    # gpt2-124m's shape: biases on, dropout 0, tied head; nanoGPT pads its vocabulary to 50304 itself.
    args = [f"--batch_size={micro}", f"--gradient_accumulation_steps={accum}", f"--block_size={context}"]
    args += [f"--max_iters={suite.steps}", "--eval_interval=1000000", "--eval_iters=1", "--log_interval=1"]
    args += [
        "--dataset=bf",
        "--out_dir=out",
        "--always_save_checkpoint=False",
        "--dropout=0.0",
        "--bias=True",
    ]
    if suite.quick:
        args += ["--device=cpu", "--compile=False", "--dtype=float32"]
        args += ["--n_layer=2", "--n_head=2", "--n_embd=64"]
    else:
        args += ["--device=cuda", "--compile=True", "--dtype=bfloat16"]
    out = sh(suite, [sys.executable, "train.py", *args], deadline, cwd=work)
    ms = [float(t) for t in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", out)]
    steady = ms[len(ms) // 3 :] or ms
    rate = micro * accum * context / (statistics.median(steady) / 1000)
    return {"tokens_per_s": rate, "iters": len(ms), "baseforge_over_nanogpt": ref["tokens_per_s"] / rate}


def part_llmc(suite, deadline: float) -> dict:
    src = suite.baselines / "llm.c"
    if suite.quick or shutil.which("nvcc") is None or not (src / "train_gpt2.cu").is_file():
        why = "--quick (needs nvcc and a GPU)" if suite.quick else "no nvcc, or no llm.c in the baselines"
        return {"skipped": why}
    ref = reference(suite)
    work = suite.work / "llmc"
    if not (work / "train_gpt2cu").is_file():
        shutil.copytree(src, work, dirs_exist_ok=True)
        make = ["make", "train_gpt2cu", "USE_CUDNN=0", "NO_MULTI_GPU=1", f"-j{os.cpu_count()}"]
        sh(suite, make, deadline, cwd=work)
    data = data_dir(suite)
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
    out = sh(suite, ["./train_gpt2cu", *args], deadline, cwd=work)
    rates = [float(t) for t in re.findall(r"\| ([\d.]+) tok/s", out)]
    steady = rates[len(rates) // 3 :] or rates
    rate = statistics.median(steady)
    return {"tokens_per_s": rate, "steps": len(rates), "baseforge_over_llmc": ref["tokens_per_s"] / rate}


# --- CUDA tests and the quality race -------------------------------------------------------------------
def part_tests(suite, deadline: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py"]
    try:
        out, stopped = sh(suite, cmd, deadline, cwd=ROOT, check=False), None
    except Overran as exc:
        out, stopped = exc.partial.pop("output"), str(exc)
    outcomes = dict(re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", out, re.M))
    counts = {k: list(outcomes.values()).count(k) for k in sorted(set(outcomes.values()))}
    failed = [name for name, k in outcomes.items() if k in ("FAILED", "ERROR")]
    result = {"counts": counts, "failed": failed, "tests": outcomes}
    if stopped:
        raise Overran(f"{stopped}; {len(outcomes)} tests had finished", result)
    if failed or not outcomes:
        raise RuntimeError(f"CUDA tests: {counts}; failed: {failed or 'no test ran'}")
    return result


def part_quality(suite, deadline: float) -> dict:
    from gpu_quality import run_quality

    def runner(cmd: list) -> str:
        return sh(suite, cmd, deadline)

    result = run_quality(data_dir(suite), suite.work / "quality", suite.quality_tokens, suite.quick, runner)
    return result


PARTS = {
    "env": part_env,
    "data": part_data,
    "flex-smoke": part_flex_smoke,
    "throughput-gpt2-124m": lambda suite, deadline: throughput(suite, "gpt2-124m", deadline),
    "nanogpt": part_nanogpt,
    "tests": part_tests,
    "llmc": part_llmc,
    "throughput-gpt2-small-seed": lambda suite, deadline: throughput(suite, "gpt2-small-seed", deadline),
    "quality": part_quality,
}
