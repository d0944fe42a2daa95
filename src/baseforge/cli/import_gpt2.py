"""`baseforge import-gpt2`: OpenAI GPT-2 weights (transformers format) as a baseforge run."""

from __future__ import annotations

import argparse
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.eval.hf_export import import_gpt2
from baseforge.fileio import check_out_dir

EPILOG = """\
examples:
  baseforge import-gpt2 gpt2 --out runs/openai-gpt2                 # from the Hub, when online
  baseforge import-gpt2 gpt2-medium --out runs/openai-gpt2-medium
  baseforge import-gpt2 /models/gpt2 --out runs/openai-gpt2         # a local transformers folder

The run then works everywhere a baseforge run does: sample, eval, hellaswag, finetune, export.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "import-gpt2",
        help=VERBS["import-gpt2"],
        description="Import a transformers GPT-2 checkpoint (safetensors or .bin) as a run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="a local transformers folder or a Hub name")
    p.add_argument("--out", type=Path, required=True, help="run dir to create")
    p.set_defaults(run=run)


def run(args) -> int:
    out = import_gpt2(args.source, check_out_dir(args.out))
    print(f"imported {args.source} into {out}")
    return 0
