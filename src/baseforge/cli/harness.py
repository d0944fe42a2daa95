"""`baseforge harness`: lm-evaluation-harness tasks on baseforge models, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.cli.options import add_device, add_json, add_save_to, add_which, non_negative_int, positive_int
from baseforge.cli.results import check_saving, emit_results
from baseforge.errors import UserError
from baseforge.eval.harness import require_lm_eval, run_harness
from baseforge.eval.models import load_any
from baseforge.train.precision import resolve_device

EPILOG = """\
examples:
  baseforge harness runs/seed --tasks hellaswag,arc_easy,piqa,lambada_openai
  baseforge harness runs/seed runs/openai-gpt2 hf:exports/seed --tasks hellaswag --limit 1000 --json
  baseforge harness runs/seed --tasks hellaswag --save-to runs/seed     # shown by `baseforge report`

MODEL is a run dir, a checkpoint dir (any preset, the modern ones too), hf:PATH (a transformers
folder with its own tokenizer) or a Hub name. Needs lm-evaluation-harness:
pip install "baseforge[harness]". Task data comes from the Hugging Face Hub unless a task says
otherwise; `baseforge harness` and `baseforge hellaswag` give the same acc and acc_norm.

offline: a task YAML pointing at local JSON lines, in a folder passed with --include-path. A task
there with a built-in name (e.g. hellaswag) replaces the built-in one. For HellaSwag:

  mkdir tasks
  cat > tasks/hellaswag.yaml <<'YAML'
  task: hellaswag
  dataset_path: json
  dataset_kwargs:
    data_files:
      validation: /data/eval/hellaswag_val.jsonl.gz   # rowanz/hellaswag rows
  output_type: multiple_choice
  validation_split: validation
  process_docs: !function utils.process_docs
  doc_to_text: "{{query}}"
  doc_to_target: "{{label}}"
  doc_to_choice: "choices"
  metric_list:
    - metric: acc
    - metric: acc_norm
  YAML
  echo "from lm_eval.tasks.hellaswag.utils import process_docs" > tasks/utils.py
  HF_DATASETS_OFFLINE=1 baseforge harness runs/seed --tasks hellaswag --include-path tasks
"""


def register(sub) -> None:
    p = sub.add_parser(
        "harness",
        help=VERBS["harness"],
        description="Score models on EleutherAI lm-evaluation-harness tasks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--limit", type=positive_int, help="only the first N documents of each task")
    p.add_argument(
        "--num-fewshot", type=non_negative_int, help="few-shot examples (default: each task's own)"
    )
    p.add_argument(
        "--include-path", action="append", default=[], metavar="DIR", help="folder of local task YAMLs"
    )
    p.add_argument("--batch-size", type=positive_int, default=8)
    add_which(p)
    add_device(p)
    add_save_to(p, "harness")
    add_json(p, "a JSON list: one object per model (model, step, a key per task metric, stderr)")
    p.set_defaults(run=run)


def run(args) -> int:
    require_lm_eval()  # before loading any model: the missing extra is the first thing to say
    check_saving(args, "harness")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UserError("--tasks names no task")
    for folder in args.include_path:
        if not Path(folder).is_dir():
            raise UserError(f"--include-path {folder} is not a folder")
    device = resolve_device(args.device)
    results, steps = [], []
    for spec in args.models:
        loaded = load_any(spec, device, args.which)
        steps.append(loaded.step)
        results.append(
            run_harness(
                loaded, tasks, args.limit, args.include_path, args.batch_size, device, args.num_fewshot
            )
        )
    keys = list(dict.fromkeys(k for r in results for k in r.metrics))
    rows = [
        {
            "model": r.model,
            "step": step,
            **{k: r.metrics.get(k, float("nan")) for k in keys},
            "stderr": r.stderr,
        }
        for r, step in zip(results, steps)
    ]
    emit_results(
        rows,
        [(k, f">{max(len(k), 8) + 2}.4f") for k in keys],
        as_json=args.json,
        save_to=args.save_to,
        name="harness",
        note=f"(limit {args.limit})" if args.limit else "",
    )
    return 0
