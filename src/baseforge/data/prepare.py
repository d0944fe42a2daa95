"""`prepare`: documents -> token ids (in worker processes) -> packed, split, fixed-size shards.

Streaming: each source is cut into pieces (a parquet row group, a megabyte of jsonl lines, a group
of text files; see sources.py) that worker processes read and tokenize; their results come back
in order (a bounded window of pieces in flight) and are written shard by shard, so memory stays
flat however large the corpus, and the output is byte-identical for any number of workers.

Splits: document i is held out when floor((i+1)*f) > floor(i*f) for f = val_fraction (exactly a
fraction f of the documents, spread evenly). Held-out tokens go to `val`, except the optional fixed
`test` slice, tokens [test_start, test_start + test_tokens) of the held-out stream.

Packing: `concat` puts one end-of-text token after every document (the write-up's choice);
`crop` also truncates each document (with its end-of-text) to `context` tokens and reports what
that drops. Whenever a train shard is full, the held-out buffers are flushed too and a progress
record is saved, so an interrupted prepare resumes from its last complete shard.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from itertools import islice
from pathlib import Path

import numpy as np

from baseforge.data.packing import BackgroundWrites, Router, SplitWriter, held_out
from baseforge.data.shards import MANIFEST, token_dtype, write_manifest
from baseforge.data.sources import open_source, preload_readers
from baseforge.errors import UserError
from baseforge.fileio import atomic_path, atomic_write_text
from baseforge.tokenizer import GPT2Tokenizer, Tokenizer, TrainedBPETokenizer, load_tokenizer, parse_spec

PROGRESS = ".prepare-progress.json"
PENDING = ".prepare-pending-{}.npy"  # train tokens past the last full shard; numbered by that shard
BPE_SAMPLE_CHARS = 200_000_000  # a trained BPE sees at most this much train text


# --- worker side ------------------------------------------------------------------------------------
_worker_tokenizer: Tokenizer | None = None


def _init_worker(record: dict, directory: str) -> None:
    global _worker_tokenizer
    if _worker_tokenizer is None:  # forked workers inherit the main process's (loading GPT-2's takes 0.3 s)
        _worker_tokenizer = load_tokenizer(record, Path(directory))


def encode_documents(tok: Tokenizer, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All documents' ids, each followed by end-of-text, as one array, plus each document's length.

    One numpy array crosses the process boundary instead of lists of Python ints: pickling those
    cost the parent more than tokenizing cost a worker.
    """
    eot = np.array([tok.eot_id], dtype=np.uint32)
    arrays = tok.encode_arrays(docs)
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays)) + 1
    flat = np.concatenate([x for ids in arrays for x in (ids, eot)], dtype=token_dtype(tok.vocab_size))
    return flat, lengths


def read_and_encode(tok: Tokenizer, piece) -> tuple[np.ndarray, np.ndarray]:
    return encode_documents(tok, piece.read())


def _encode(piece) -> tuple[np.ndarray, np.ndarray]:
    return read_and_encode(_worker_tokenizer, piece)


