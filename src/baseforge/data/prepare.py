"""`prepare`: documents -> token ids (in worker processes) -> packed, split, fixed-size shards.

Streaming: each source is cut into pieces (a parquet row group, a megabyte of jsonl lines, a group
of text files; see sources.py) that worker processes read and tokenize (workers.py); their results
come back in order (a bounded window of pieces in flight) and are written shard by shard, so memory
stays flat however large the corpus, and the output is byte-identical for any number of workers.

Splits: document i is held out when a uniform number drawn from (val_seed, i) is under f =
val_fraction (docsample.py: a seeded sample of whole documents from the whole corpus; heldout.py tops
val up to --min-val-tokens with more sampled documents). Held-out tokens go to `val`, except the
optional fixed `test` slice, tokens [test_start, test_start + test_tokens) of the held-out stream. A
corpus of too few documents for a sample (one .txt file), or --held-out tail, holds out the last f of
its token stream instead, and the manifest says so (`"held_out": "tail"`).

Input that is no text (a binary file given as .txt) is skipped, counted and named; an input with
no documents, or only empty ones, is an error. Nothing outside a source folder is read unless
asked (files.py: symlinks out of it are skipped and named); what a bad JSON line or Parquet column
gets is in decoding.py.

Packing: `concat` puts one end-of-text token after every document (the write-up's choice);
`crop` also truncates each document (with its end-of-text) to `context` tokens and reports what
that drops (routing and counts: packing.py). Whenever a train shard is full, the held-out buffers
are flushed too and a progress record is saved, so an interrupted prepare resumes from its last
complete shard (resume.py).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from baseforge.data import resume
from baseforge.data.docsample import held_out
from baseforge.data.files import links_line
from baseforge.data.heldout import MIN_VAL_TOKENS, finish_val, val_warning
from baseforge.data.manifest import MANIFEST, Manifest, SplitEntry, read_manifest, write_manifest
from baseforge.data.meter import Meter, check_not_empty
from baseforge.data.packing import BackgroundWrites, Counts, Router, SplitWriter
from baseforge.data.sources import open_source
from baseforge.data.workers import MAX_PIECE_CHARS, cut_points, encoded_pieces
from baseforge.errors import UserError
from baseforge.fileio import check_out_dir, output_dir, swap_dir
from baseforge.runlock import RunLock
from baseforge.tokenizer import GPT2Tokenizer, Tokenizer, TrainedBPETokenizer, load_tokenizer, parse_spec

BPE_SAMPLE_CHARS = 200_000_000  # a trained BPE sees at most this much train text
HELD_OUT = ("sample", "tail")  # --held-out: a seeded sample of documents (docsample.py), or the tail
LOCK_FILE = ".prepare.lock"  # one prepare per data dir at a time (runlock.RunLock's mechanism)


def make_tokenizer(spec: str, out_dir: Path, train_texts, log=print) -> Tokenizer:
    kind, size = parse_spec(spec)
    if kind == "gpt2":
        return GPT2Tokenizer()
    assert size is not None, "parse_spec gives bpe:N its size"
    tok = TrainedBPETokenizer.train(train_texts, size)
    if tok.vocab_size < size:  # the trainer stops, silently, when no pair is left to merge
        log(_short_vocab(spec, size, tok.vocab_size))
    tok.save(out_dir)
    return tok


def _short_vocab(spec: str, asked: int, reached: int) -> str:
    base = 257  # 256 bytes and <|endoftext|>: every token past them is one merge
    return (
        f"warning: --tokenizer {spec} reached {reached:,} tokens, not {asked:,}: the training text is too "
        f"small for {asked - base:,} merges (after {reached - base:,}, no pair in it was left to merge); "
        f"the data dir records vocab_size {reached:,}; more text gives a larger vocabulary"
    )


def _bpe_sample(sources, val_fraction, val_seed):
    """Train text for a BPE; a long document in pieces (workers.cut_points: at pre-token boundaries,
    so the trainer counts the same words) so the trainer's memory is bounded by the piece."""
    chars = 0
    for i, doc in enumerate(_documents(sources)):
        if not held_out(i, val_fraction, val_seed):
            bounds = [0, *cut_points(doc, MAX_PIECE_CHARS), len(doc)] if len(doc) > MAX_PIECE_CHARS else None
            yield from (doc[a:b] for a, b in zip(bounds, bounds[1:])) if bounds else (doc,)
            chars += len(doc)
            if chars >= BPE_SAMPLE_CHARS:
                return


