"""`baseforge export`: a run as a transformers folder, optionally pushed to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.cli.options import add_which
from baseforge.data.hub import check_reachable, describe, login_hint
from baseforge.errors import UserError
from baseforge.eval.hf_export import export_run
from baseforge.fileio import check_out_dir

EPILOG = """\
examples:
  baseforge export runs/seed --out exports/seed
  baseforge export runs/seed --which best --out exports/seed --push-to-hub you/gpt2-seed-163m

then, anywhere:
  from transformers import AutoModelForCausalLM, AutoTokenizer
  model = AutoModelForCausalLM.from_pretrained("exports/seed")

GPT-2-shaped runs export as a plain GPT2LMHeadModel. Models with rotary embeddings, RMSNorm,
QK-norm, ReLU² or soft-capped logits (the modern presets) are not GPT-2 architectures: the folder
then ships its own modeling_baseforge.py (torch + transformers only) and loads with
  AutoModelForCausalLM.from_pretrained("exports/modern", trust_remote_code=True)
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
    add_which(p)
    p.add_argument("--push-to-hub", metavar="NAME", help="upload the folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.set_defaults(run=run)


def run(args) -> int:
    out = export_run(args.run_dir, check_out_dir(args.out), args.which)
    remote = (out / "modeling_baseforge.py").is_file()
    kind = "remote-code model (load with trust_remote_code=True)" if remote else "GPT2LMHeadModel"
    print(f"exported {args.run_dir} to {out} as a {kind}")
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
