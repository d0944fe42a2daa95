"""prepare / shards / data info: exact tiktoken ids, worker-independence, FineWeb layout, resume, errors."""

from __future__ import annotations

import gzip
import json
import signal
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from baseforge.data import sources
from baseforge.data.manifest import read_manifest
from baseforge.data.prepare import prepare
from baseforge.data.shards import read_shard, split_shards, write_shard
from baseforge.errors import UserError
from helpers import assert_clean_error, baseforge, popen


def quiet(*_):
    pass


def all_tokens(data_dir, split):
    return np.concatenate([np.asarray(s) for s in split_shards(data_dir, read_manifest(data_dir), split)])


def c4_docs(shared):
    docs = []
    for path in sorted((shared / "corpora" / "c4-sample").glob("*.gz")):
        with gzip.open(path, "rt") as f:
            docs += [json.loads(line)["text"] for line in f if line.strip()]
    return docs


def test_gpt2_ids_are_exactly_tiktokens(shared_data, gpt2_available, tmp_path):
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    src = shared_data / "corpora" / "c4-sample"
    m = prepare([str(src)], tmp_path / "d", "gpt2", val_fraction=0.0, workers=2, log=quiet)
    want = []
    for doc in c4_docs(shared_data):
        want += enc.encode_ordinary(doc) + [enc.eot_token]
    assert m.splits["train"].documents == len(c4_docs(shared_data))
    assert all_tokens(tmp_path / "d", "train").tolist() == want
    # One document per .txt file, in sorted order.
    web = shared_data / "corpora" / "webtext"
    prepare([str(web)], tmp_path / "w", "gpt2", val_fraction=0.0, log=quiet)
    want = []
    for path in sorted(web.glob("*.txt")):
        want += enc.encode_ordinary(path.read_text(encoding="utf-8", errors="replace")) + [enc.eot_token]
    assert all_tokens(tmp_path / "w", "train").tolist() == want


def test_output_is_byte_identical_for_1_and_2_workers(shared_data, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "PIECE_BYTES", 5000)  # many small jsonl pieces
    srcs = [str(shared_data / "corpora" / "webtext"), str(shared_data / "corpora" / "c4-sample")]
    for w in (1, 2):
        prepare(
            srcs, tmp_path / f"w{w}", "bpe:512", val_fraction=0.2, shard_tokens=100_000, workers=w, log=quiet
        )
    files = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "w2").iterdir())
    assert len([f for f in files if f.startswith("train_")]) > 3
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


@pytest.mark.parametrize("piece_bytes", [64, 3000, 1 << 20])
def test_jsonl_pieces_cut_anywhere_read_every_line_once(shared_data, tmp_path, monkeypatch, piece_bytes):
    monkeypatch.setattr(sources, "PIECE_BYTES", piece_bytes)
    source = sources.open_source(str(shared_data / "corpora" / "c4-sample"))
    assert list(source.documents()) == c4_docs(shared_data)
    # The C++ reader and the line-by-line one agree, and tricky strings fall back to the latter.
    tricky = [
        {"text": 'emoji \U0001f600, nul \x00, quote ", tab \t'},
        {"text": "lone \ud800 surrogate"},
        {"text": "x", "n": 1},
        {"text": "y", "n": "changes type"},
    ]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(row) + "\n" for row in tricky) + "\n", encoding="utf-8")
    # A lone surrogate is valid JSON but no text: it becomes U+FFFD (decoding.py).
    expected = [row["text"].replace("\ud800", "\ufffd") for row in tricky]
    assert list(sources.open_source(str(mixed)).documents()) == expected
    piece = next(sources.open_source(str(shared_data / "corpora" / "c4-sample")).pieces())
    assert piece._read_arrow() == piece._read_python()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(1, 7)) + "{oops\n")
    with pytest.raises(UserError, match=r"bad.jsonl:7: not valid JSON"):
        list(sources.open_source(str(bad)).documents())


def test_splits_crop_and_test_slice(shared_data, tmp_path):
    src = str(shared_data / "corpora" / "c4-sample")
    m = prepare(
        [src],
        tmp_path / "c",
        "bpe:400",
        pack="crop",
        context=64,
        val_fraction=0.25,
        test_start=10,
        test_tokens=50,
        log=quiet,
    )
    from baseforge.data.prepare import held_out

    # the seeded sample's documents, each counted once (one straddling the test slice: in test)
    held = sum(held_out(i, 0.25) for i in range(m.documents))
    assert m.splits["val"].documents + m.splits["test"].documents == held
    assert m.splits["test"].tokens == 50
    assert m.cropped["documents"] > 0 and m.cropped["tokens"] > 0
    # Every cropped document is at most 64 tokens and ends where its end-of-text would be.
    eot = m.tokenizer["eot_id"]
    train = all_tokens(tmp_path / "c", "train")
    assert train[-1] == eot or len(train) % 64 == 0
    full = prepare(
        [src], tmp_path / "f", "bpe:400", val_fraction=0.25, test_start=10, test_tokens=50, log=quiet
    )
    assert m.tokens + m.cropped["tokens"] == full.tokens


