"""`baseforge train`: pretrain a model on a prepared data dir; with no arguments, the CPU demo."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from baseforge.cli import VERBS
from baseforge.config import describe_keys, load_run_config
from baseforge.data.manifest import MANIFEST
from baseforge.data.mixed import PreparedData
from baseforge.data.mixture import parse_sources
from baseforge.data.prepare import prepare
from baseforge.errors import UserError
from baseforge.fileio import check_out_dir, output_dir
from baseforge.launch import (
    check_run,
    dry_run_report,
    evaluators,
    init_from,
    mixture_segment,
    open_data,
    preflight,
    resume_data,
)
from baseforge.overrides import DEFAULT_PRESET, resolve_config, resume_config, toml_data
from baseforge.presets import preset_config
from baseforge.rundir import RunDir
from baseforge.runlock import RunLock
from baseforge.train.distributed import dist_from_env, process_group
from baseforge.train.loop import RunResult, Trainer

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
  baseforge train --out runs/seed --resume --extend --set max_steps=30000
      make a run longer: the schedule so far is kept and continues from the current learning rate
      (constant, then a decay over the last decay_fraction of the new steps); without --extend a
      length change that would move the learning rate is refused. A run decayed under 5% of its
      peak is refused too, unless --set extend_lr=F re-warms it to F x the peak and decays again
  baseforge train --data data/tiny --out runs/t --preset cpu-tiny --set lr=1e-3 --set max_steps=200
  baseforge train --data data/fineweb --out runs/seed --preset gpt2-small-seed --dry-run
      run train's checks (data, run dir, resume), print the resolved config, parameter count, tokens
      per step, steps, tokens and an estimated time; train nothing
  baseforge train --data data/new --out runs/more --init-from runs/seed --set max_steps=2000
      continued pretraining: a run's (or hf:DIR's) weights, a fresh optimizer and schedule
  torchrun --nproc_per_node 8 -m baseforge train --data data/fineweb --out runs/seed --preset gpt2-small-seed

config: a preset, then --config FILE.toml (flat keys or [model]/[train] tables), then --set
key=value (repeatable). A recipe may name its data in --data's syntax (a --data given wins):
data = ["data/web:0.7", "data/code:0.3"]. `--help-config` lists every key and its default (the base
values; with --preset NAME, that preset's). The resolved config is saved in RUN/config.json and in every
checkpoint. On --resume the run's saved config is used, with any --set of a train key applied on
top (for example a larger max_steps to extend a run); re-running the original command with --resume
appended works, and a flag that would change the saved config is refused, naming the key. The run
remembers its data (RUN/data.json): --resume without --data uses it; other data needs --new-data
and the same tokenizer.

the run dir: config.json, data.json, metrics.jsonl (one JSON row per logged step), charts/training.png,
checkpoints/step_NNNNNNN/ (model.safetensors, trainer.safetensors + trainer.json, state.json, config.json),
checkpoints/latest and /best, summary.json, sample.txt. Ctrl-C (or SIGTERM) saves a checkpoint
and exits; --resume continues bit-exactly.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help=VERBS["train"],
        description=__doc__.split("\n")[0].strip("`"),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        action="append",
        metavar="DIR[:WEIGHT]",
        help=f"prepared data dir (default: {DEMO_DATA}, prepared if missing); repeat it with a weight each "
        "to train on a mixture, e.g. --data data/web:0.7 --data data/code:0.3 (shares of the tokens)",
    )
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
        "--new-data", action="store_true", help="with --resume: continue on other data (same tokenizer)"
    )
    p.add_argument(
        "--extend",
        action="store_true",
        help="with --resume and a larger max_steps: keep the schedule so far, continue from the current rate",
    )
    p.add_argument(
        "--init-from", metavar="MODEL", help="start from these weights: a run, checkpoint or hf:DIR"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved run (config, size, steps) and exit"
    )
    p.add_argument(
        "--help-config",
        action="store_true",
        help="list every config key: type, default (with --preset, that preset's value), meaning",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    if args.help_config:
        print(help_config(args.preset))
        return 0
    out = check_out_dir(args.out or DEMO_RUN)
    # Before anything reads the run dir: a live run's reads as a stopped one (no checkpoint yet).
    run_lock(out).check()
    if args.resume and args.init_from:
        raise UserError("--init-from starts a new run; it cannot be combined with --resume")
    if args.extend and not args.resume:
        raise UserError("--extend makes a run longer: use it with --resume and a larger --set max_steps")
    args.data = args.data or (toml_data(args.config) if args.config else [])  # --data wins
    if args.resume:
        unrecorded = DEMO_DATA if out == DEMO_RUN else None
        sources = resume_data(out, args.data, new_data=args.new_data, unrecorded=unrecorded)
    else:
        sources = parse_sources(args.data or [DEMO_DATA])
    if sources[0].path == DEMO_DATA and not (DEMO_DATA / MANIFEST).is_file():
        print(f"preparing the built-in corpus into {DEMO_DATA} (tokenizer {DEMO_TOKENIZER})")
        prepare(["builtin"], DEMO_DATA, tokenizer=DEMO_TOKENIZER, val_fraction=0.05)
    config = run_config(args, out)
    init = None
    if args.init_from:
        config, init = init_from(args.init_from, config, sources[0].path, args.overrides)
    env = dist_from_env()
    segment = mixture_segment(out, sources, config, args.resume)
    token_data = open_data(
        config, sources, segment
    )  # read once: preflight counts passes, the run trains on it
    check_run(config, token_data, out, resume=args.resume, extend=args.extend, world=env.world)
    if args.dry_run:  # the same checks as the run's, then what it would do
        print(dry_run_report(config, token_data))
        return 0
    for line in preflight(config, token_data, world=env.world) if env.is_main else []:
        print(line)
    return train(config, token_data, out, args.resume, init, extend=args.extend)


def help_config(preset: str | None) -> str:
    """`--help-config`: every key, its default a preset's value with --preset, else the base value;
    the first line says which, since no run trains on the base values as they are."""
    if preset:
        header = f"defaults below: preset {preset}'s values (the config it starts a run with)"
        return header + "\n" + describe_keys(preset_config(preset))
    header = (
        "defaults below: the base values, before any preset; a run starts from a preset's (--preset, "
        f"one named in --config, else {DEFAULT_PRESET}; the demo {DEMO_PRESET}): "
        "--help-config --preset NAME shows them"
    )
    return header + "\n" + describe_keys()


def run_config(args, out: Path):
    if args.resume:
        return resume_config(load_run_config(out), args.preset, args.config, args.overrides)
    if not args.data and RunDir(out).has_checkpoint() and not args.preset:
        raise UserError(
            f"{out} already holds the demo run; sample it with `baseforge sample {out}`, "
            f"continue it with `baseforge train --resume`, or remove it to start over"
        )
    return resolve_config(
        args.preset or (DEMO_PRESET if not args.data else None), args.config, args.overrides
    )


def train(
    config, data: PreparedData, out: Path, resume: bool, init_weights=None, *, extend: bool = False
) -> int:
    def log(message: str) -> None:
        print(message, flush=True)

    lock = run_lock(out)

    def keep(path: Path) -> bool:  # a fresh run that failed before its first checkpoint leaves no folder
        # ... unless another process holds it: it may have made that folder after we looked
        return lock.refused or RunDir(path).pointer("latest").is_file()

    def run_in(dist) -> RunResult:  # the trainer (and its DDP model) is gone once this returns
        trainer = Trainer(
            config,
            data,
            out,
            resume=resume,
            extend=extend,
            log=log,
            evaluators=evaluators(config.train),
            dist=dist,
            init_weights=init_weights,
        )
        with output_dir(out, keep=keep) if dist.is_main else contextlib.nullcontext():
            with lock if dist.is_main else contextlib.nullcontext():
                return trainer.run()

    try:
        with process_group(config.train.dist_timeout_s, config.train.device) as dist:
            result = run_in(dist)  # returns before the group goes (distributed.process_group)
    except torch.OutOfMemoryError:
        raise UserError(
            f"out of memory at micro_batch {config.train.micro_batch}: lower micro_batch (or use "
            "micro_batch=auto), the context, or the model size; checkpoints so far are kept"
        ) from None
    return 130 if result.stopped else 0


def run_lock(out: Path) -> RunLock:
    return RunLock(out, doing="being trained")
