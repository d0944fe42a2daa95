"""`baseforge presets`: every preset with its size, context and what it is for."""

from __future__ import annotations

import argparse
import json

from baseforge.cli import VERBS
from baseforge.cli.options import add_json
from baseforge.model import GPT
from baseforge.presets import PRESETS

EPILOG = """\
Each preset is a model shape and a training recipe together (src/baseforge/presets.py); start a
run from one with `baseforge train --preset NAME`, change any key with --set, and see what fits
your GPU with `baseforge plan --preset NAME --gpu rtx-3090`.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "presets",
        help=VERBS["presets"],
        description=__doc__.split("\n")[0].strip("`"),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_json(p, "JSON instead of a table")
    p.set_defaults(run=run)


# Presets whose vocabulary comes from the data are counted with the built-in demo's tokenizer.
DEMO_VOCAB = 4096


def rows() -> list[dict]:
    out = []
    for preset in PRESETS.values():
        config = preset.model
        vocab_from_data = config.vocab_size is None
        if vocab_from_data:
            config = config.with_(vocab_size=DEMO_VOCAB)
        params = GPT.count_params(config)
        out.append({"name": preset.name, "params": params, "vocab_from_data": vocab_from_data,
                    "context": config.context, "summary": preset.summary})  # fmt: skip
    return out


def run(args) -> int:
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{'preset':<19}{'params':>9}  {'context':>7}  what it is for")
    for r in table:
        size = f"{r['params'] / 1e6:.1f}M" + ("*" if r["vocab_from_data"] else "")
        print(f"{r['name']:<19}{size:>9}  {r['context']:>7}  {r['summary']}")
    print(f"* vocabulary from the data; counted at {DEMO_VOCAB} tokens (the built-in demo's tokenizer)")
    return 0
