"""The `baseforge` command: one verb per module in this package.

Each verb module defines `register(subparsers)`, which adds its parser and sets `run` as the
handler. Verb modules import heavy libraries (torch, ...) inside `run` so `--help` stays fast.
The CLI only parses, calls the library and prints; the library never imports it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from baseforge import __version__, require_torch
from baseforge.errors import UserError

# Order here is the order in `baseforge --help`.
VERBS = [
    "prepare",
    "data",
    "train",
    "presets",
    "plan",
    "sample",
    "eval",
    "hellaswag",
    "harness",
    "import_gpt2",
    "export",
    "checkpoint",
    "report",
    "finetune",
    "answer",
    "judge",
]

DESCRIPTION = """\
Train a GPT-2-class base language model from scratch, on a CPU, one GPU or a multi-GPU node.

Quick start (no download; README.md says how long it takes):
  baseforge train                      # prepares the built-in corpus, trains runs/demo, samples
  baseforge sample runs/demo --prompt "def main("

A real run:
  baseforge prepare fineweb --out data/fineweb --tokenizer gpt2 --budget gpt2-small-seed
  baseforge train --data data/fineweb --out runs/seed --preset gpt2-small-seed
  torchrun --nproc_per_node 8 -m baseforge train --data data/fineweb --out runs/seed --preset gpt2-small-seed

Run `baseforge VERB --help` for each verb's options.
"""


def emit_results(
    rows: list[dict],
    columns: list[tuple[str, str]],
    *,
    as_json: bool,
    save_to=None,
    name: str = "",
    note: str = "",
) -> None:
    """Print per-model results as a table or JSON, and keep them with a run for its report.

    columns: (key, format spec) pairs after the model name, e.g. ("loss", ">10.4f").
    """
    if save_to:
        from baseforge.eval.report import save_eval

        save_eval(save_to, name, rows)
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
        return
    width = max(5, *(len(r["model"]) for r in rows)) + 2
    head = "".join(f"{key:{spec.split('.')[0].rstrip(',')}}" for key, spec in columns)
    print(f"{'model':<{width}}{head}{'   ' + note if note else ''}")
    for r in rows:
        print(f"{r['model']:<{width}}" + "".join(f"{r[key]:{spec}}" for key, spec in columns))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baseforge",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"baseforge {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERBS:
        importlib.import_module(f"baseforge.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        if argv is None and len(sys.argv) == 1:
            parser.print_help()
            return 0
        parser.print_help()
        return 2
    try:
        require_torch()
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"baseforge {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"baseforge {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `baseforge ... | head` closed the pipe: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        from baseforge.fileio import describe_write_error

        line = describe_write_error(exc)  # a full disk, an I/O error, a read-only or forbidden folder
        if line is None:
            raise
        print(f"baseforge {args.verb}: error: {line}", file=sys.stderr)
        return 1
