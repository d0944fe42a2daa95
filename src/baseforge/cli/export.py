"""`baseforge export`: a run as a transformers folder, optionally pushed to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.cli.options import add_which
from baseforge.data.hub import check_reachable, describe, login_hint
from baseforge.errors import UserError
from baseforge.eval.hf_export import export_run
from baseforge.eval.model_card import usage_snippet
from baseforge.fileio import check_out_dir

EPILOG = """\
examples:
  baseforge export runs/seed --out exports/seed
  baseforge export runs/seed --which best --out exports/seed --push-to-hub you/gpt2-seed-163m

GPT-2-shaped runs export as a plain GPT2LMHeadModel. Models with rotary embeddings, RMSNorm,
QK-norm, ReLU² or soft-capped logits (the modern presets) are not GPT-2 architectures: the folder
then ships its own modeling_baseforge.py (torch + transformers only) and its model and tokenizer load
with trust_remote_code=True. The export prints the lines that load what it wrote; its README.md
(the model card) holds them too.

An --out that holds anything is refused unless --overwrite, which replaces the folder whole (the new
one is built beside it and swapped in: a failed export leaves the old one as it was).
"""


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help=VERBS["export"],
        description="Export a run as a transformers folder (GPT2LMHeadModel, or remote code if not GPT-2).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder whole")
    add_which(p)
    p.add_argument("--push-to-hub", metavar="NAME", help="upload the folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.set_defaults(run=run)


def run(args) -> int:
    exported = export_run(
        args.run_dir, check_out_dir(args.out), args.which, args.overwrite, hub_name=args.push_to_hub
    )
    out = exported.path
    kind = "remote-code model (needs trust_remote_code=True)" if exported.remote else "GPT2LMHeadModel"
    print(f"exported {args.run_dir} to {out} as a {kind}")
    for note in exported.notes:
        print(f"note: {note}")
    print("load it with:")
    print("\n".join(f"  {line}" for line in usage_snippet(str(out), exported.remote)[:3]))
    if args.push_to_hub:
        check_reachable(args.push_to_hub, hint="the export folder is complete; upload it later")
        from huggingface_hub import HfApi

        try:
            api = HfApi()
            api.create_repo(args.push_to_hub, private=args.private, exist_ok=True)
            api.upload_folder(repo_id=args.push_to_hub, folder_path=str(out))
        except Exception as exc:  # noqa: BLE001 - auth, network, permissions
            raise UserError(
                f"push to {args.push_to_hub} failed ({describe(exc, 200)}); "
                f"{login_hint()} (a token with write access)"
            ) from None
        print(f"pushed to https://huggingface.co/{args.push_to_hub}")
    return 0
