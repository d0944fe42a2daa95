"""`baseforge train`: pretrain a model on a prepared data dir; with no arguments, the CPU demo."""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_DATA = Path("data/builtin")
DEMO_RUN = Path("runs/demo")
DEMO_PRESET = "cpu-tiny"
DEMO_TOKENIZER = "bpe:4096"

EPILOG = f"""\
examples:
  baseforge train
      the built-in demo: prepares the Python standard library as a corpus into {DEMO_DATA}
      (tokenizer {DEMO_TOKENIZER}, no download), trains preset {DEMO_PRESET} into {DEMO_RUN}, samples
  baseforge train --data data/fineweb --out runs/seed --preset gpt2-small-seed
      the write-up's 163M run (20 tokens per parameter, AdamW 4e-4, warmup + cosine)
  baseforge train --data data/fineweb --out runs/seed --resume
      continue a run exactly where its latest checkpoint left off
  baseforge train --data data/tiny --out runs/t --preset cpu-tiny --set lr=1e-3 --set max_steps=200
  torchrun --nproc_per_node 8 -m baseforge train --data data/fineweb --out runs/seed --preset gpt2-small-seed

config: a preset, then --config FILE.toml (flat keys or [model]/[train] tables), then --set
key=value (repeatable). `--help-config` lists every key and its default. The resolved config
is saved in RUN/config.json and in every checkpoint. On --resume the run's saved config is used,
with any --set applied on top (for example a larger max_steps to extend a run).

the run dir: config.json, metrics.jsonl (one JSON row per logged step), charts/training.png,
checkpoints/step_NNNNNNN/ (model.safetensors, trainer.pt, state.json, config.json),
checkpoints/latest and /best, summary.json, sample.txt. Ctrl-C (or SIGTERM) saves a checkpoint
and exits; --resume continues bit-exactly.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="pretrain a model (no arguments: the built-in CPU demo)",
        description=__doc__.split("\n")[0].strip("`"),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, help=f"prepared data dir (default: {DEMO_DATA}, prepared if missing)")
    p.add_argument("--out", type=Path, help=f"run dir (default: {DEMO_RUN})")
    p.add_argument(
        "--preset", help="model + recipe preset: cpu-tiny, cpu-small, gpt2-small-seed, gpt2-124m, ..."
    )
    p.add_argument("--config", type=Path, help="TOML file of config keys")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    p.add_argument(
        "--help-config", action="store_true", help="list every config key and its default, then exit"
    )
    p.set_defaults(run=run)


def evaluators(cfg) -> dict:
    """In-training evaluations the config asks for (HellaSwag every hellaswag_every steps)."""
    if not cfg.hellaswag_every:
        return {}
    from baseforge.eval.hellaswag import evaluate_hellaswag, load_items

    path = Path(cfg.hellaswag_data) if cfg.hellaswag_data else None
    load_items(path, 1)  # a missing file or an offline download fails now, not mid-run

    def hellaswag(model, tokenizer):
        from baseforge.train.checkpoint import unwrap

        inner = unwrap(model)
        result = evaluate_hellaswag(
            inner, tokenizer, path, cfg.hellaswag_limit, next(inner.parameters()).device
        )
        return {"acc_norm": result["acc_norm"]}

    return {"hellaswag": hellaswag}


def run(args) -> int:
    from baseforge.config import apply_overrides, describe_keys, load_run_config, resolve_config
    from baseforge.errors import UserError

    if args.help_config:
        print(describe_keys())
        return 0
    data = args.data or DEMO_DATA
    out = args.out or DEMO_RUN
    demo = args.data is None
    if demo and not (data / "manifest.json").is_file():
        from baseforge.data.prepare import prepare

        print(f"preparing the built-in corpus into {data} (tokenizer {DEMO_TOKENIZER})")
        prepare(["builtin"], data, tokenizer=DEMO_TOKENIZER, val_fraction=0.05)
    if args.resume:
        if not (out / "config.json").is_file():
            raise UserError(f"nothing to resume in {out}: no config.json (start it without --resume)")
        if args.preset or args.config:
            raise UserError(
                "--resume uses the run's saved config; --preset/--config cannot change it (use --set)"
            )
        config = load_run_config(out)
        apply_overrides(config, args.overrides, model_keys=False)
    else:
        if demo and (out / "checkpoints" / "latest").exists() and not args.preset:
            raise UserError(
                f"{out} already holds the demo run; sample it with `baseforge sample {out}`, "
                f"continue it with `baseforge train --resume`, or remove it to start over"
            )
        config = resolve_config(args.preset or (DEMO_PRESET if demo else None), args.config, args.overrides)
    return train(config, data, out, args.resume)


def train(config, data: Path, out: Path, resume: bool) -> int:
    import torch

    from baseforge.errors import UserError
    from baseforge.train.distributed import process_group
    from baseforge.train.loop import Trainer

    log = lambda m: print(m, flush=True)  # noqa: E731
    with process_group(config.train.dist_timeout_s, config.train.device) as dist:
        trainer = Trainer(
            config, data, out, resume=resume, log=log, evaluators=evaluators(config.train), dist=dist
        )
        try:
            result = trainer.run()
        except torch.OutOfMemoryError:
            raise UserError(
                f"out of memory at micro_batch {config.train.micro_batch}: lower micro_batch (or use "
                "micro_batch=auto), the context, or the model size; checkpoints so far are kept"
            ) from None
    return 130 if result.stopped else 0
