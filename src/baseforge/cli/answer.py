"""`baseforge answer`: deterministic answers to the instruction test split, for `baseforge judge`."""

from __future__ import annotations

import argparse
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.cli.options import add_device, add_which, positive_int
from baseforge.eval.instruct import answer
from baseforge.fileio import check_out_file
from baseforge.train.precision import resolve_device

EPILOG = """\
example:
  baseforge answer runs/seed-ift --which best --data instruction-data.json --out answers/seed.jsonl

Greedy decoding from the run's latest checkpoint, or with --which best its best (a fine-tuning
run's best epoch; the latest if it has none), stopping at end-of-text or at a following '###'
header; one JSON line per test item: id, model, instruction, input, reference, answer. --name
sets the model's name in the judge's table (default: the run dir's name).
"""


def register(sub) -> None:
    p = sub.add_parser(
        "answer",
        help=VERBS["answer"],
        description="Greedy answers to the test split of an instruction set.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="the answers file (JSON lines)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--name", help="model name in the answers (default: the run dir's name)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.add_argument("--limit", type=positive_int, help="only the first N test items")
    add_which(p)
    add_device(p)
    p.set_defaults(run=run)


def run(args) -> int:
    check_out_file(args.out, args.overwrite)  # before generating: earlier answers are not lost
    rows = answer(
        args.run_dir,
        args.data,
        args.out,
        name=args.name,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        which=args.which,
        device=resolve_device(args.device),
    )
    print(f"wrote {len(rows)} answers to {args.out}")
    return 0
