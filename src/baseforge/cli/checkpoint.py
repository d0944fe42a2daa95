"""`baseforge checkpoint consolidate RUN`: model.safetensors for sharded (FSDP) checkpoints that lack it."""

from __future__ import annotations

import argparse
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.errors import UserError
from baseforge.rundir import RunDir
from baseforge.train.checkpoint.format import MODEL_FILE
from baseforge.train.checkpoint.sharded import consolidate


def register(sub) -> None:
    p = sub.add_parser(
        "checkpoint",
        help=VERBS["checkpoint"],
        description="Checkpoint tools.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser(
        "consolidate",
        help="write model.safetensors from dcp/ shards where it is missing",
        description="For each checkpoint of RUN (or the one checkpoint dir given) that has FSDP shards "
        "(dcp/) but no model.safetensors, gather the shards into model.safetensors, so eval, sample, "
        "export and finetune can read it. Runs in one process; any world size wrote the shards.",
        epilog="example:\n  baseforge checkpoint consolidate runs/xl-fsdp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("run_dir", type=Path, metavar="RUN", help="a run dir or one checkpoint dir")
    c.set_defaults(run=run)


def candidates(path: Path) -> list[Path]:
    """Checkpoint dirs under `path` (or `path` itself) that hold dcp/ shards."""
    if (path / "dcp").is_dir():
        return [path]
    root = RunDir(path).checkpoints
    return sorted(p for p in root.glob("step_*") if (p / "dcp").is_dir()) if root.is_dir() else []


def run(args) -> int:
    found = candidates(args.run_dir)
    if not found:
        raise UserError(
            f"{args.run_dir} holds no sharded checkpoint (no dcp/ folder); nothing to consolidate"
        )
    for ckpt in found:
        if (ckpt / MODEL_FILE).is_file():
            print(f"{ckpt}: model.safetensors present")
            continue
        print(f"{ckpt}: wrote {consolidate(ckpt)}")
    return 0
