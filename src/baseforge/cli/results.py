"""Per-model results of an evaluation verb (eval, hellaswag, harness): a table or JSON on stdout, and
kept with a run for its report."""

from __future__ import annotations

import json

from baseforge.errors import UserError
from baseforge.eval.run_files import check_save_to, save_eval


def check_saving(args, name: str) -> None:
    """Before any work: --save-to names a run dir whose evals/NAME.json is free (or --overwrite)."""
    if args.save_to:
        check_save_to(args.save_to, name, args.overwrite)
    elif args.overwrite:
        raise UserError("--overwrite replaces results kept with --save-to: use it with --save-to RUN_DIR")


def emit_results(
    rows: list[dict],
    columns: list[tuple[str, str]],
    *,
    as_json: bool,
    save_to=None,
    name: str = "",
    note: str = "",
) -> None:
    """Print per-model results as a table or JSON, and keep them with a run for its report.

    columns: (key, format spec) pairs after the model name, e.g. ("loss", ">10.4f").
    """
    if save_to:
        save_eval(save_to, name, rows)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    width = max(5, *(len(r["model"]) for r in rows)) + 2
    head = "".join(f"{key:{spec.split('.')[0].rstrip(',')}}" for key, spec in columns)
    print(f"{'model':<{width}}{head}{'   ' + note if note else ''}")
    for r in rows:
        print(f"{r['model']:<{width}}" + "".join(f"{r[key]:{spec}}" for key, spec in columns))