@pytest.mark.parametrize("crop", [None, 128])
def test_every_token_lands_where_the_split_rule_says(shared_data, gpt2_available, tmp_path, crop):
    """Train, val and test are exactly the documents the held-out rule picks (cropped if asked),
    and a train-token budget stops right after the document that reaches it."""
    import tiktoken

    from baseforge.data.prepare import held_out

    enc = tiktoken.get_encoding("gpt2")
    docs = [enc.encode_ordinary(d) + [enc.eot_token] for d in c4_docs(shared_data)]
    docs = [d[:crop] if crop else d for d in docs]
    train = [t for i, d in enumerate(docs) if not held_out(i, 0.05) for t in d]
    held = [t for i, d in enumerate(docs) if held_out(i, 0.05) for t in d]
    src = str(shared_data / "corpora" / "c4-sample")
    pack = dict(pack="crop", context=crop) if crop else {}
    lo, hi = len(held) // 4, len(held) // 2  # the test slice: held-out tokens [lo, hi)
    prepare(
        [src],
        tmp_path / "d",
        "gpt2",
        val_fraction=0.05,
        test_start=lo,
        test_tokens=hi - lo,
        workers=2,
        shard_tokens=len(train) // 5,
        min_val_tokens=0,  # the document rule alone (the floor: tests/test_prepare.py)
        log=quiet,
        **pack,
    )
    assert all_tokens(tmp_path / "d", "train").tolist() == train
    assert all_tokens(tmp_path / "d", "test").tolist() == held[lo:hi]
    assert all_tokens(tmp_path / "d", "val").tolist() == held[:lo] + held[hi:]
    budget = len(train) * 3 // 4  # past the first held-out document (else val is carved from the tail)
    m = prepare(
        [src], tmp_path / "b", "gpt2", val_fraction=0.05, max_train_tokens=budget, min_val_tokens=0,
        log=quiet, **pack,
    )  # fmt: skip
    assert m.held_out == "sample" and m.val_seed == 0
    got = all_tokens(tmp_path / "b", "train").tolist()
    ends = np.cumsum([len(d) for i, d in enumerate(docs) if not held_out(i, 0.05)])
    assert got == train[: ends[np.argmax(ends >= budget)]]  # up to the end of the document that reaches it
    assert m.splits["train"].documents == sum(1 for i in range(m.documents) if not held_out(i, 0.05))


def test_fineweb_from_a_local_copy_laid_out_like_the_hub(tmp_path):
    root = tmp_path / "fineweb"
    (root / "sample" / "10BT").mkdir(parents=True)
    columns = ["text", "id", "dump", "url", "date", "file_path", "language", "language_score", "token_count"]
    texts = []
    for k in range(2):
        rows = [
            f"Document {k}-{i}: the weather in city {i} is {'sunny' if i % 2 else 'rainy'} today." * 5
            for i in range(300)
        ]
        texts += rows
        table = pa.table(
            {
                "text": rows,
                "id": [f"<urn:{k}-{i}>" for i in range(300)],
                "dump": ["CC-MAIN"] * 300,
                "url": ["http://x"] * 300,
                "date": ["2024"] * 300,
                "file_path": ["s3://x"] * 300,
                "language": ["en"] * 300,
                "language_score": [0.9] * 300,
                "token_count": [60] * 300,
            }
        )
        assert table.column_names == columns
        pq.write_table(table, root / "sample" / "10BT" / f"00{k}_00000.parquet", row_group_size=64)
    result = baseforge(
        "prepare",
        "fineweb",
        "--local",
        root,
        "--out",
        tmp_path / "d",
        "--tokenizer",
        "bpe:300",
        "--val-fraction",
        "0.1",
    )
    assert result.returncode == 0, result.stderr
    m = read_manifest(tmp_path / "d")
    assert m.documents == 600 and m.sources == ("fineweb",)
    # --max-tokens stops early, at a document boundary past the limit.
    result = baseforge(
        "prepare",
        "fineweb",
        "--local",
        root,
        "--out",
        tmp_path / "e",
        "--tokenizer",
        "bpe:300",
        "--max-tokens",
        "5000",
    )
    assert result.returncode == 0, result.stderr
    assert 5000 <= read_manifest(tmp_path / "e").tokens < 5200


