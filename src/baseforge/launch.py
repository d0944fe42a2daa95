"""Starting a pretraining run: what `baseforge train` decides before the loop, as library calls.

The data a resumed run continues on (`resume_data`), the weights and shape of continued pretraining
(`init_from`), the in-training evaluators the config asks for (`evaluators`) and what a dry run
reports (`dry_run_report`). The CLI parses its flags, calls these and prints. This module sits
above `train/` and `eval/` (it builds a HellaSwag evaluator and reads any model `eval.models` reads),
so neither of them imports it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from baseforge.config import MODEL_KEYS, RunConfig, TrainConfig
from baseforge.data.batch_plan import BatchPlan
from baseforge.data.loader import TokenData
from baseforge.data.manifest import read_manifest
from baseforge.data.mixed import MixedData, PreparedData
from baseforge.data.mixture import Segment, Source, parse_sources, resolve, windows_taken, with_names
from baseforge.errors import UserError
from baseforge.eval.hellaswag import evaluate_hellaswag, load_items
from baseforge.eval.loss import check_vocab
from baseforge.eval.models import LoadedModel, load_any
from baseforge.model import GPT
from baseforge.overrides import parse_overrides, parse_value
from baseforge.plan.estimate import DEFAULT_MFU
from baseforge.plan.memory import activation_bytes, shape_of, state_bytes
from baseforge.progress import format_duration, format_ratio
from baseforge.rundir import RunDir
from baseforge.train.build import check_vocab as check_vocab_size
from baseforge.train.build import total_steps
from baseforge.train.checkpoint.checkpointer import Checkpointer
from baseforge.train.checkpoint.data_record import DataUse, data_use, read_data_history
from baseforge.train.checkpoint.format import find_checkpoint, model_tensors, read_checkpoint_meta
from baseforge.train.distributed import DistInfo
from baseforge.train.mfu import device_peak
from baseforge.train.precision import resolve_device, resolve_precision
from baseforge.train.trackers import tracker_names


def resume_data(
    out: Path, data: list | None = None, *, new_data: bool = False, unrecorded=None
) -> list[Source]:
    """The data a resumed run continues on: what it last trained on (RUN/data.json: one data dir or a
    weighted mixture), checked by each manifest's sha256 whether or not `data` (--data values) is given;
    other data (another dir, the same dir prepared again, other weights, an added source) only with
    `new_data`, which continues from the checkpoint's step on the new stream.

    `unrecorded` is the data of a run that does not record it (the CLI's demo run); else that is an error.
    """
    run = RunDir(out)
    if not run.config.is_file():
        raise UserError(f"nothing to resume in {out}: no config.json (start it without --resume)")
    if not run.pointer("latest").is_file():
        raise UserError(
            f"{out} has no checkpoint yet (it stopped before the first); start it again without --resume"
        )
    history = read_data_history(run)
    if history is None:
        if not data and unrecorded is None:
            raise UserError(f"{out} does not record its data (an older run); pass --data with --resume")
        return parse_sources(data or [unrecorded])
    last = history[-1]
    if not data:  # the recorded weights as they are: normalised again, they could differ by a bit
        sources = with_names([Path(p.path) for p in last.parts], [p.weight for p in last.parts])
    else:
        sources = parse_sources(data)
    now = data_use(sources)
    if now.same_data(last) or new_data:
        return sources
    raise UserError(data_change(out, last, now, given_data=bool(data)))


def mixture_segment(out: Path, sources: list[Source], config: RunConfig, resume: bool) -> Segment:
    """Where a resumed mixture's current weights start, and each source's windows read before: from
    RUN/data.json's changes (and this resume's, when --new-data changes the mixture now), counted in
    windows through the run's batch plan. A fresh run, or one that never changed its data: the start."""
    history = read_data_history(RunDir(out)) if resume else None
    if len(sources) < 2 or not history:
        return Segment()
    uses = list(history)
    if not data_use(sources).same_data(uses[-1]):
        _, state = read_checkpoint_meta(find_checkpoint(out))
        uses.append(DataUse(data_use(sources).parts, int(state["step"])))
    if len(uses) == 1:
        return Segment()
    cfg = config.train
    if cfg.micro_batch == "auto" and not cfg.global_batch:
        raise UserError("a mixture that changed its data needs a fixed global_batch to count its windows by")
    plan = BatchPlan.from_config(cfg, config.model.context)
    read: dict[str, int] = {}
    for use, nxt in zip(uses, uses[1:]):
        windows = plan.windows_before(nxt.step) - plan.windows_before(use.step)
        for part, taken in zip(use.parts, windows_taken(windows, [p.weight for p in use.parts])):
            read[part.path] = read.get(part.path, 0) + taken
    offsets = tuple(read.get(str(resolve(s.path)), 0) for s in sources)
    return Segment(plan.windows_before(uses[-1].step), offsets)


