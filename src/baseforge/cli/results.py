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

    columns: (key, format spec) pairs after the model name, e.g. ("loss", ">10.4f"). A row's "step" (the
    checkpoint's training step) is a column when any row has one; a figure with a standard error in the
    row's "stderr" is printed as value ± stderr.
    """
    if save_to:
        save_eval(save_to, name, rows)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if any(r.get("step") is not None for r in rows):
        columns = [("step", ">10,"), *columns]
    errors: list[dict] = [r["stderr"] if isinstance(r.get("stderr"), dict) else {} for r in rows]
    spread = {key for key, _ in columns if any(isinstance(e.get(key), float) for e in errors)}
    if spread:
        note = (note + "   " if note else "") + "± one standard error (a 95% interval is about ±2 of them)"
    width = max(5, *(len(r["model"]) for r in rows)) + 2
    wide = {key: _width(spec) + (ERROR_WIDTH if key in spread else 0) for key, spec in columns}
    head = "".join(f"{key:>{wide[key]}}" for key, _ in columns)
    print(f"{'model':<{width}}{head}{'   ' + note if note else ''}")
    for r, e in zip(rows, errors):
        cells = (_cell(r.get(key), spec, e.get(key), wide[key]) for key, spec in columns)
        print(f"{r['model']:<{width}}" + "".join(cells))


ERROR_WIDTH = len(" ± 0.0000")


def _width(spec: str) -> int:
    digits = spec.lstrip("<>^").split(".")[0].rstrip(",")
    return int(digits) if digits.isdigit() else 0


def _cell(value, spec: str, stderr, width: int) -> str:
    """One table cell: a dash for a missing figure (a Hub model has no step), value ± stderr if known."""
    if value is None:
        return f"{'–':>{width}}"
    text = f"{value:{spec.lstrip('<>^').lstrip('0123456789')}}"
    if isinstance(stderr, float):
        text += f" ± {stderr:.4f}"
    return f"{text:>{width}}"
