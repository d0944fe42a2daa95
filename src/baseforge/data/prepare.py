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
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from baseforge.data.shards import MANIFEST, token_dtype, write_manifest, write_shard
from baseforge.data.sources import open_source
from baseforge.errors import UserError
from baseforge.fileio import atomic_path, atomic_write_text
from baseforge.tokenizer import GPT2Tokenizer, Tokenizer, TrainedBPETokenizer, load_tokenizer, parse_spec

PROGRESS = ".prepare-progress.json"
PENDING = ".prepare-pending-{}.npy"  # train tokens past the last full shard; numbered by that shard
BPE_SAMPLE_CHARS = 200_000_000  # a trained BPE sees at most this much train text


def held_out(i, fraction: float):
    """Is document i (an int, or an array of them) held out? The same float64 arithmetic either way."""
    if isinstance(i, np.ndarray):
        return ((i + 1) * fraction).astype(np.int64) > (i * fraction).astype(np.int64)
    return int((i + 1) * fraction) > int(i * fraction)


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


class SplitWriter:
    """Accumulates one split's tokens and writes them as numbered shards."""

    def __init__(self, out_dir: Path, split: str, vocab_size: int, state: dict | None = None):
        self.out_dir, self.split, self.vocab_size = out_dir, split, vocab_size
        state = state or {}
        self.shards = state.get("shards", [])
        self.documents = state.get("documents", 0)
        self.buffer: list[np.ndarray] = []
        self.buffered = 0

    def add(self, ids: np.ndarray) -> None:
        self.buffer.append(ids)
        self.buffered += len(ids)

    def flush(self, jobs: list, limit: int | None = None) -> np.ndarray | None:
        """Queue up to `limit` buffered tokens (all if None) as one shard's write; keep the rest buffered."""
        if not self.buffered:
            return None
        tokens = np.concatenate(self.buffer)
        take = tokens if limit is None else tokens[:limit]
        name = f"{self.split}_{len(self.shards):06d}.bin"
        jobs.append(partial(write_shard, self.out_dir / name, take, self.vocab_size))
        self.shards.append({"file": name, "tokens": int(len(take))})
        rest = tokens[len(take):]
        self.buffer, self.buffered = ([rest], len(rest)) if len(rest) else ([], 0)
        return rest

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def state(self) -> dict:
        return {"shards": self.shards, "documents": self.documents}

    def entry(self) -> dict:
        return {"documents": self.documents, "tokens": self.tokens, "shards": self.shards}


def prepare(sources: list[str], out_dir: Path | str, tokenizer: str = "gpt2", *, pack: str = "concat",
            context: int | None = None, val_fraction: float = 0.01, test_start: int = 0, test_tokens: int = 0,
            max_tokens: int | None = None, max_train_tokens: int | None = None, workers: int | None = None,
            shard_tokens: int = 100_000_000, local: str | None = None, sample: str | None = None,
            text_column: str = "text", overwrite: bool = False, log=print) -> dict:
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
    args = dict(sources=list(sources), tokenizer=tokenizer, pack=pack, context=context, val_fraction=val_fraction,
                test_start=test_start, test_tokens=test_tokens, max_tokens=max_tokens,
                max_train_tokens=max_train_tokens, shard_tokens=shard_tokens, sample=sample, text_column=text_column)
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    if (out / MANIFEST).exists():
        existing = json.loads((out / MANIFEST).read_text())
        if existing.get("args_key") == key and not overwrite:
            log(f"{out} is already prepared with these arguments")
            return existing
        if not overwrite:
            raise UserError(f"{out} already holds prepared data (made with other arguments); "
                            "use --overwrite to replace it, or choose another --out")
        (out / MANIFEST).unlink()  # the dir is no longer a valid data dir until the new manifest lands
    progress = _read_progress(out, key) if not overwrite else None
    out.mkdir(parents=True, exist_ok=True)
    opened = [open_source(s, local=local, sample=sample, text_column=text_column) for s in sources]

    if progress and parse_spec(tokenizer)[0] == "bpe":
        tok = load_tokenizer(progress["tokenizer"], out)
    else:
        tok = make_tokenizer(tokenizer, out, _bpe_sample(opened, val_fraction))
    writers = {s: SplitWriter(out, s, tok.vocab_size, (progress or {}).get("splits", {}).get(s))
               for s in ("train", "val", "test")}
    counts = (progress or {}).get("counts", {"pieces": 0, "documents": 0, "tokens": 0, "held_out_tokens": 0,
                                             "cropped_documents": 0, "cropped_tokens": 0})
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
        ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tok.record(), str(out)))
        _worker_tokenizer = None
        results = _in_order(pool, tasks, ahead=4 * workers)
    else:
        results = (read_and_encode(tok, piece) for piece in tasks)
    meter = _Meter(log, max_tokens or max_train_tokens)
    router = Router(writers, counts, context if pack == "crop" else None, val_fraction, test_start, test_tokens,
                    max_tokens, max_train_tokens)
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
    manifest = {"tokenizer": tok.record(), "pack": pack, "context": context, "sources": list(sources),
                "documents": counts["documents"], "tokens": counts["tokens"], "splits": splits,
                "cropped": {"documents": counts["cropped_documents"], "tokens": counts["cropped_tokens"]},
                "args_key": key, "args": args}
    write_manifest(out, manifest)
    for stale in [out / PROGRESS, *out.glob(PENDING.format("*"))]:
        stale.unlink(missing_ok=True)
    _remove_stale_shards(out, splits)
    meter.finish(counts, splits, pack)
    return {"format": "baseforge-tokens", **manifest}


