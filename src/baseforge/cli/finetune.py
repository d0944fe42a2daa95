"""`baseforge finetune`: instruction-tune a base model on Alpaca-style examples (the book's ch. 7 test)."""

from __future__ import annotations

import argparse
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.cli.options import positive_int
from baseforge.train.finetune import finetune

EPILOG = """\
The instruction-following test, end to end:
  baseforge train --data data/fineweb --out runs/seed --preset gpt2-small-seed     # a base model
  baseforge import-gpt2 gpt2 --out runs/openai-gpt2                                # a reference
  baseforge finetune runs/seed --data instruction-data.json --out runs/seed-ift
  baseforge finetune runs/openai-gpt2 --data instruction-data.json --out runs/gpt2-ift
  baseforge answer runs/seed-ift --which best --data instruction-data.json --out seed.jsonl
  baseforge answer runs/gpt2-ift --which best --data instruction-data.json --out gpt2.jsonl
  baseforge judge seed.jsonl gpt2.jsonl --judge gpt-4.1

Recipe (the book's): AdamW lr 5e-5, weight decay 0.1, micro-batch 8, 2 epochs, loss on response
tokens only (--no-mask-prompt for all tokens), an evaluation + checkpoint every half epoch, early
stop after 2 evaluations without improvement; the `best` checkpoint is the best epoch. The split
(85% train / 5% val / 10% test, shuffled with seed 123) is the same for every model. Any training
key can be changed with --set (lr, max_steps, micro_batch, precision, ...).
"""


def register(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help=VERBS["finetune"],
        description="Fine-tune a base model on Alpaca-style instruction data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="a baseforge run or checkpoint (import OpenAI GPT-2 first)")
    p.add_argument("--data", type=Path, required=True, help="JSON list of {instruction, input, output}")
    p.add_argument("--out", type=Path, required=True, help="run dir of the fine-tuned model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-mask-prompt", action="store_true", help="also train on the prompt tokens")
    p.add_argument(
        "--limit", type=positive_int, help="use only the first N examples of each split (quick runs)"
    )
    p.add_argument("--resume", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    result = finetune(
        args.model,
        args.data,
        args.out,
        args.overrides,
        mask_prompt=not args.no_mask_prompt,
        resume=args.resume,
        limit=args.limit,
        log=lambda m: print(m, flush=True),
    )
    return 130 if result.stopped else 0