def data_change(out: Path, last: DataUse, now: DataUse, *, given_data: bool) -> str:
    """The one line refusing a resume on data other than the run's: what differs, and the two ways on."""
    was, what = last.short(), now.short()
    if len(last.parts) == len(now.parts) == 1:
        if now.parts[0].manifest_sha256 is None:
            return (
                f"{out} was trained on {was}, and {now.parts[0].path} holds no prepared data now: "
                "restore it, or pass other data with --data and --new-data"
            )
        if now.parts[0].path == last.parts[0].path:
            return (
                f"{out} was trained on {was}, but that folder now holds other data ({what}: prepared again); "
                "restore it, or add --new-data to continue on what it holds now"
            )
    elif [p.path for p in now.parts] == [p.path for p in last.parts] and all(
        a.manifest_sha256 == b.manifest_sha256 for a, b in zip(now.parts, last.parts)
    ):
        weights = ", ".join(f"{b.weight:.3g}" for b in now.parts)
        return (
            f"{out} was trained on {was}; --data gives other weights ({weights}): add --new-data to "
            "continue from the checkpoint's step with the new mixture (e.g. to anneal on one source)"
        )
    hint = "resume without --data, or" if given_data else "restore it, or"
    return (
        f"{out} was trained on {was}, not {what}; {hint} add --new-data to continue on other data "
        "prepared with the same tokenizer"
    )


def init_from(spec: str, config: RunConfig, data: Path, overrides) -> tuple[RunConfig, dict]:
    """(config with the source model's shape, its weights) for continued pretraining from `spec`.

    The run keeps its own dropout; a `--set` of any other model key that differs from the source is refused.
    The config records the source (`init_from`): its preset gave only the training settings.
    """
    loaded = load_any(spec)
    source = loaded.model.config
    changed = [
        key
        for key, raw in parse_overrides(overrides).items()
        if key in MODEL_KEYS
        and key != "dropout"
        and parse_value(key, raw, getattr(source, key)) != getattr(source, key)
    ]
    if changed:
        raise UserError(f"--init-from takes the model's shape from {spec}; drop --set {', '.join(changed)}")
    # By content: a baseforge tokenizer by its hash, a transformers folder's own tokenizer token by token.
    check_vocab(spec, loaded.model, loaded.tokenizer, data, read_manifest(data))
    config.update({**asdict(source), "dropout": config.model.dropout})
    config.init_from = describe_source(loaded)
    return config, model_tensors(loaded.model)


def describe_source(loaded: LoadedModel) -> str:
    """An --init-from source as the run records it: as given, with the checkpoint's step and what made
    its model (a baseforge source; a transformers folder or Hub name says nothing more)."""
    config = loaded.info.get("config")
    if loaded.source != "baseforge" or not isinstance(config, RunConfig):
        return loaded.name
    made = config.origin() if config.init_from else f"preset {config.preset}"
    return f"{loaded.name} (checkpoint at step {loaded.step}, {made})"


def evaluators(cfg: TrainConfig) -> dict:
    """In-training evaluations the config asks for, {name: fn(model, tokenizer) -> dict}; the loop runs
    every one of them each `evaluators_every` steps (today: HellaSwag). Each figure comes with its
    standard error (KEY_stderr) and the item count, as `baseforge eval` reports them: a figure of
    hellaswag_limit items is only as exact as that many items make it."""
    if not cfg.evaluators_every:
        return {}
    path = Path(cfg.hellaswag_data) if cfg.hellaswag_data else None
    load_items(path, 1)  # a missing file or an offline download fails now, not mid-run

    def hellaswag(model, tokenizer):  # model: the plain model, whole (ModelViews.whole_on_main)
        result = evaluate_hellaswag(
            model, tokenizer, path, cfg.hellaswag_limit, next(model.parameters()).device
        )
        metrics = ("acc", "acc_norm", "acc_norm_tok")
        stderr = {f"{key}_stderr": result["stderr"][key] for key in metrics}
        return {**{key: result[key] for key in metrics}, **stderr, "items": result["items"]}

    return {"hellaswag": hellaswag}


