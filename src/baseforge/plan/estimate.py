"""What fits where, how fast, and at what cost: a training plan for a preset on some GPUs.

Memory per GPU comes from the memory model (plan/memory.py, where its terms are described), modelled
on the code that runs; this module turns it into a verdict, a speed, a time and a cost.

Speed: FLOPs per token from `GPT.flops_per_token` (6N + attention), tokens/s = MFU x peak x GPUs
/ FLOPs per token, with a stated MFU assumption or the median MFU of a run's metrics.jsonl
(plan/from_run.py, which says when that run's device is not the planned GPU: `mfu_note`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from baseforge.errors import UserError
from baseforge.plan.memory import (
    CUDA_CONTEXT,
    GIB,
    Memory,
    Setup,
    Shape,
    largest_micro_batch,
    memory,
    model_shape,
)
from baseforge.presets import preset_config

DEFAULT_MFU = 0.40  # an assumption for GPT-2-class models with flash attention, not a measurement


@dataclass
class Plan:
    preset: str
    gpu: str
    gpus: int
    parallel: str
    precision: str
    activation_checkpointing: str
    params: int
    micro_batch: int  # the one planned (asked for, else the largest that fits)
    max_micro_batch: int  # largest that fits; 0 = not even 1
    memory: Memory
    usable_bytes: int  # GPU memory less the CUDA context
    fits: bool
    flops_per_token: float
    mfu: float
    mfu_source: str
    tokens_per_s: float
    tokens: int
    hours: float
    cost_usd: float | None
    verdict: str = ""
    mfu_note: str = ""  # a measured MFU's caveat: taken on another GPU, or on one the run does not name

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"]["total"] = self.memory.total
        return d


def _gib(n: float, digits: int = 1) -> str:
    return f"{n / GIB:.{digits}f} GiB"


def _fsdp_gpus_needed(s: Shape, setup: Setup, usable: int) -> int | None:
    for n in (2, 4, 8, 16, 32, 64):
        trial = Setup(setup.preset, setup.gpu, n, "fsdp", setup.micro_batch, setup.activation_checkpointing)
        trial.precision = setup.precision
        if largest_micro_batch(s, trial, usable, limit=setup.micro_batch or 1) >= (setup.micro_batch or 1):
            return n
    return None


def _why_not(s: Shape, setup: Setup, plan: Plan) -> str:
    m, usable = plan.memory, plan.usable_bytes
    state = m.weights + m.gradients + m.optimizer
    per_param = state / max(s.params, 1)
    state_alone = plan.max_micro_batch == 0 and state + m.workspace >= usable
    if state_alone:
        why = (
            f"weights + gradients + optimizer state alone need {_gib(state, 2)} "
            f"({per_param:.0f} bytes per parameter), workspace {_gib(m.workspace, 2)}, "
            f"of {_gib(usable, 2)} usable on a {setup.gpu.label}"
        )
    elif plan.max_micro_batch == 0:
        why = f"even micro-batch 1 needs {_gib(m.total)} of {_gib(usable)} usable"
    else:
        why = f"micro-batch {plan.micro_batch} needs {_gib(m.total)}; at most {plan.max_micro_batch} fits"
    hints = []
    if setup.activation_checkpointing == "none" and not state_alone:
        hints.append("--activation-checkpointing blocks")
    need = _fsdp_gpus_needed(s, setup, usable) if setup.parallel == "ddp" or setup.gpus < 64 else None
    if need:
        hints.append(f"--parallel fsdp --gpus {need}")
    return "does not fit: " + why + (f"; try {' or '.join(hints)}" if hints else "")


def _verdict(plan: Plan, s: Shape, setup: Setup) -> str:
    if not plan.fits:
        return _why_not(s, setup, plan)
    cost = f"; ${plan.cost_usd:,.0f}" if plan.cost_usd is not None else ""
    return (
        f"fits with micro-batch {plan.micro_batch} (largest {plan.max_micro_batch}); "
        f"{plan.hours:,.1f} h for {plan.tokens / 1e9:.2f}B tokens{cost}"
    )


def _check_setup(setup: Setup) -> None:
    if setup.gpus < 1:
        raise UserError(f"--gpus must be at least 1, not {setup.gpus}")
    if setup.parallel not in ("ddp", "fsdp"):
        raise UserError(f"--parallel must be ddp or fsdp, not {setup.parallel!r}")
    if setup.activation_checkpointing not in ("none", "blocks"):
        raise UserError("--activation-checkpointing must be none or blocks")
    if setup.micro_batch is not None and setup.micro_batch < 1:
        raise UserError(f"--micro-batch must be at least 1, not {setup.micro_batch}")


def _tokens_per_s(setup: Setup, s: Shape, mfu: float) -> float:
    """MFU x the GPU's dense peak at the setup's precision x GPUs / FLOPs per token."""
    tflops = setup.gpu.peak_tflops(setup.precision)
    if tflops is None:
        raise UserError(
            f"--precision {setup.precision}: the {setup.gpu.label} has no {setup.precision}; use fp16"
        )
    peak = tflops * 1e12
    tokens_per_s = mfu * peak * setup.gpus / s.flops_per_token
    if setup.activation_checkpointing == "blocks":
        tokens_per_s *= 3 / 4  # the forward runs twice: 4 passes' work where 3 are counted
    return tokens_per_s


def make_plan(
    setup: Setup,
    tokens: int | None = None,
    price: float | None = None,
    mfu: float | None = None,
    mfu_source: str = "",
    mfu_note: str = "",
) -> Plan:
    _check_setup(setup)
    setup.precision = setup.precision or ("bf16" if setup.gpu.bf16 else "fp16")
    s = model_shape(setup.preset, setup.vocab)
    usable = int(setup.gpu.memory_gib * GIB) - CUDA_CONTEXT
    largest = largest_micro_batch(s, setup, usable)
    micro = setup.micro_batch or max(largest, 1)
    mem = memory(s, setup, micro)
    train = preset_config(setup.preset).train
    tokens = int(tokens or train.max_tokens or train.tokens_per_param * s.params)
    mfu = mfu if mfu is not None else DEFAULT_MFU
    tokens_per_s = _tokens_per_s(setup, s, mfu)
    hours = tokens / tokens_per_s / 3600
    plan = Plan(
        preset=setup.preset,
        gpu=setup.gpu.key,
        gpus=setup.gpus,
        parallel=setup.parallel,
        precision=setup.precision,
        activation_checkpointing=setup.activation_checkpointing,
        params=s.params,
        micro_batch=micro,
        max_micro_batch=largest,
        memory=mem,
        usable_bytes=usable,
        fits=mem.total <= usable,
        flops_per_token=s.flops_per_token,
        mfu=mfu,
        mfu_source=mfu_source or "an assumption, not measured",
        tokens_per_s=tokens_per_s,
        tokens=tokens,
        hours=hours,
        cost_usd=hours * setup.gpus * price if price is not None else None,
        mfu_note=mfu_note,
    )
    plan.verdict = _verdict(plan, s, setup)
    return plan


def format_plan(plan: Plan) -> str:
    m = plan.memory
    ckpt = "blocks" if plan.activation_checkpointing == "blocks" else "none"
    rows = [
        ("weights (fp32)", m.weights),
        ("gradients (fp32)", m.gradients),
        ("optimizer state", m.optimizer),
        (f"activations (micro-batch {plan.micro_batch}, checkpointing {ckpt})", m.activations),
        ("workspace", m.workspace),
        ("total", m.total),
        (f"usable on {plan.gpu} (less CUDA context)", plan.usable_bytes),
    ]
    lines = [
        f"{plan.preset}: {plan.params / 1e6:,.1f}M parameters on {plan.gpus} x {plan.gpu}, "
        f"{plan.parallel}, {plan.precision}",
        "",
        "memory per GPU, in GiB reserved (a run logs its own as peak_reserved_gib in metrics.jsonl)",
    ]
    lines += [f"  {name:<52}{_gib(value):>12}" for name, value in rows]
    lines += [
        f"  activations without / with block checkpointing: {_gib(m.activations_no_ckpt)} / "
        f"{_gib(m.activations_ckpt)}",
        f"  largest micro-batch that fits: {plan.max_micro_batch}",
        "",
        f"FLOPs per token  {plan.flops_per_token / 1e9:.2f} GFLOP (6N + attention)",
        f"MFU              {100 * plan.mfu:.1f}% ({plan.mfu_source})",
        *([f"                 note: {plan.mfu_note}"] if plan.mfu_note else []),
        f"throughput       {plan.tokens_per_s:,.0f} tokens/s on {plan.gpus} GPU(s)",
        f"budget           {plan.tokens / 1e9:.2f}B tokens: {plan.hours:,.1f} h"
        + (f", ${plan.cost_usd:,.0f}" if plan.cost_usd is not None else ""),
        "",
        plan.verdict,
    ]
    return "\n".join(lines)
