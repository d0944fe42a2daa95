"""`baseforge prepare`: tokenize text into a data dir of token shards."""

from __future__ import annotations

import argparse
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.cli.options import count, positive_count, positive_int, real
from baseforge.data.corpora import help_table
from baseforge.data.prepare import prepare
from baseforge.fileio import check_out_dir
from baseforge.model import GPT
from baseforge.overrides import resolve_config

EPILOG = """\
SOURCE is one or more of:
  builtin                 the running Python's standard library source (~12 MB, no download)
  FILE.txt                one document per file
  FILE.jsonl[.gz]         one document per line (its "text" field)
  FILE.parquet            one document per row (its "text" column)
  DIR                     every such file in DIR, recursively, in sorted order; with
                          --include GLOB, the files matching it instead (any text files)
  NAME                    an open corpus on the Hub, below
  hf:OWNER/NAME           any Hub dataset repo of parquet files with a text column

The corpora by name (the Hub repo, the folder read unless --sample names another, what it is; a
data file's path in the repo, the column read unless --text-column names another, the licence).
Files download one at a time as tokenizing reaches them, so --max-tokens fetches only what it
needs; --local DIR reads a copy laid out like the repo instead (offline, or a mirror):
{CORPORA}

examples:
  baseforge prepare builtin --out data/builtin --tokenizer bpe:4096
  baseforge prepare corpus/ --out data/mine --tokenizer gpt2 --val-fraction 0.01
  baseforge prepare /usr/lib/python3/dist-packages --include '*.py' --out data/py --tokenizer bpe:8192
  baseforge prepare fineweb --out data/fineweb --tokenizer gpt2 --budget gpt2-small-seed
  baseforge prepare fineweb --local /mirror/fineweb --out data/fineweb --max-tokens 1e9
  baseforge prepare fineweb --out data/fw-test --test-start 0 --test-tokens 10e6
  baseforge prepare climbmix --out data/climbmix --max-tokens 2e9
  baseforge prepare dclm --local /mirror/dclm --sample global-shard_02_of_10 --out data/dclm

The data dir holds shards (train_000000.bin, val_000000.bin, ...) and manifest.json; see
`baseforge data info DIR`. An interrupted prepare resumes from its last complete shard when run
again with the same arguments; a second prepare into the same --out while one runs is refused.
--overwrite builds the new data dir beside the old one and swaps it in only once complete.

Validation is a seeded random sample of whole documents (--val-fraction of them, --val-seed),
drawn from the whole corpus, so a corpus ordered by topic is held out from every topic; it gets at
least --min-val-tokens (capped at 10% of the corpus) by sampling more whole documents. A corpus
with too few documents for a sample (one .txt file), or --held-out tail, holds out the last
--val-fraction of its tokens instead. The last line says what validation holds and how it was
chosen (also in the manifest: `baseforge data info DIR`); binary files are skipped.

What is read: nothing outside a folder SOURCE (or --local DIR): a symlink in it whose target is
outside it, file or folder, is skipped, and prepare names the first few (the manifest records the
count and the first); --follow-symlinks reads them. A symlink to a file inside the folder is read; a
symlinked folder is not walked (its files are read under their own path). A FILE given as SOURCE
is read wherever it points.

Bad input: a text file with a few bytes that are not UTF-8 gets U+FFFD for them; one with NUL
bytes or mostly undecodable is binary: skipped, counted and named. JSON lines and Parquet must be
UTF-8 text: a JSON line that is not UTF-8, not JSON, not an object with a string "text" field
(--text-column), or nested over 200 levels, and a Parquet text column that is not a string column
(or a row that is not UTF-8), stop prepare with one line naming the file and line, or the column
and its type, or the row. A lone surrogate escape in a JSON string ("\\ud800": valid JSON, but no
Unicode text) becomes U+FFFD; the texts are counted and the first named. Null Parquet rows are
skipped. Any number of --workers gives the same output, and the same error.

GPT-2's BPE comes from tiktoken (downloaded once, or offline from TIKTOKEN_CACHE_DIR or
BASEFORGE_GPT2_DIR); bpe:N trains a byte-level BPE on the train text.
""".replace("{CORPORA}", help_table())  # the table itself, so --help and data/corpora.py cannot differ