def open_data(config: RunConfig, sources: list[Source], segment: Segment = Segment()) -> PreparedData:
    """The data as the run will read it (its packing, its windows): what preflight counts passes over;
    several sources are a mixture (data/mixture.py), from `segment` on (mixture_segment)."""
    c = config.train
    if len(sources) == 1:
        return TokenData(sources[0].path, config.model.context, c.seed, c.packing)
    return MixedData(sources, config.model.context, c.seed, c.packing, segment)


def check_run(
    config: RunConfig, data: PreparedData, out: Path, *, resume: bool, extend: bool, world: int
) -> None:
    """Every check `train` makes before its first step that allocates no model, so that `--dry-run`
    refuses what `train` would: the trackers, the device and precision, the vocabulary, the batch layout
    at this world size, the run dir (a fresh run into a run, a resume's tokenizer and schedule), the
    in-training evaluators' files. The data's own checks (a split shorter than one window, best-fit's
    documents) ran when it was opened (`open_data`)."""
    cfg = config.train
    tracker_names(cfg.trackers)
    resolve_precision(cfg.precision, resolve_device(cfg.device))
    check_vocab_size(config.with_vocab(data.vocab_size, data.tokenizer.eot_id), data.tokenizer)
    if cfg.micro_batch != "auto" or cfg.global_batch:  # else the search decides it, on the model
        BatchPlan.from_config(cfg, config.model.context, world=world)
    Checkpointer(RunDir(out), DistInfo()).resume_point(resume, data, config, extend)
    evaluators(cfg)


def dry_run_report(config: RunConfig, data: PreparedData) -> str:
    """What `train` would do, without training: the resolved config, model size, steps and tokens, the
    same warnings `train` prints (`preflight`) and an estimate of the time it takes (`time_estimate`)."""
    path = data.source
    config = config.with_vocab(data.vocab_size, data.tokenizer.eot_id)
    n_params = GPT.count_params(config.model)
    cfg = config.train
    lines = [json.dumps(config.to_dict(), indent=2), f"parameters: {n_params:,}"]
    if cfg.micro_batch == "auto" and not cfg.global_batch:
        lines.append("tokens per step: decided by the micro-batch search (micro_batch=auto, no global_batch)")
        return "\n".join(lines + preflight(config, data) + ["time: unknown until the micro-batch search"])
    plan = BatchPlan.from_config(cfg, config.model.context)
    sequences, per_step = plan.layout.global_batch, plan.tokens_of(plan.layout.from_step)
    steps = total_steps(cfg, n_params, plan)
    tokens = plan.tokens_before(steps)
    lines += [
        f"tokens per step: {per_step:,} ({sequences} sequences x {config.model.context}; one process)",
        *filter(None, [plan.describe()]),
        f"steps: {steps:,}; tokens: {tokens:,} ({format_ratio(tokens / n_params)} per parameter)",
        f"data: {path} (tokenizer {data.tokenizer.name})",
    ]
    return "\n".join(
        lines + preflight(config, data) + [time_estimate(config).describe(per_step, steps, tokens)]
    )


PASSES_WARN = 4  # more passes than this over the training split: the model will largely memorise it
STEP_SECONDS_WARN = 30.0  # a CPU step longer than this: a GPU-sized run
CPU_MFU = 0.75  # the share of the measured matmul peak a CPU training step reaches (75-80%, bench_train.py)


@dataclass(frozen=True)
class TimeEstimate:
    """Seconds a token of training takes on the run's device, and how that was estimated."""

    per_token: float
    basis: str

    def describe(self, per_step: int, steps: int, tokens: int) -> str:
        """The dry run's line: a step of the run's own `per_step` tokens, and the whole run's `steps`,
        timed by their `tokens` (a batch schedule's early steps are smaller)."""
        return (
            f"time: about {format_duration(self.per_token * per_step)} a step of {per_step:,} tokens, "
            f"{format_duration(self.per_token * tokens)} for {steps:,} steps ({self.basis}; "
            "evaluation and checkpoints not counted)"
        )


