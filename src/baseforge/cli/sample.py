"""`baseforge sample`: generate text from a run, a checkpoint or a transformers folder, with a KV cache."""

from __future__ import annotations

import argparse

from baseforge.cli import VERBS
from baseforge.cli.options import (
    add_device,
    add_which,
    non_negative_float,
    non_negative_int,
    positive_int,
    seed,
)
from baseforge.errors import UserError
from baseforge.eval.models import load_any
from baseforge.generate import generate
from baseforge.train.precision import resolve_device

EPILOG = """\
examples:
  baseforge sample runs/demo --prompt "def main("
  baseforge sample runs/seed --prompt "Every effort moves you" --max-new-tokens 100 --top-k 50
  baseforge sample runs/seed/checkpoints/step_0001000 --prompt "The" --temperature 0   # greedy
  baseforge sample runs/seed --which best --num-samples 3 --seed 1
  baseforge sample hf:exports/seed --prompt "Once upon a time"   # a transformers folder

MODEL is a run dir (its latest checkpoint, or --which best), a checkpoint dir, hf:PATH (a
transformers GPT-2 folder with its own tokenizer) or a Hub name (downloaded when online).
A sample ends at the tokenizer's end-of-text token (<|endoftext|>) unless --no-stop is given.
Each new token costs one position thanks to the KV cache; past the context, the oldest tokens
are dropped and the cache is rebuilt.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "sample",
        help=VERBS["sample"],
        description="Generate text from a run, checkpoint or transformers folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="run dir, checkpoint dir, hf:PATH or Hub name")
    p.add_argument("--prompt", default="", help="text to continue (default: start from end-of-text)")
    p.add_argument("--max-new-tokens", type=positive_int, default=100)
    p.add_argument("--temperature", type=non_negative_float, default=0.8, help="0 = greedy")
    p.add_argument(
        "--top-k", type=non_negative_int, default=50, help="sample from the k most likely tokens (0 = all)"
    )
    p.add_argument("--seed", type=seed, default=1337)
    p.add_argument("--num-samples", type=positive_int, default=1)
    p.add_argument(
        "--no-stop",
        action="store_true",
        help="keep going past <|endoftext|> (default: a sample ends there)",
    )
    add_which(p)
    add_device(p)
    p.set_defaults(run=run)


def run(args) -> int:
    loaded = load_any(args.model, resolve_device(args.device), which=args.which)
    model, tokenizer = loaded.model, loaded.tokenizer
    eot = tokenizer.eot_id
    if not args.prompt and eot is None:
        raise UserError(f"{args.model}'s tokenizer has no end-of-text token to start from: pass --prompt")
    prompt = tokenizer.encode(args.prompt) if args.prompt else [eot]
    for i in range(args.num_samples):
        ids = generate(
            model,
            prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k or None,
            seed=args.seed + i,
            eot_id=eot,
            stop_at_eot=eot is not None and not args.no_stop,
        )
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + tokenizer.decode(ids))
    return 0
