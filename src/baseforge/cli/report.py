"""`baseforge report RUN_DIR [--out DIR]`: one page (Markdown and HTML) with config, charts, losses, evals."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.eval.report import build_report


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help=VERBS["report"],
        description="One page about a run: config, charts, throughput, losses and evaluations.",
        epilog="examples:\n  baseforge report runs/demo && xdg-open runs/demo/report.html\n"
        "  baseforge report /shared/runs/seed --out reports/seed     # a run dir you cannot write to\n\n"
        "Evaluations saved with `--save-to RUN` (eval, hellaswag, harness) appear on the page as tables, "
        "a row per model: evaluate reference models in the same command to see them side by side.\n"
        "The page shows only plain files inside RUN_DIR: a symlink, or a torn or misshapen file, is left "
        "out, named on the page and in a note line.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write report.md, report.html and report.png into DIR instead of RUN_DIR",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    md, page = build_report(
        args.run_dir, args.out, log=lambda m: print(f"baseforge report: note: {m}", file=sys.stderr)
    )
    print(f"wrote {md} and {page}")
    return 0