def _documents(sources):
    for source in sources:
        yield from source.documents()


@dataclass
class PrepareSpec:
    """Everything that decides a `prepare` (the CLI's options, by name); see the module docstring."""

    sources: list[str]
    out: Path
    tokenizer: str = "gpt2"
    pack: str = "concat"  # or "crop" (needs context)
    context: int | None = None
    val_fraction: float = 0.01
    held_out: str = "sample"  # or "tail": val is the end of the token stream
    val_seed: int = 0  # which documents the sample holds out
    min_val_tokens: int = MIN_VAL_TOKENS  # val's token floor, met by holding out more whole documents
    test_start: int = 0
    test_tokens: int = 0
    max_tokens: int | None = None
    max_train_tokens: int | None = None
    workers: int | None = None  # tokenizer processes (default: all cores); never changes the output
    shard_tokens: int = 100_000_000
    local: str | None = None  # a local copy of a Hub source
    sample: str | None = None
    text_column: str = "text"
    include: tuple[str, ...] = ()  # globs picking the text files of a local folder
    follow_symlinks: bool = False  # read symlinks out of a source folder too (files.py)
    overwrite: bool = False

    def check(self) -> None:
        """UserError (one line) for a bad value, before any work."""
        if not self.sources:
            raise UserError("no SOURCE given")
        if self.pack not in ("concat", "crop"):
            raise UserError(f"--pack must be 'concat' or 'crop', not {self.pack!r}")
        if self.pack == "crop" and not self.context:
            raise UserError("--pack crop needs --context N (the length documents are cropped to)")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in [0, 1), not {self.val_fraction}")
        if self.held_out not in HELD_OUT:
            raise UserError(f"--held-out must be one of {', '.join(HELD_OUT)}, not {self.held_out!r}")
        if not 0 <= self.val_seed < 1 << 32:
            raise UserError(f"--val-seed must be in [0, 2^32), not {self.val_seed}")
        if self.min_val_tokens < 0:
            raise UserError(f"--min-val-tokens must be 0 or more, not {self.min_val_tokens}")
        if self.shard_tokens < 1:
            raise UserError("--shard-tokens must be positive")
        parse_spec(self.tokenizer)

    @property
    def sample_fraction(self) -> float:
        """The fraction of documents the sample holds out as they stream (none under --held-out tail)."""
        return self.val_fraction if self.held_out == "sample" else 0.0

    def key_args(self) -> dict:
        """The arguments that decide the output, as recorded in the manifest and hashed into its key."""
        args = dict(
            sources=list(self.sources),
            tokenizer=self.tokenizer,
            pack=self.pack,
            context=self.context,
            val_fraction=self.val_fraction,
            held_out=self.held_out,
            val_seed=self.val_seed,
            test_start=self.test_start,
            test_tokens=self.test_tokens,
            max_tokens=self.max_tokens,
            max_train_tokens=self.max_train_tokens,
            shard_tokens=self.shard_tokens,
            sample=self.sample,
            text_column=self.text_column,
        )
        if self.include:  # only when given: data dirs prepared before it existed keep their key
            args["include"] = list(self.include)
        if self.min_val_tokens != MIN_VAL_TOKENS:  # likewise
            args["min_val_tokens"] = self.min_val_tokens
        if self.follow_symlinks:  # likewise
            args["follow_symlinks"] = True
        return args