def _in_order(pool, tasks, ahead: int):
    """Worker results in task order, with at most `ahead` tasks in flight.

    Pool.imap would read the whole input ahead (its feeder thread has no bound) and queue every
    result the parent has not consumed yet; this keeps memory flat however large the corpus.
    """
    pending = deque()
    for task in tasks:
        pending.append(pool.apply_async(_encode, (task,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# --- the pipeline -------------------------------------------------------------------------------------
def make_tokenizer(spec: str, out_dir: Path, train_texts) -> Tokenizer:
    kind, size = parse_spec(spec)
    if kind == "gpt2":
        return GPT2Tokenizer()
    tok = TrainedBPETokenizer.train(train_texts, size)
    tok.save(out_dir)
    return tok


def _bpe_sample(sources, val_fraction):
    chars = 0
    for i, doc in enumerate(_documents(sources)):
        if not held_out(i, val_fraction):
            yield doc
            chars += len(doc)
            if chars >= BPE_SAMPLE_CHARS:
                return


def _documents(sources):
    for source in sources:
        yield from source.documents()


def prepare(
    sources: list[str],
    out_dir: Path | str,
    tokenizer: str = "gpt2",
    *,
    pack: str = "concat",
    context: int | None = None,
    val_fraction: float = 0.01,
    test_start: int = 0,
    test_tokens: int = 0,
    max_tokens: int | None = None,
    max_train_tokens: int | None = None,
    workers: int | None = None,
    shard_tokens: int = 100_000_000,
    local: str | None = None,
    sample: str | None = None,
    text_column: str = "text",
    overwrite: bool = False,
    log=print,
) -> dict:
    """Tokenize `sources` into a data dir; returns its manifest (see shards.py for the format)."""
    out = Path(out_dir)
    if not sources:
        raise UserError("no SOURCE given")
    if pack not in ("concat", "crop"):
        raise UserError(f"--pack must be 'concat' or 'crop', not {pack!r}")
    if pack == "crop" and not context:
        raise UserError("--pack crop needs --context N (the length documents are cropped to)")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), not {val_fraction}")
    if shard_tokens < 1:
        raise UserError("--shard-tokens must be positive")
    parse_spec(tokenizer)
    args = dict(
        sources=list(sources),
        tokenizer=tokenizer,
        pack=pack,
        context=context,
        val_fraction=val_fraction,
        test_start=test_start,
        test_tokens=test_tokens,
        max_tokens=max_tokens,
        max_train_tokens=max_train_tokens,
        shard_tokens=shard_tokens,
        sample=sample,
        text_column=text_column,
    )
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    if (out / MANIFEST).exists():
        existing = json.loads((out / MANIFEST).read_text())
        if existing.get("args_key") == key and not overwrite:
            log(f"{out} is already prepared with these arguments")
            return existing
        if not overwrite:
            raise UserError(
                f"{out} already holds prepared data (made with other arguments); "
                "use --overwrite to replace it, or choose another --out"
            )
        (out / MANIFEST).unlink()  # the dir is no longer a valid data dir until the new manifest lands
    progress = _read_progress(out, key) if not overwrite else None
    out.mkdir(parents=True, exist_ok=True)
    opened = [open_source(s, local=local, sample=sample, text_column=text_column) for s in sources]

    if progress and parse_spec(tokenizer)[0] == "bpe":
        tok = load_tokenizer(progress["tokenizer"], out)
    else:
        tok = make_tokenizer(tokenizer, out, _bpe_sample(opened, val_fraction))
    writers = {
        s: SplitWriter(out, s, tok.vocab_size, (progress or {}).get("splits", {}).get(s))
        for s in ("train", "val", "test")
    }
    counts = (progress or {}).get(
        "counts",
        {
            "pieces": 0,
            "documents": 0,
            "tokens": 0,
            "held_out_tokens": 0,
            "cropped_documents": 0,
            "cropped_tokens": 0,
        },
    )
    if progress:
        pending = np.load(out / progress["pending"])
        if len(pending):
            writers["train"].add(pending)
        log(f"resuming: {counts['documents']} documents and {counts['tokens']} tokens already done")

    workers = max(1, workers or os.cpu_count() or 1)
    tasks = islice((piece for source in opened for piece in source.pieces()), counts["pieces"], None)
    pool = None
    if workers > 1:
        global _worker_tokenizer
        _worker_tokenizer = tok
        preload_readers()
        ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tok.record(), str(out)))
        _worker_tokenizer = None
        results = _in_order(pool, tasks, ahead=4 * workers)
    else:
        results = (read_and_encode(tok, piece) for piece in tasks)
    meter = _Meter(log, max_tokens or max_train_tokens)
    router = Router(
        writers,
        counts,
        context if pack == "crop" else None,
        val_fraction,
        test_start,
        test_tokens,
        max_tokens,
        max_train_tokens,
    )
    disk = BackgroundWrites()
    try:
        for flat, lengths in results:
            done = router.add_batch(flat, lengths)
            counts["pieces"] += 1
            while writers["train"].buffered >= shard_tokens:
                disk.run(_checkpoint(out, key, tok, writers, counts, shard_tokens))
            meter.update(counts["documents"], counts["tokens"])
            if done:
                break
    finally:
        if pool is not None:
            pool.terminate()
        disk.close()
    if counts["documents"] == 0:
        raise UserError(f"the input is empty: no documents in {', '.join(sources)}")
    jobs = []
    while writers["train"].buffered:
        writers["train"].flush(jobs, shard_tokens)
    for split in ("val", "test"):
        writers[split].flush(jobs)
    for job in jobs:
        job()
    splits = {s: w.entry() for s, w in writers.items() if w.shards}
    if "train" not in splits:
        raise UserError("no training tokens: the input is too small for the validation fraction")
    manifest = {
        "tokenizer": tok.record(),
        "pack": pack,
        "context": context,
        "sources": list(sources),
        "documents": counts["documents"],
        "tokens": counts["tokens"],
        "splits": splits,
        "cropped": {"documents": counts["cropped_documents"], "tokens": counts["cropped_tokens"]},
        "args_key": key,
        "args": args,
    }
    write_manifest(out, manifest)
    for stale in [out / PROGRESS, *out.glob(PENDING.format("*"))]:
        stale.unlink(missing_ok=True)
    _remove_stale_shards(out, splits)
    meter.finish(counts, splits, pack)
    return {"format": "baseforge-tokens", **manifest}