def register(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help=VERBS["prepare"],
        description="Tokenize text into a data dir of token shards + manifest.json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--out", type=Path, required=True, help="data dir to write")
    p.add_argument(
        "--tokenizer",
        default="gpt2",
        help="gpt2 (tiktoken) or bpe:N (trained here; up to N tokens: text too small for that says so)",
    )
    p.add_argument(
        "--pack",
        choices=["concat", "crop"],
        default="concat",
        help="concat: documents joined by end-of-text; crop: also cut each to --context tokens",
    )
    p.add_argument("--context", type=positive_int, help="context length, for --pack crop")
    _add_held_out_arguments(p)
    p.add_argument("--max-tokens", type=positive_count, help="stop after this many tokens in all")
    p.add_argument(
        "--budget",
        metavar="PRESET",
        help="prepare a preset's training budget (its max_tokens, else tokens_per_param x parameters), "
        "plus held-out",
    )
    p.add_argument("--workers", type=positive_int, help="tokenizer processes (default: all cores)")
    p.add_argument(
        "--shard-tokens", type=positive_count, default=100_000_000, help="tokens per shard (default 1e8)"
    )
    p.add_argument("--local", help="read a Hub source from this local copy laid out like the repo")
    p.add_argument(
        "--sample",
        help="the Hub repo's folder to read, e.g. sample-100BT (FineWeb's sample/100BT); default: the "
        "corpus's own (above), the root for hf:OWNER/NAME",
    )
    p.add_argument(
        "--text-column",
        default="text",
        help="the JSON field or Parquet column holding the text (default: text; a named corpus's own)",
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="in a folder SOURCE, read the files matching GLOB (their name or path in it) as text "
        "documents, e.g. --include '*.py'; repeatable",
    )
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="also read the symlinks in a folder SOURCE (or --local DIR) that lead out of it (default: skip)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing data dir")
    p.set_defaults(run=run)


def _add_held_out_arguments(p) -> None:
    """How much is held out for validation and the fixed test slice."""
    p.add_argument(
        "--val-fraction",
        type=real(0, 1, high_open=True),
        default=0.01,
        help="fraction of documents held out (default 0.01)",
    )
    p.add_argument(
        "--held-out",
        choices=("sample", "tail"),
        default="sample",
        help="how validation is chosen: a seeded random sample of whole documents (default), or the "
        "last --val-fraction of the token stream",
    )
    p.add_argument(
        "--val-seed", type=count, default=0, metavar="N", help="the seed of the held-out sample (default 0)"
    )
    p.add_argument(
        "--min-val-tokens",
        type=count,
        metavar="N",
        help="hold out at least N tokens (default 1,048,576: the trainer's default eval_tokens, so a "
        "default run evaluates on what it asks for), capped at 10%% of the corpus, met by sampling more "
        "whole documents from the train split into val (at most twice the floor); "
        "0 = --val-fraction alone",
    )
    p.add_argument("--test-start", type=count, default=0, help="first held-out token of the fixed test slice")
    p.add_argument("--test-tokens", type=count, default=0, help="length of the fixed test slice (0 = none)")


def budget_tokens(preset: str) -> int:
    """Training tokens of a preset's default budget: its max_tokens, else tokens_per_param x parameters."""
    config = resolve_config(preset)
    if config.train.max_tokens:
        return config.train.max_tokens
    n = GPT.count_params(config.with_vocab(50257).model)
    return int(config.train.tokens_per_param * n)


def run(args) -> int:
    check_out_dir(args.out)  # before the budget's model is built
    max_train = budget_tokens(args.budget) if args.budget else None
    if max_train:
        print(f"budget: {max_train:,} training tokens for {args.budget}")
    prepare(
        args.sources,
        args.out,
        args.tokenizer,
        pack=args.pack,
        context=args.context,
        val_fraction=args.val_fraction,
        held_out=args.held_out,
        val_seed=args.val_seed,
        **({} if args.min_val_tokens is None else {"min_val_tokens": args.min_val_tokens}),
        test_start=args.test_start,
        test_tokens=args.test_tokens,
        max_tokens=args.max_tokens,
        max_train_tokens=max_train,
        workers=args.workers,
        shard_tokens=args.shard_tokens,
        local=args.local,
        sample=args.sample,
        text_column=args.text_column,
        include=tuple(args.include),
        follow_symlinks=args.follow_symlinks,
        overwrite=args.overwrite,
    )
    return 0
