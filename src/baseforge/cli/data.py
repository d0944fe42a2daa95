"""`baseforge data info DATA_DIR [--check]`: what a data dir holds; --check reads every shard."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.cli.options import add_json
from baseforge.data.manifest import Manifest, read_manifest
from baseforge.data.shards import split_shards
from baseforge.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "data",
        help=VERBS["data"],
        description="Inspect a prepared data dir.",
        epilog="example:\n  baseforge data info data/fineweb --check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="documents, tokens, shards, tokenizer, split sizes")
    info.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    info.add_argument("--check", action="store_true", help="read and validate every shard")
    add_json(info, "the summary as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    manifest = read_manifest(args.data_dir)
    summary = data_summary(args.data_dir, manifest)
    if args.check:
        check_shards(args.data_dir, manifest)
        summary["check"] = "ok"
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print_summary(args.data_dir, summary, manifest.tokenizer)
    return 0


def data_summary(data_dir: Path, manifest: Manifest) -> dict:
    """What `data info` says of a data dir, from its manifest (the --json output)."""
    summary = {
        "data_dir": str(data_dir),
        "tokenizer": manifest.tokenizer,
        "pack": manifest.pack,
        "sources": list(manifest.sources),
        "documents": manifest.documents,
        "tokens": manifest.tokens,
        "splits": {
            name: {"documents": s.documents, "tokens": s.tokens, "shards": len(s.shards)}
            for name, s in manifest.splits.items()
        },
    }
    if manifest.cropped.get("tokens"):
        summary["cropped"] = manifest.cropped
    summary["held_out"] = {
        "method": manifest.held_out,
        "seed": manifest.val_seed,
        "how": manifest.held_out_words(),
    }
    if manifest.skipped.get("binary_files") or manifest.skipped.get("symlinks"):
        summary["skipped"] = manifest.skipped
    if manifest.surrogates:
        summary["surrogates"] = manifest.surrogates
    return summary


def check_shards(data_dir: Path, manifest: Manifest) -> None:
    """Read every shard; raise naming the first that is unreadable or holds an id past the vocabulary."""
    for split in manifest.splits:
        for tokens in split_shards(data_dir, manifest, split):  # raises naming the bad file
            top = int(tokens.max()) if len(tokens) else 0
            if top >= manifest.vocab_size:
                raise UserError(
                    f"{split} shard holds token id {top} >= vocab size {manifest.vocab_size}: corrupt; "
                    "re-run prepare"
                )


def print_summary(data_dir: Path, summary: dict, tok: dict) -> None:
    digest = f", sha256 {tok['sha256'][:12]}" if tok.get("sha256") else ""
    print(
        f"{data_dir}: {summary['documents']:,} documents, {summary['tokens']:,} tokens, "
        f"tokenizer {tok['name']} ({tok['vocab_size']} tokens{digest}), packing {summary['pack']}"
    )
    for name, s in summary["splits"].items():
        docs = f"{s['documents']:,} documents, " if s["documents"] is not None else ""
        print(f"  {name:<6} {docs}{s['tokens']:,} tokens in {s['shards']} shard(s)")
    if "cropped" in summary:
        print(
            f"  crop dropped {summary['cropped']['tokens']:,} tokens "
            f"from {summary['cropped']['documents']:,} documents"
        )
    if "val" in summary["splits"]:
        print(f"  val is {summary['held_out']['how']}")
    if "skipped" in summary:
        skipped = summary["skipped"]
        if skipped.get("binary_files"):
            print(f"  skipped {skipped['binary_files']:,} binary file(s), first {skipped['first']}")
        if skipped.get("symlinks"):
            print(
                f"  skipped {skipped['symlinks']:,} symlink(s) out of a source folder, "
                f"first {skipped['first_symlink']}"
            )
    if "surrogates" in summary:
        s = summary["surrogates"]
        print(f"  {s['documents']:,} document(s) had lone surrogates replaced by U+FFFD, first {s['first']}")
    if "check" in summary:
        print("check: every shard is intact")
