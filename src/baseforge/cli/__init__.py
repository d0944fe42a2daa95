"""The `baseforge` command: one verb per module in this package.

Each verb module defines `register(subparsers)`, which adds its parser (with its one-line help from
`VERBS` here) and sets `run` as the handler; it imports what it uses (torch, the library) at its top.
`main` imports only the module of the verb being run (or whose --help is asked): `baseforge --help`
lists every verb from `VERBS` without importing any of them, so it stays fast (no torch).
The CLI only parses, calls the library and prints; the library never imports it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from baseforge import __version__, require_torch
from baseforge.errors import UserError
from baseforge.fileio import describe_write_error

# Verb -> its one-line help, the one place it is written (each verb's register() reads it from here).
# Order here is the order in `baseforge --help`; verb VERB lives in cli/VERB.py ("-" spelled "_").
VERBS = {
    "prepare": "tokenize text sources into token shards",
    "data": "inspect a prepared data dir",
    "train": "pretrain a model (no arguments: the built-in CPU demo)",
    "presets": "list the presets: parameters, context, intended hardware",
    "plan": "what fits on which GPUs, how fast, and at what cost",
    "sample": "generate text from a trained model",
    "eval": "held-out loss / perplexity, several models side by side",
    "hellaswag": "HellaSwag accuracy of one or more models",
    "harness": "lm-evaluation-harness tasks (hellaswag, arc_easy, piqa, ...), several models side by side",
    "import-gpt2": "import OpenAI GPT-2 weights as a baseforge run",
    "export": "export a run as a transformers folder (and push to the Hub)",
    "checkpoint": "checkpoint tools: consolidate FSDP shards into model.safetensors",
    "report": "write RUN/report.md and RUN/report.html (or into --out DIR)",
    "finetune": "instruction-tune a base model (the instruction-following test)",
    "answer": "answer the instruction test split (for judge)",
    "judge": "score answers with an LLM judge (OpenAI-compatible or Ollama)",
}

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


def verb_module(verb: str):
    """The module of `verb`, imported now (with torch and the library it uses)."""
    return importlib.import_module(f"baseforge.cli.{verb.replace('-', '_')}")


def chosen_verb(argv: list[str]) -> str | None:
    """The verb `argv` names: its first argument that is not an option (the top level's options,
    -h and --version, take no value), if that is one of VERBS."""
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    return word if word in VERBS else None


class Parser(argparse.ArgumentParser):
    """argparse's parser, its errors in one line like every other user error (what is wrong, where
    to look), not the usage block first; every verb's parser is one (subparsers take the class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The command's parser: every verb listed with its help, only `verb`'s own parser registered
    (its module imported); the others are stand-ins, never parsed, since the command line names `verb`."""
    parser = Parser(
        prog="baseforge",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"baseforge {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, summary in VERBS.items():
        if name == verb:
            verb_module(name).register(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    verb = chosen_verb(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(verb)
    except Exception:
        # The verb's module imports torch and the library: under a torch older than the floor that may
        # fail first. Say so in one line, as before a run; any other failure keeps its traceback.
        try:
            require_torch()
        except UserError as exc:
            print(f"baseforge {verb}: error: {exc}", file=sys.stderr)
            return 1
        raise
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
        line = describe_write_error(exc)  # a full disk, an I/O error, a read-only or forbidden folder
        if line is None:
            raise
        print(f"baseforge {args.verb}: error: {line}", file=sys.stderr)
        return 1