def test_hub_unreachable_is_one_clear_line(tmp_path):
    import os

    env_offline = {"HF_HUB_OFFLINE": "1"}
    os.environ.update(env_offline)
    try:
        result = baseforge("prepare", "fineweb", "--out", tmp_path / "d", "--tokenizer", "bpe:300")
    finally:
        os.environ.pop("HF_HUB_OFFLINE")
    assert_clean_error(result, "Hugging Face Hub", "--local")
    result = baseforge(
        "prepare", "fineweb-edu", "--out", tmp_path / "d", "--tokenizer", "bpe:300", timeout=120
    )
    assert_clean_error(result, "Hugging Face Hub", "--local")


def test_interrupted_prepare_resumes_to_the_same_bytes(shared_data, tmp_path):
    src = str(shared_data / "corpora" / "tinyshakespeare.txt")
    args = ["--tokenizer", "gpt2", "--val-fraction", "0", "--shard-tokens", "20000", "--workers", "1"]
    ref = baseforge(
        "prepare", src, str(shared_data / "corpora" / "webtext"), "--out", tmp_path / "ref", *args
    )
    assert ref.returncode == 0, ref.stderr
    proc = popen("prepare", src, str(shared_data / "corpora" / "webtext"), "--out", tmp_path / "cut", *args)
    deadline = time.monotonic() + 60
    while not (tmp_path / "cut" / ".prepare-progress.json").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "manifest.json").exists()  # an unfinished dir never looks valid
    again = baseforge(
        "prepare", src, str(shared_data / "corpora" / "webtext"), "--out", tmp_path / "cut", *args
    )
    assert again.returncode == 0, again.stderr
    ref_files = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert ref_files == sorted(p.name for p in (tmp_path / "cut").iterdir())
    for name in ref_files:
        if name.endswith(".bin"):
            assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name


def test_shard_round_trip_and_corruption(tmp_path):
    tokens = np.array([0, 1, 65535, 7])
    write_shard(tmp_path / "a.bin", tokens, 65536)
    assert read_shard(tmp_path / "a.bin").tolist() == tokens.tolist()
    assert read_shard(tmp_path / "a.bin").dtype == np.uint16
    write_shard(tmp_path / "b.bin", np.array([70000, 1]), 100000)
    assert (
        read_shard(tmp_path / "b.bin").tolist() == [70000, 1]
        and read_shard(tmp_path / "b.bin").dtype == np.uint32
    )
    data = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[:-3])
    with pytest.raises(UserError, match="t.bin is corrupt or truncated"):
        read_shard(tmp_path / "t.bin")
    (tmp_path / "m.bin").write_bytes(b"XXXXXXXX" + data[8:])
    with pytest.raises(UserError, match="m.bin is not a baseforge token shard"):
        read_shard(tmp_path / "m.bin")
    with pytest.raises(ValueError):
        write_shard(tmp_path / "c.bin", np.array([5]), 5)


def test_user_errors_are_one_clear_line(shared_data, tmp_path):
    out = tmp_path / "d"
    assert_clean_error(baseforge("prepare", tmp_path / "missing.txt", "--out", out), "not found")
    assert_clean_error(baseforge("prepare", "nosuchsource", "--out", out), "not found")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.jsonl").write_text("")
    assert_clean_error(
        baseforge("prepare", tmp_path / "empty", "--out", out, "--tokenizer", "bpe:300"), "empty"
    )
    src = shared_data / "corpora" / "tinyshakespeare.txt"
    assert_clean_error(
        baseforge("prepare", src, "--out", out, "--tokenizer", "wordpiece"), "unknown tokenizer"
    )
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    assert_clean_error(
        baseforge("prepare", tmp_path / "bad.jsonl", "--out", out, "--tokenizer", "bpe:300"), "bad.jsonl:2"
    )
    assert not (out / "manifest.json").exists()
    # A good data dir, then a corrupted shard: data info --check names it; training refuses it.
    good = baseforge("prepare", src, "--out", out, "--tokenizer", "bpe:300", "--val-fraction", "0")
    assert good.returncode == 0, good.stderr
    assert baseforge("data", "info", out, "--check").returncode == 0
    assert_clean_error(baseforge("prepare", src, "--out", out, "--tokenizer", "bpe:400"), "--overwrite")
    shard = out / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert_clean_error(baseforge("data", "info", out, "--check"), "train_000000.bin", "truncated")
    assert_clean_error(baseforge("train", "--data", out, "--out", tmp_path / "run"), "train_000000.bin")
