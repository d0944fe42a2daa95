"""`baseforge eval`: held-out loss and perplexity of one or more models on the same tokens."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from baseforge.cli import VERBS
from baseforge.cli.options import add_device, add_json, add_save_to, add_which, positive_count, positive_int
from baseforge.cli.results import check_saving, emit_results
from baseforge.data.manifest import read_manifest
from baseforge.data.mixture import source_names
from baseforge.errors import UserError
from baseforge.eval.loss import check_vocab, heldout_loss
from baseforge.eval.models import load_any
from baseforge.train.precision import resolve_device

EPILOG = """\
MODEL is a run dir, a checkpoint dir, hf:PATH (a transformers GPT-2 folder, with its own tokenizer:
tokenizer.json or vocab.json + merges.txt) or a Hub name (gpt2, gpt2-medium, ...; downloaded when
online). A folder's tokenizer must give the data's ids (checked token for token).

examples:
  baseforge eval runs/seed --data data/fineweb
  # the write-up's yardstick: your model against OpenAI's on exactly the same held-out tokens
  baseforge import-gpt2 gpt2 --out runs/openai-gpt2
  baseforge eval runs/seed runs/openai-gpt2 hf:/models/gpt2-medium --data data/fineweb --split test
  baseforge eval runs/seed --data data/fineweb --tokens 10e6 --json
  # a mixture's sources, a loss column each (the same first --tokens of each one's split)
  baseforge eval runs/mix runs/web-only --data data/web --data data/code

All models are scored with the same context (the smallest among them, or --context, which may not
exceed it) on the first
--tokens tokens of the split, in order: the same targets for every model and every rerun.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help=VERBS["eval"],
        description="Mean cross-entropy and perplexity on a fixed held-out token slice.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="prepared data dir; repeat it to score every model on each (a mixture's sources: a column each)",
    )
    p.add_argument("--split", default="val", help="val (default) or test")
    p.add_argument(
        "--tokens", type=positive_count, default=1_048_576, help="tokens to score (default 1M; 10e6 works)"
    )
    p.add_argument("--context", type=positive_int, help="window length (default: the smallest model context)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    add_which(p)
    add_device(p)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster; default fp32 for exactness)")
    add_save_to(p, "heldout-loss")
    add_json(p, "a JSON list: one object per model (model, loss, perplexity, tokens)")
    p.set_defaults(run=run)


def run(args) -> int:
    check_saving(args, "heldout-loss")  # before any work: results are not lost at the end
    device = resolve_device(args.device)
    names = source_names(args.data) if len(args.data) > 1 else [""]
    loaded = [load_any(spec, device, args.which) for spec in args.models]
    for data in args.data:
        manifest = read_manifest(data)
        for m in loaded:
            check_vocab(m.name, m.model, m.tokenizer, data, manifest)
    context = eval_context(loaded, args.context)
    rows = []
    for m in loaded:
        row = {"model": m.name, "step": m.step}
        for data, name in zip(args.data, names):
            result = heldout_loss(
                m.model,
                data,
                split=args.split,
                tokens=args.tokens,
                context=context,
                batch_size=args.batch_size,
                device=device,
                autocast_dtype=torch.bfloat16 if args.bf16 else None,
                show_progress=True,
            )
            row.update({f"{key}/{name}" if name else key: value for key, value in result.items()})
        rows.append(row)
    columns = [("loss", ">10.4f"), ("perplexity", ">12.2f"), ("tokens", ">12,")]
    if len(names) > 1:  # a loss column per data dir, named by its folder
        columns = [(f"loss/{name}", f">{max(12, len(name) + 7)}.4f") for name in names]
    emit_results(
        rows,
        columns,
        as_json=args.json,
        save_to=args.save_to,
        name="heldout-loss",
        note=f"({args.split}, context {context})",
    )
    return 0


def eval_context(loaded: list, asked: int | None) -> int:
    """The context every model is scored at: the smallest model's, or `asked` when not longer."""
    smallest = min(loaded, key=lambda m: m.model.config.context)
    context = smallest.model.config.context
    if asked is not None and asked > context:
        # Never a table labelled with a context the models did not use: refuse, and say the limit.
        raise UserError(
            f"--context {asked} is longer than {smallest.name}'s context ({context}): "
            f"pass --context {context} or less (or leave it out)"
        )
    return asked if asked is not None else context