def prepare(
    sources: list[str], out_dir: Path | str, tokenizer: str = "gpt2", *, log=print, **options
) -> Manifest:
    """Tokenize `sources` into a data dir; returns its manifest (manifest.py).
    `options`: the other fields of PrepareSpec, by name.

    Every argument and path is checked before any work; a prepare that fails removes the folders
    it made, unless it got far enough to leave a progress record to resume from.
    """
    spec = PrepareSpec([str(s) for s in sources], Path(out_dir), tokenizer, **options)
    spec.check()
    out = check_out_dir(spec.out)
    args = spec.key_args()
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    lock = RunLock(out, name=LOCK_FILE, what="data dir", user="prepare", remove=True)
    # A folder this made is left alone when another prepare holds it (that one may have made it too).
    with output_dir(out, keep=lambda p: lock.refused or resume.has_progress(p)), lock:
        if (out / MANIFEST).exists():
            existing = read_manifest(out) if not spec.overwrite else None
            if existing is not None and existing.args_key == key:
                log(f"{out} is already prepared with these arguments")
                return existing
            if not spec.overwrite:
                raise UserError(
                    f"{out} already holds prepared data (made with other arguments); "
                    "use --overwrite to replace it, or choose another --out"
                )
        opened = [
            open_source(
                s,
                local=spec.local,
                sample=spec.sample,
                text_column=spec.text_column,
                include=spec.include,
                follow_symlinks=spec.follow_symlinks,
            )
            for s in spec.sources
        ]
        for source in opened:
            if source.links:
                log(links_line(spec.local or source.name, source.links))
        if spec.overwrite and (out / MANIFEST).exists():
            return _replace(spec, out, key, args, opened, log)
        (out / MANIFEST).unlink(missing_ok=True)  # no longer a valid data dir until the new manifest lands
        manifest, finish = _prepare(spec, out, key, args, opened, log)
        finish()
        return manifest


def _replace(spec: PrepareSpec, out: Path, key: str, args: dict, opened: list, log) -> Manifest:
    """--overwrite onto a good data dir: build the new one beside it (OUT.new-PID), then swap it in
    (OUT -> OUT.old-PID, OUT.new-PID -> OUT, remove the old), so a prepare that fails (a full disk, a
    bad input) leaves the old data dir as it was and the staging folder goes; a kill leaves the
    staging folder, which the next --overwrite of OUT removes. A kill between the two renames leaves
    the old data whole in OUT.old-PID."""
    out = out.resolve()  # a symlinked data dir: replace what it points to, beside it
    staging = out.with_name(f"{out.name}.new-{os.getpid()}")
    aside = out.with_name(f"{out.name}.old-{os.getpid()}")
    # Staging folders of killed prepares: this one holds OUT's lock, so no live prepare owns them.
    for stale in out.parent.glob(f"{glob.escape(out.name)}.new-*"):
        if stale.name.rpartition("-")[2].isdigit() and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    with output_dir(staging):
        manifest, finish = _prepare(spec, staging, key, args, opened, log)
        swap_dir(staging, out, aside)
    shutil.rmtree(aside, ignore_errors=True)
    finish()
    return manifest


def _prepare(
    spec: PrepareSpec, out: Path, key: str, args: dict, opened: list, log
) -> tuple[Manifest, Callable[[], None]]:
    """Prepare into `out`; returns the manifest and the closing report's lines (called once in place)."""
    tok, writers, counts = _start_or_resume(spec, out, key, opened, log)
    links = [str(p) for source in opened for p in source.links]
    counts.symlinks, counts.first_symlink = len(links), links[0] if links else ""
    router = Router(
        writers,
        counts,
        crop=spec.context if spec.pack == "crop" else None,
        val_fraction=spec.sample_fraction,
        val_seed=spec.val_seed,
        test_start=spec.test_start,
        test_tokens=spec.test_tokens,
        max_tokens=spec.max_tokens,
        max_train_tokens=spec.max_train_tokens,
    )
    meter = Meter(log, spec.max_tokens or spec.max_train_tokens)
    _tokenize(spec, out, key, tok, opened, router, meter)
    check_not_empty(spec.sources, counts)

    def reach_back(n: int) -> None:
        """Have the train buffer hold its last n tokens; shards read back for that are written again
        by the final flush, so first a progress record that no longer vouches for them (see resume.py)."""
        if writers["train"].reach_back(n) and resume.has_progress(out):
            for job in resume.commit_now(out, key, tok, writers, counts):
                job()

    floor = finish_val(
        router,
        method=spec.held_out,
        fraction=spec.val_fraction,
        seed=spec.val_seed,
        min_val_tokens=spec.min_val_tokens,
        reach_back=reach_back,
        eot=tok.eot_id,
        log=log,
    )
    splits = _flush_all(writers, spec.shard_tokens)
    manifest = _manifest(spec, tok, counts, splits, floor, key, args)
    write_manifest(out, manifest)
    resume.clear(out, splits)
    warning = val_warning(spec.val_fraction, spec.min_val_tokens, counts.tokens, splits)
    return manifest, partial(meter.finish, counts, splits, spec.pack, warning, manifest.held_out_words())