def _checkpoint(out, key, tok, writers, counts, shard_tokens) -> list:
    """The writes of a full train shard, the held-out buffers and a progress record (for resume), in order."""
    jobs = []
    rest = writers["train"].flush(jobs, shard_tokens)
    for split in ("val", "test"):
        writers[split].flush(jobs)
    # The pending file is named after the shard count and written first, so a kill between the two
    # writes leaves the previous progress record pointing at the previous (intact) pending file.
    pending = PENDING.format(len(writers["train"].shards))
    rest = rest if rest is not None else np.zeros(0, dtype=token_dtype(tok.vocab_size))
    progress = json.dumps(
        {
            "args_key": key,
            "tokenizer": tok.record(),
            "counts": counts,
            "pending": pending,
            "splits": {s: w.state() for s, w in writers.items()},
        },
        indent=2,
    )  # as of now

    def save_pending():
        with atomic_path(out / pending) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, rest)

    def record_progress():
        atomic_write_text(out / PROGRESS, progress + "\n")
        for old in out.glob(PENDING.format("*")):
            if old.name != pending:
                old.unlink()

    return jobs + [save_pending, record_progress]


def _read_progress(out: Path, key: str) -> dict | None:
    try:
        progress = json.loads((out / PROGRESS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if (
        progress.get("args_key") != key
        or "pieces" not in progress.get("counts", {})
        or not (out / progress.get("pending", "-")).is_file()
    ):
        return None  # another prepare's leftovers: start over
    return progress


def _remove_stale_shards(out: Path, splits: dict) -> None:
    keep = {s["file"] for entry in splits.values() for s in entry["shards"]}
    for path in out.glob("*_[0-9][0-9][0-9][0-9][0-9][0-9].bin"):
        if path.name not in keep:
            path.unlink()
    for tmp in out.glob(".*.tmp"):  # half-written files of a killed run (see fileio.atomic_path)
        tmp.unlink()


class _Meter:
    """Progress on stderr: documents, tokens, rate and (when the total is known) ETA."""

    def __init__(self, log, total_tokens: int | None, every_s: float = 5.0):
        self.log, self.total, self.every = log, total_tokens, every_s
        self.start = self.last = time.monotonic()

    def update(self, docs: int, tokens: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        rate = tokens / max(now - self.start, 1e-9)
        eta = f", eta {(self.total - tokens) / rate / 60:.1f} min" if self.total and rate else ""
        print(
            f"prepare: {docs:,} documents, {tokens:,} tokens, {rate / 1e3:.0f}k tokens/s{eta}",
            file=sys.stderr,
            flush=True,
        )

    def finish(self, counts, splits, pack) -> None:
        seconds = time.monotonic() - self.start
        sizes = ", ".join(f"{s} {e['tokens']:,}" for s, e in splits.items())
        self.log(
            f"prepared {counts['documents']:,} documents, {counts['tokens']:,} tokens ({sizes}) "
            f"in {seconds:.1f}s ({counts['tokens'] / max(seconds, 1e-9) / 1e3:.0f}k tokens/s)"
        )
        if pack == "crop":
            total = counts["tokens"] + counts["cropped_tokens"]
            self.log(
                f"crop dropped {counts['cropped_tokens']:,} tokens "
                f"({100 * counts['cropped_tokens'] / max(total, 1):.1f}%) "
                f"from {counts['cropped_documents']:,} documents longer than the context"
            )
