"""`baseforge hellaswag`: HellaSwag accuracy (completion style: acc, acc_norm, acc_norm_tok)."""

from __future__ import annotations

import argparse
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.cli.options import add_device, add_json, add_save_to, add_which, positive_int
from baseforge.cli.results import check_saving, emit_results
from baseforge.eval.hellaswag import evaluate_hellaswag
from baseforge.eval.models import load_any
from baseforge.train.precision import resolve_device

EPILOG = """\
examples:
  baseforge hellaswag runs/seed --data hellaswag_val.jsonl.gz --limit 1000
  baseforge hellaswag runs/seed runs/openai-gpt2 --json

metrics (random guessing scores 0.25 on each):
  acc           lm-evaluation-harness's protocol: cleaned text with the activity label, the ending
                with the highest total log-probability
  acc_norm      lm-evaluation-harness's acc_norm: the same, divided by the ending's length in
                characters. Compare with lm-eval figures (papers, model cards, the Open LLM
                Leaderboard); `baseforge harness MODEL --tasks hellaswag` computes the same.
  acc_norm_tok  llm.c / nanoGPT's protocol: raw ctx, mean log-probability per ending token.
                Compare with llm.c's figures (OpenAI GPT-2 124M: 0.2955).

Without --data the validation set is downloaded once to ~/.cache/baseforge/.
MODEL is a run dir, a checkpoint dir, hf:PATH (a transformers folder with its own tokenizer)
or a Hub name.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "hellaswag",
        help=VERBS["hellaswag"],
        description="HellaSwag, completion style: acc and acc_norm (lm-eval's), acc_norm_tok (llm.c's).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--data", type=Path, help="hellaswag_val.jsonl(.gz) (default: download once)")
    p.add_argument("--limit", type=positive_int, help="only the first N items")
    add_which(p)
    add_device(p)
    add_save_to(p, "hellaswag")
    add_json(p, "a JSON list: one object per model (model, step, acc, acc_norm, acc_norm_tok, items, stderr)")
    p.set_defaults(run=run)


def run(args) -> int:
    check_saving(args, "hellaswag")  # before any work: results are not lost at the end
    device = resolve_device(args.device)
    rows = []
    for spec in args.models:
        m = load_any(spec, device, args.which)
        result = evaluate_hellaswag(m.model, m.tokenizer, args.data, args.limit, device, show_progress=True)
        rows.append({"model": spec, "step": m.step, **result})
    emit_results(
        rows,
        [("acc", ">8.4f"), ("acc_norm", ">10.4f"), ("acc_norm_tok", ">14.4f"), ("items", ">8")],
        as_json=args.json,
        save_to=args.save_to,
        name="hellaswag",
    )
    return 0
