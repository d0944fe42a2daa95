"""Reading and tokenizing a prepare's pieces, in worker processes when there is more than one.

Each worker holds its own tokenizer, handed over by the pool's initializer: a forked worker gets
the parent's object as it is (loading GPT-2's takes 0.3 s), a spawned one (macOS) loads it from
its record. Results come back in piece order with a bounded window in flight, so the output is
the same for any number of workers and memory stays flat however large the corpus.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from baseforge.data.shards import token_dtype
from baseforge.data.sources import preload_readers
from baseforge.errors import UserError
from baseforge.tokenizer import Tokenizer, load_tokenizer

# ids, document lengths, binary files skipped, texts whose lone surrogates were replaced (FILE:LINE)
Encoded = tuple[np.ndarray, np.ndarray, list[str], list[str]]

_tokenizer: Tokenizer | None = None  # a worker process's own, set by _init_worker in that process

# A document longer than this (characters) is tokenized in pieces of at most this size, so a worker's
# memory is bounded by the piece, not the document: one 50 MB jsonl line took a tokenizer past 6 GB.
MAX_PIECE_CHARS = 1 << 20
_SEAM = re.compile(r"\s(?=\S)")  # the last whitespace of a run, before a non-space


def cut_points(text: str, limit: int) -> list[int]:
    """Where to cut `text` into pieces of at most `limit` characters: each cut is just before the
    last whitespace character of a run that a non-space follows, the farthest such within reach.

    Why there: GPT-2's pre-tokenizer (tiktoken's gpt2, and the byte-level BPE's, the same pattern)
    splits text before BPE runs, and it always splits there (the run's other whitespace is a
    pre-token of its own, the last space opens the next word's), and its pattern only looks ahead,
    so each piece's tokens, concatenated, are the whole text's tokens. (tests/test_prepare.py checks
    it with both tokenizers on real text; Unicode spaces that Python's re and the tokenizer's regex
    class differently could break it in the odd case.) With no such whitespace in `limit`
    characters (a long run of letters, or a long whitespace run), the cut is hard at `limit`, and
    the tokens at that seam may differ from the unsplit encoding's (as if a space were there).
    """
    cuts, start, n = [], 0, len(text)
    while n - start > limit:
        last = None
        for lo in (max(start + 1, start + limit - 4096), start + 1):  # the window's end first: cheap
            last = deque(_SEAM.finditer(text, lo, start + limit + 1), maxlen=1)
            if last:
                break
        cut = last[0].start() if last else start + limit
        cuts.append(cut)
        start = cut
    return cuts


def _encode_long(tok: Tokenizer, docs: list[str]) -> list[np.ndarray]:
    """tok.encode_arrays, but a document over MAX_PIECE_CHARS is encoded piece by piece (see cut_points)."""
    if all(len(d) <= MAX_PIECE_CHARS for d in docs):
        return tok.encode_arrays(docs)
    arrays = []
    for doc in docs:
        if len(doc) <= MAX_PIECE_CHARS:
            arrays += tok.encode_arrays([doc])
            continue
        bounds = [0, *cut_points(doc, MAX_PIECE_CHARS), len(doc)]
        parts = [tok.encode_arrays([doc[a:b]])[0] for a, b in zip(bounds, bounds[1:])]
        arrays.append(np.concatenate(parts).astype(np.uint32, copy=False))
    return arrays


def encode_documents(tok: Tokenizer, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All documents' ids, each followed by end-of-text, as one array, plus each document's length.

    One numpy array crosses the process boundary instead of lists of Python ints: pickling those
    cost the parent more than tokenizing cost a worker. A long document is encoded in pieces
    (MAX_PIECE_CHARS, cut_points).
    """
    eot = np.array([tok.eot_id], dtype=np.uint32)
    arrays = _encode_long(tok, docs)
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays)) + 1
    flat = np.concatenate([x for ids in arrays for x in (ids, eot)], dtype=token_dtype(tok.vocab_size))
    return flat, lengths


def read_and_encode(tok: Tokenizer, piece) -> Encoded:
    """The piece's ids and document lengths (see encode_documents), the binary files it skipped and
    where it replaced lone surrogates."""
    docs = piece.read()
    binary = getattr(piece, "binary", [])  # only text files can be binary
    replaced = getattr(piece, "replaced", [])  # only JSON lines can hold lone surrogates
    if not docs:
        return np.zeros(0, dtype=token_dtype(tok.vocab_size)), np.zeros(0, dtype=np.int64), binary, replaced
    return (*encode_documents(tok, docs), binary, replaced)


@contextmanager
def encoded_pieces(
    tok: Tokenizer, pieces: Iterable, workers: int, directory: Path
) -> Iterator[Iterator[Encoded]]:
    """Each piece's `read_and_encode`, in order: in this process for one worker, else in a pool of
    `workers` processes (a spawned worker loads the tokenizer from its record and `directory`),
    stopped when the block exits."""
    if workers <= 1:
        yield (read_and_encode(tok, piece) for piece in pieces)
        return
    preload_readers()
    ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
    inherited = tok if ctx.get_start_method() == "fork" else None  # fork: passed, never pickled
    # Not multiprocessing.Pool: its terminate() can hang for good when a worker is stopped while it
    # sends a result (python/cpython#96995), and a worker that dies leaves its task waited on forever.
    # The executor's shutdown lets the pieces already handed out finish, and a death is an error.
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(inherited, tok.record(), str(directory))
    )
    try:
        yield _in_order(pool, pieces, ahead=4 * workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _init_worker(tok: Tokenizer | None, record: dict, directory: str) -> None:
    global _tokenizer
    _tokenizer = tok if tok is not None else load_tokenizer(record, Path(directory))


def _encode(piece) -> Encoded:
    assert _tokenizer is not None, "the pool initializer sets the worker's tokenizer"
    return read_and_encode(_tokenizer, piece)


def _in_order(pool, tasks, ahead: int):
    """Worker results in task order, with at most `ahead` tasks in flight.

    Executor.map would read the whole input ahead (it submits every task at once) and keep every
    result the parent has not consumed yet; this keeps memory flat however large the corpus.

    Making the tasks can fail too (a later file's bad header, found here while workers read earlier
    pieces): the pieces before it come first, so the error a prepare stops at is the one a single
    worker, reading in order, would have stopped at.
    """
    pending: deque = deque()
    tasks = iter(tasks)
    while True:
        try:
            task = next(tasks)
        except StopIteration:
            break
        except Exception:
            while pending:
                yield _result(pending.popleft())
            raise
        pending.append(pool.submit(_encode, task))
        if len(pending) >= ahead:
            yield _result(pending.popleft())
    while pending:
        yield _result(pending.popleft())


def _result(future) -> Encoded:
    try:
        return future.result()
    except BrokenProcessPool:
        raise UserError(
            "a tokenizer worker process died (killed, out of memory, or a crash in a library reading "
            "the input); try fewer --workers, or --workers 1"
        ) from None
