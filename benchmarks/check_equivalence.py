"""Same seed, same data, two versions of baseforge: are the training runs identical, bit for bit?

Used to show that a refactor changed no behaviour. Each source tree (a checkout's `src/`) trains
the same fixed-seed `cpu-tiny` runs through the CLI: dropout on, gradient accumulation 2,
validation and checkpoints along the way, and the run stopped by a signal half-way and resumed; once
as the write-up's recipe, once with the round-2 keys (documents apart, value embeddings, Muon with
NorMuon, best-fit packing, a batch schedule). Every logged number (loss, val_loss, grad_norm, lr) and
the final weights' sha256 must be equal.

    git worktree add --detach /tmp/before <old commit>
    python benchmarks/check_equivalence.py --before /tmp/before/src --after src \
        --out benchmarks/results/refactor-equivalence.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = [
    "max_steps=60",
    "dropout=0.1",
    "global_batch=16",
    "micro_batch=8",
    "log_every=1",
    "eval_every=20",
    "eval_tokens=16384",
    "checkpoint_every=30",
    "sample_tokens=0",
]
ROUND2 = ["pos_emb=rope", "norm=rmsnorm", "attn_doc_mask=true", "value_embeds=1", "optimizer=muon"]
ROUND2 += ["normuon=true", "packing=bestfit", "batch_schedule=8@2e4", "schedule=wsd"]
CONFIGS = {"seed": SETTINGS, "round2": SETTINGS + ROUND2}
COMPARED = ("step", "tokens", "loss", "val_loss", "grad_norm", "lr", "clip_frac")


def baseforge(src: Path, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    subprocess.run([sys.executable, "-m", "baseforge", *args], env=env, check=True, capture_output=True)


def run(src: Path, data: Path, out: Path, settings: list[str]) -> dict:
    """Train 60 steps, stopped by SIGTERM once step 30 is logged, then --resume to the end; return the
    logged rows and the final weights' hash (where the signal lands does not matter: resume is exact)."""
    args = [sys.executable, "-m", "baseforge", "train", "--data", str(data), "--out", str(out)]
    args += ["--preset", "cpu-tiny", *[a for s in settings for a in ("--set", s)]]
    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    while proc.poll() is None:
        rows = metrics.read_text().splitlines() if metrics.is_file() else []
        if any(json.loads(r).get("step", 0) >= 30 for r in rows if r.endswith("}")):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    if proc.wait() not in (0, 130):
        raise SystemExit(f"the first half failed: {proc.stderr.read().decode()[-2000:]}")
    baseforge(src, "train", "--data", str(data), "--out", str(out), "--resume")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    latest = (out / "checkpoints" / "latest").read_text().strip()
    rows = [{k: r.get(k) for k in COMPARED} for r in rows]
    weights = tensors_sha256(out / "checkpoints" / latest / "model.safetensors")
    return {"rows": rows, "weights_sha256": weights, "settings": settings}


def tensors_sha256(path: Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: the weights alone (the
    file's metadata holds the resolved config, which a refactor may spell differently)."""
    from safetensors.numpy import load_file

    digest = hashlib.sha256()
    for name, array in sorted(load_file(str(path)).items()):
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="src/ of the old version")
    parser.add_argument("--after", type=Path, required=True, help="src/ of the new version")
    parser.add_argument("--out", type=Path, help="write the comparison here (Markdown)")
    args = parser.parse_args()
    lines = [
        "# Refactor equivalence: the same fixed-seed runs before and after",
        "",
        "Command: `python benchmarks/check_equivalence.py --before OLD/src --after src` (cpu-tiny; "
        "stopped by SIGTERM at step 30 or just after, --resume to 60).",
    ]
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        baseforge(args.before, "prepare", "builtin", "--out", str(data), "--tokenizer", "bpe:4096")
        for name, settings in CONFIGS.items():
            before = run(args.before, data, Path(tmp) / f"before-{name}", settings)
            after = run(args.after, data, Path(tmp) / f"after-{name}", settings)
            lines += comparison(name, settings, before, after)
            same = (
                same
                and before["rows"] == after["rows"]
                and before["weights_sha256"] == after["weights_sha256"]
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if same else 1


def comparison(name: str, settings: list[str], before: dict, after: dict) -> list[str]:
    lines = [
        "",
        f"## {name}: {' '.join(settings)}",
        "",
        f"- logged rows compared: {len(before['rows'])} (fields: {', '.join(COMPARED)})",
        f"- every logged number equal, bit for bit: **{before['rows'] == after['rows']}**",
        f"- final weights equal (sha256 of the tensors): "
        f"**{before['weights_sha256'] == after['weights_sha256']}** "
        f"(`{after['weights_sha256'][:16]}...`)",
        "",
        "| step | loss before | loss after | val before | val after |",
        "|---:|---:|---:|---:|---:|",
    ]
    for b, a in zip(before["rows"], after["rows"]):
        if b.get("val_loss") is not None or b["step"] % 10 == 0:
            lines.append(f"| {b['step']} | {b['loss']} | {a['loss']} | {b['val_loss']} | {a['val_loss']} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
