"""Shared set-up for the benchmarks: synthetic token shards and the shared GPT-2 tokenizer cache."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SHARED = ROOT.parent / "shared" / "data"
# The benchmarks run from a bare checkout (the GPU machine has no baseforge install): this checkout's
# src/ comes first on the path of this process, and child_env() puts it on every child's.
sys.path.insert(0, str(SRC))
# GPT-2's BPE offline: the packed copy that travels to the GPU machine (benchmarks/pack_device.py),
# else ../shared beside the checkout.
TIKTOKEN_CACHES = (ROOT / ".device" / "gpt2" / "tiktoken-cache", SHARED / "gpt2" / "tiktoken-cache")
for _cache in TIKTOKEN_CACHES:
    if _cache.is_dir():
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_cache))
        break


def child_env(**extra: str) -> dict:
    """The environment of every child a benchmark starts: this checkout's src/ first on PYTHONPATH,
    the tiktoken cache found above, and the HF libraries told they are offline (the GPU machine
    has no network; nothing should wait on one)."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return {**env, **extra}


def synthetic_data_dir(
    out: Path, train_tokens: int, val_tokens: int = 1 << 16, shard_tokens: int = 50_000_000, seed: int = 0
) -> Path:
    """A data dir of uniformly random GPT-2 token ids: throughput does not depend on what the tokens say."""
    from baseforge.data.manifest import Manifest, SplitEntry, write_manifest
    from baseforge.data.shards import write_shard

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, total in (("train", train_tokens), ("val", val_tokens)):
        shards, left, k = [], total, 0
        while left > 0:
            n = min(left, shard_tokens)
            name = f"{split}_{k:06d}.bin"
            write_shard(out / name, rng.integers(0, 50257, n, dtype=np.uint16), 50257)
            shards.append((name, n))
            left, k = left - n, k + 1
        splits[split] = SplitEntry.of(shards, 0)
    tokenizer = {"name": "gpt2", "vocab_size": 50257, "eot_id": 50256}
    write_manifest(
        out,
        Manifest(tokenizer, splits, documents=0, tokens=train_tokens + val_tokens, sources=("synthetic",)),
    )
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