def time_estimate(config: RunConfig, world: int = 1) -> TimeEstimate:
    """A training token's time from the device's peak: a CPU's (or MPS's) measured by a matmul, at
    CPU_MFU of it (what a CPU step reaches); a GPU's from the table in hardware.py (measured when the
    GPU is not in it), at plan.estimate's DEFAULT_MFU, an assumption rather than a measurement."""
    device = resolve_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    peak, source = device_peak(device, precision)
    mfu = CPU_MFU if device.type == "cpu" else DEFAULT_MFU
    what = "this CPU's measured matmul peak" if device.type == "cpu" else f"the peak ({source})"
    if device.type == "cuda":
        what += f" x {world} processes"
    flops = shape_of(config).flops_per_token
    return TimeEstimate(flops / (mfu * peak * world), f"at an assumed {mfu:.0%} of {what}")


def preflight(config: RunConfig, data: PreparedData, world: int = 1) -> list[str]:
    """Warnings about what a user would regret, estimated before anything is allocated: many passes
    over the data, a model whose training state will not fit this machine's memory, a GPU-sized run
    on a CPU (with the estimated time per step). `train` and `--dry-run` print the same lines."""
    config = config.with_vocab(data.vocab_size, data.tokenizer.eot_id)
    cfg, shape = config.train, shape_of(config)
    device = resolve_device(cfg.device)
    warnings: list[str] = []
    if cfg.micro_batch == "auto" and not cfg.global_batch:
        return warnings
    plan = BatchPlan.from_config(cfg, config.model.context, world=world)
    layout, steps = plan.layout, total_steps(cfg, shape.params, plan)
    per_step, tokens = layout.global_batch * config.model.context, plan.tokens_before(steps)
    if isinstance(data, MixedData):
        warnings += mixture_lines(data, tokens // config.model.context)
    epoch = data.train_tokens  # what one pass yields as the run reads it (best-fit: its windows)
    if not isinstance(data, MixedData) and tokens / epoch > PASSES_WARN:
        warnings.append(
            f"warning: the run trains on {tokens:,} tokens, {tokens / epoch:.0f} passes over the "
            f"{epoch:,} tokens one epoch of the train split gives (packing {cfg.packing}): it will "
            "largely memorise it; use more data or fewer steps"
        )
    precision = resolve_precision(cfg.precision, device)
    need = sum(state_bytes(shape)) + activation_bytes(
        shape, layout.micro_batch, precision, device.type, checkpoint=cfg.activation_checkpointing != "none"
    )
    have = device_memory(device)
    if have and need > have:
        warnings.append(
            f"warning: training needs about {need / 2**30:.1f} GiB (weights, gradients, optimizer, one "
            f"micro-batch of {layout.micro_batch}) but {device} has {have / 2**30:.1f} GiB: lower "
            "micro_batch, use activation_checkpointing, or a larger machine (`baseforge plan`)"
        )
    if device.type == "cpu":
        per_token = time_estimate(config).per_token
        if per_token * per_step > STEP_SECONDS_WARN:
            warnings.append(
                f"warning: on this CPU one step takes about {format_duration(per_token * per_step)} "
                f"({format_duration(per_token * tokens)} for {steps:,} steps, at {CPU_MFU:.0%} of its "
                "measured matmul peak): a model this size wants a GPU"
            )
    return warnings


def mixture_lines(data: MixedData, windows: int) -> list[str]:
    """Each source of a mixture: its weight, and the passes over its train split the run's `windows`
    make; a warning for a source read more than PASSES_WARN times."""
    lines = [f"data: a mixture of {len(data.sources)} sources, weights as shares of the training tokens"]
    for (source, passes), part in zip(data.passes(windows), data.parts):
        lines.append(f"  {source.name}: weight {source.weight:.3f}, {passes:.2f} passes over {source.path}")
        if part.val is None:
            lines.append(
                f"warning: {source.name} has no validation split: val_loss is the mean over the other "
                "sources only (prepare it with --val-fraction above 0 to score it)"
            )
        if passes > PASSES_WARN:
            lines.append(
                f"warning: the run reads {source.name} {passes:.0f} times: past ~{PASSES_WARN} passes "
                "repeated data stops paying (Muennighoff et al., 2023); lower its weight or add data"
            )
    return lines


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory training on `device` can use: the GPU's, or this machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