def _start_or_resume(
    spec: PrepareSpec, out: Path, key: str, opened: list, log
) -> tuple[Tokenizer, dict[str, SplitWriter], Counts]:
    """The tokenizer, the split writers and the counts: new, or where an interrupted prepare left them
    (its tokenizer, its shards, and the train tokens it had not yet written)."""
    progress = resume.read_progress(out, key) if not spec.overwrite else None
    if progress and parse_spec(spec.tokenizer)[0] == "bpe":
        tok = load_tokenizer(progress["tokenizer"], out)
    else:
        tok = make_tokenizer(
            spec.tokenizer, out, _bpe_sample(opened, spec.sample_fraction, spec.val_seed), log
        )
    writers = {
        s: SplitWriter(out, s, tok.vocab_size, (progress or {}).get("splits", {}).get(s))
        for s in ("train", "val", "test")
    }
    counts = Counts.from_record((progress or {}).get("counts", {}))
    if progress:
        pending = np.load(out / progress["pending"])
        if len(pending):
            writers["train"].add(pending)
        log(f"resuming: {counts.documents} documents and {counts.tokens} tokens already done")
    return tok, writers, counts


def _flush_all(writers: dict[str, SplitWriter], shard_tokens: int) -> dict:
    """Write what the buffers still hold; the manifest's entry of each split that has shards."""
    jobs: list = []
    while writers["train"].buffered:
        writers["train"].flush(jobs, shard_tokens)
    for split in ("val", "test"):
        writers[split].flush(jobs)
    for job in jobs:
        job()
    splits = {s: w.entry() for s, w in writers.items() if w.shards}
    if "train" not in splits:
        raise UserError("no training tokens: the input is too small for the validation fraction")
    return splits


def _manifest(
    spec: PrepareSpec, tok: Tokenizer, counts: Counts, splits: dict, floor: dict | None, key: str, args: dict
) -> Manifest:
    """What the manifest says of the data: tokenizer, packing, sources, counts, splits, what was skipped
    (symlinks out of a source folder, and texts whose lone surrogates were replaced, only when some were)."""
    skipped: dict = {"binary_files": counts.binary_files, "first": counts.first_binary or None}
    if counts.symlinks:
        skipped.update(symlinks=counts.symlinks, first_symlink=counts.first_symlink)
    surrogates = {"documents": counts.surrogate_documents, "first": counts.first_surrogate}
    return Manifest(
        tokenizer=tok.record(),
        pack=spec.pack,
        context=spec.context,
        sources=tuple(spec.sources),
        documents=counts.documents,
        tokens=counts.tokens,
        splits={
            name: SplitEntry.of([(e["file"], e["tokens"]) for e in s["shards"]], s["documents"])
            for name, s in splits.items()
        },
        held_out="tail" if counts.val_from_tail else "sample",
        val_seed=None if counts.val_from_tail else spec.val_seed,
        skipped=skipped,
        surrogates=surrogates if counts.surrogate_documents else None,
        cropped={"documents": counts.cropped_documents, "tokens": counts.cropped_tokens},
        val_floor=floor,
        args_key=key,
        args=args,
    )


def _tokenize(spec: PrepareSpec, out: Path, key: str, tok: Tokenizer, opened: list, router, meter) -> None:
    """Read, tokenize and route every piece (workers when asked), writing full train shards as they fill."""
    counts, writers = router.counts, router.writers
    workers = max(1, spec.workers or os.cpu_count() or 1)
    pieces = islice((piece for source in opened for piece in source.pieces()), counts.pieces, None)
    disk = BackgroundWrites()
    try:
        with encoded_pieces(tok, pieces, workers, out) as results:
            for flat, lengths, binary, replaced in results:
                done = router.add_batch(flat, lengths)
                counts.add_piece(binary, replaced)
                while writers["train"].buffered >= spec.shard_tokens:
                    disk.run(resume.commit_shard(out, key, tok, writers, counts, spec.shard_tokens))
                meter.update(counts.documents, counts.tokens)
                if done:
                    break
    finally:
        disk.close()
