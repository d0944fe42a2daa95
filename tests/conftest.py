"""Shared test fixtures: the real data in ../shared/data, skipped clearly when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TIKTOKEN_CACHE = SHARED / "gpt2" / "tiktoken-cache"

# GPT-2's BPE offline: point tiktoken at the shared cache before anything imports it.
if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def gpt2_available(shared_data) -> None:
    if not TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"GPT-2 tiktoken cache not found at {TIKTOKEN_CACHE}")


def build_data_dir(out: Path, text: str, vocab: int = 512, val_every: int = 10, tok=None) -> Path:
    """A small prepared data dir written with the tokenizer and shard writer directly, so trainer
    tests do not depend on `prepare`. Documents are the text's paragraphs; every 10th is validation.
    `tok`: a trained tokenizer to use (several dirs of one mixture), else one trained on the text."""
    import numpy as np

    from baseforge.data.manifest import Manifest, SplitEntry, write_manifest
    from baseforge.data.shards import write_shard
    from baseforge.tokenizer import TrainedBPETokenizer

    docs = [d for d in text.split("\n\n") if d.strip()]
    tok = tok or TrainedBPETokenizer.train(docs, vocab)
    train, val = [], []
    for i, ids in enumerate(tok.encode_batch(docs)):
        (val if i % val_every == 0 else train).extend(ids + [tok.eot_id])
    out.mkdir(parents=True, exist_ok=True)
    write_shard(out / "train_000000.bin", np.array(train), tok.vocab_size)
    write_shard(out / "val_000000.bin", np.array(val), tok.vocab_size)
    tok.save(out)

    def split(name, ids):
        return SplitEntry.of([(f"{name}_000000.bin", len(ids))], 0)

    write_manifest(
        out,
        Manifest(
            tokenizer=tok.record(),
            sources=("test",),
            documents=len(docs),
            tokens=len(train) + len(val),
            splits={"train": split("train", train), "val": split("val", val)},
        ),
    )
    return out


@pytest.fixture(scope="session")
def shakespeare_dir(tmp_path_factory) -> Path:
    path = SHARED / "corpora" / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"shared test data not found at {path}")
    return build_data_dir(tmp_path_factory.mktemp("data") / "shakespeare", path.read_text())
