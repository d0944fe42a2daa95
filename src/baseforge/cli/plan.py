"""`baseforge plan`: memory per GPU, the largest micro-batch, speed, time and cost for a preset."""

from __future__ import annotations

import argparse
import json

from baseforge.cli import VERBS
from baseforge.cli.options import add_json, fraction, non_negative_float, positive_count, positive_int
from baseforge.errors import UserError
from baseforge.hardware import GPUS, find_gpu
from baseforge.plan.estimate import format_plan, make_plan
from baseforge.plan.from_run import measured_mfu
from baseforge.plan.memory import Setup

EPILOG = """\
examples:
  baseforge plan --preset gpt2-xl --gpu rtx-3090
  baseforge plan --preset gpt2-xl --gpu rtx-3090 --parallel fsdp --gpus 8 --price 0.3
  baseforge plan --preset gpt2-medium --gpu h100-sxm --from-run runs/medium --json
GPUs: see `baseforge plan --list-gpus`. Memory is modelled on the trainer's code
(src/baseforge/plan/memory.py); speed is the GPU's dense peak times an MFU: assumed (40%) unless --mfu
or --from-run says otherwise.
--from-run RUN takes RUN's measured MFU as it is: when RUN ran on another GPU than --gpu, or does not
record which (summary.json names it once a run finishes), the plan says so (a note; `mfu_note` in
--json). A run that trained on the CPU is refused: its MFU is of a matmul timed on that CPU and says
nothing of a GPU (drop --from-run, or give --mfu).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help=VERBS["plan"],
        description="Memory per GPU, the largest micro-batch that fits, tokens/s, time and cost.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", help="model and recipe, e.g. gpt2-124m")
    p.add_argument("--gpu", default="h100-sxm", help="GPU short name or device name (default h100-sxm)")
    p.add_argument("--gpus", type=positive_int, default=1, help="number of GPUs (default 1)")
    p.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp")
    p.add_argument(
        "--micro-batch", type=positive_int, help="sequences per GPU per micro-step (default: largest)"
    )
    p.add_argument(
        "--tokens", type=positive_count, help="token budget (default: the preset's tokens per parameter)"
    )
    p.add_argument("--price", type=non_negative_float, help="USD per GPU-hour, for the cost")
    p.add_argument("--activation-checkpointing", choices=("none", "blocks"), default="none")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), help="default: bf16 where the GPU has it")
    p.add_argument("--mfu", type=fraction, help="MFU to assume, as a fraction (default 0.40)")
    p.add_argument(
        "--from-run",
        metavar="RUN",
        help="take the MFU measured in RUN/metrics.jsonl (a GPU run's; see below)",
    )
    add_json(p, "the plan as JSON")
    p.add_argument("--list-gpus", action="store_true", help="list the GPUs the planner knows")
    p.set_defaults(run=run)


def _list_gpus() -> None:
    print(f"{'name':<16}{'GPU':<16}{'bf16':>8}{'fp16':>8}{'tf32/fp32':>11}{'memory':>9}")
    for g in GPUS:
        bf16 = f"{g.bf16:g}" if g.bf16 else "-"
        print(f"{g.key:<16}{g.label:<16}{bf16:>8}{g.fp16:>8g}{g.fp32:>11g}{g.memory_gib:>6g} GiB")
    print("dense TFLOP/s with FP32 accumulate; see src/baseforge/hardware.py for sources")


def run(args) -> int:
    if args.list_gpus:
        _list_gpus()
        return 0
    if not args.preset:
        raise UserError("--preset is required (e.g. --preset gpt2-124m)")
    if args.mfu is not None and args.from_run:
        raise UserError(
            "--mfu and --from-run both give the MFU: keep one (--from-run measures it from a run)"
        )
    gpu = find_gpu(args.gpu)
    mfu, source, note = args.mfu, "given with --mfu" if args.mfu is not None else "", ""
    if args.from_run:
        measured = measured_mfu(args.from_run)
        mfu, source, note = measured.mfu, measured.source, measured.note_for(gpu)
        if mfu > 1:
            raise UserError(
                f"{args.from_run}: its MFU ({mfu:.2f}) is above 100%: its peak was under-measured"
            )
    setup = Setup(
        args.preset,
        gpu,
        args.gpus,
        args.parallel,
        args.micro_batch,
        args.activation_checkpointing,
        args.precision or "",
    )
    plan = make_plan(setup, args.tokens, args.price, mfu, source, note)
    if plan.fits:
        print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
        return 0
    # Does not fit: the memory that rules it out, no time or cost for a run that cannot start, and
    # the verdict as the error (exit 1).
    if args.json:
        print(json.dumps({**plan.to_dict(), "hours": None, "cost_usd": None}, indent=2))
    else:
        lines = format_plan(plan).splitlines()[:-1]  # the verdict goes to stderr
        print("\n".join(line for line in lines if not line.startswith("budget")).rstrip())
    raise UserError(plan.verdict)