class Router:
    """Sends each batch of tokenized documents, in order, to the train, val and test buffers.

    Whole-batch numpy operations for the 99% of documents that go to train (a Python loop per
    document cost the parent process as much as a worker's tokenizing); held-out documents, which
    may straddle the test slice, one at a time.
    """

    def __init__(self, writers: dict, counts: dict, crop: int | None, val_fraction: float, test_start: int,
                 test_tokens: int, max_tokens: int | None, max_train_tokens: int | None):
        self.writers, self.counts, self.crop, self.val_fraction = writers, counts, crop, val_fraction
        self.test_start, self.test_tokens = test_start, test_tokens
        self.max_tokens, self.max_train_tokens = max_tokens, max_train_tokens

    def add_batch(self, flat: np.ndarray, lengths: np.ndarray) -> bool:
        """Route one batch; True once a token limit is reached (the batch is cut after that document)."""
        counts, train = self.counts, self.writers["train"]
        held = held_out(counts["documents"] + np.arange(len(lengths)), self.val_fraction)
        if self.crop:
            cut = lengths > self.crop
            counts["cropped_documents"] += int(cut.sum())
            counts["cropped_tokens"] += int((lengths - self.crop)[cut].sum())
            starts = np.cumsum(lengths) - lengths
            flat = flat[np.arange(len(flat)) - np.repeat(starts, lengths) < self.crop]
            lengths = np.minimum(lengths, self.crop)
        done, keep = self._limit(lengths, held)
        if keep < len(lengths):
            flat, lengths, held = flat[:int(lengths[:keep].sum())], lengths[:keep], held[:keep]
        counts["documents"] += keep
        counts["tokens"] += int(lengths.sum())
        if not held.any():
            train.add(flat)
            train.documents += keep
            return done
        held_tokens = np.repeat(held, lengths)
        train.add(flat[~held_tokens])
        train.documents += int((~held).sum())
        starts = np.cumsum(lengths) - lengths
        for j in np.flatnonzero(held):
            self._held_out(flat[starts[j]:starts[j] + lengths[j]])
        return done

    def _limit(self, lengths: np.ndarray, held: np.ndarray) -> tuple[bool, int]:
        """(limit reached?, documents of this batch to keep): stop after the document that reaches it."""
        reached = []
        if self.max_tokens:
            reached.append(self.counts["tokens"] + np.cumsum(lengths) >= self.max_tokens)
        if self.max_train_tokens:
            train = self.writers["train"]
            reached.append(train.tokens + train.buffered + np.cumsum(np.where(held, 0, lengths)) >= self.max_train_tokens)
        first = min((int(np.argmax(r)) for r in reached if r.any()), default=None)
        return (False, len(lengths)) if first is None else (True, first + 1)

    def _held_out(self, doc: np.ndarray) -> None:
        """Held-out tokens [test_start, test_start + test_tokens) go to test, the rest to val."""
        counts, writers = self.counts, self.writers
        pos = counts["held_out_tokens"]
        counts["held_out_tokens"] += len(doc)
        lo, hi = self.test_start, self.test_start + self.test_tokens
        a, b = max(pos, lo), min(pos + len(doc), hi)
        if self.test_tokens and a < b:
            if a > pos:
                writers["val"].add(doc[:a - pos])
            writers["test"].add(doc[a - pos:b - pos])
            writers["test"].documents += 1
            if b < pos + len(doc):
                writers["val"].add(doc[b - pos:])
        else:
            writers["val"].add(doc)
            writers["val"].documents += 1


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
    progress = json.dumps({"args_key": key, "tokenizer": tok.record(), "counts": counts, "pending": pending,
                           "splits": {s: w.state() for s, w in writers.items()}}, indent=2)  # as of now

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


class BackgroundWrites:
    """Checkpoints' writes, on one thread, in order, so the workers need not wait for the disk (a
    100M-token shard and its fsync take about a second, in which 16 workers tokenize 60M tokens).
    One checkpoint is written while the next one's tokens gather: never more than two in memory."""

    def __init__(self):
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="prepare-writes")
        self.last = None

    def run(self, jobs: list) -> None:
        self.wait()
        self.last = self.thread.submit(lambda: [job() for job in jobs])

    def wait(self) -> None:
        if self.last is not None:
            self.last.result()  # re-raises a failed write here, in the main thread
            self.last = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.thread.shutdown()


def _read_progress(out: Path, key: str) -> dict | None:
    try:
        progress = json.loads((out / PROGRESS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if progress.get("args_key") != key or "pieces" not in progress.get("counts", {}) or \
            not (out / progress.get("pending", "-")).is_file():
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
        print(f"prepare: {docs:,} documents, {tokens:,} tokens, {rate / 1e3:.0f}k tokens/s{eta}",
              file=sys.stderr, flush=True)

    def finish(self, counts, splits, pack) -> None:
        seconds = time.monotonic() - self.start
        sizes = ", ".join(f"{s} {e['tokens']:,}" for s, e in splits.items())
        self.log(f"prepared {counts['documents']:,} documents, {counts['tokens']:,} tokens ({sizes}) "
                 f"in {seconds:.1f}s ({counts['tokens'] / max(seconds, 1e-9) / 1e3:.0f}k tokens/s)")
        if pack == "crop":
            total = counts["tokens"] + counts["cropped_tokens"]
            self.log(f"crop dropped {counts['cropped_tokens']:,} tokens ({100 * counts['cropped_tokens'] / max(total, 1):.1f}%) "
                     f"from {counts['cropped_documents']:,} documents longer than the context")
