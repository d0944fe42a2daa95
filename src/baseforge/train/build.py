"""Building a run: from a config, its data and a runtime to the frozen record of what the run is.

`build_run` is the one place that makes the model, checks it against the data's vocabulary, picks the
micro-batch (`micro_batch=auto` searches), wraps and compiles it (`parallel.wrap_model`) and builds the
optimizers and the schedule. Everything it returns stays the same for the run's life; what changes
(the step, the losses) is the `RunState`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from baseforge.config import RunConfig, TrainConfig
from baseforge.data.batch_plan import BatchLayout, BatchPlan, parse_batch_schedule
from baseforge.errors import UserError
from baseforge.model import GPT
from baseforge.tokenizer import Tokenizer
from baseforge.train.autobatch import search_micro_batch
from baseforge.train.average import WeightAverage
from baseforge.train.checkpoint.format import load_model_tensors
from baseforge.train.device import Runtime, compile_for_training, warm_up_shapes
from baseforge.train.optim import Optimizers, build_optimizers
from baseforge.train.parallel import ModelViews, wrap_model
from baseforge.train.rng import start_rank_stream
from baseforge.train.schedule import Schedule, Tail, attention_window
from baseforge.train.step import TrainStep


class TrainData(Protocol):
    """What the trainer needs of its data: data.loader.TokenData (pretraining), data.mixed.MixedData (a
    mixture of data dirs) and data.instructions.InstructionData (fine-tuning) all have it."""

    tokenizer: Tokenizer
    train_tokens: int  # the train split's size, for the run's announcement

    @property
    def source(self) -> Path | str:
        """Where the data is, for the records (a mixture: its sources, in words)."""
        ...

    def micro_batch(
        self, step: int, micro_step: int, layout: BatchLayout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (inputs, targets) of optimizer step `step`'s micro-step `micro_step` on this rank."""
        ...

    def val_batches(
        self, max_tokens: int, batch_size: int, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation batches of this rank, up to `max_tokens` in all."""
        ...


@dataclass(frozen=True)
class Run:
    """What a run is once built: its config (with the data's vocabulary), where it computes, the model's
    views, optimizers, batch layout, schedule, planned steps, and the one optimizer step it repeats."""

    config: RunConfig
    data: TrainData
    runtime: Runtime
    views: ModelViews
    optimizers: Optimizers
    batches: BatchPlan  # each step's batch layout (a batch schedule's stages, then the run's own)
    schedule: Schedule
    total: int  # planned optimizer steps (early stopping may end the run before)
    train_step: TrainStep

    @property
    def layout(self) -> BatchLayout:
        """The run's own batch layout (after a batch schedule's smaller batches, if it has one)."""
        return self.batches.layout

    @property
    def tokens_per_step(self) -> int:
        """Tokens of a step of the run's own layout (a batch schedule's early steps have fewer)."""
        return self.layout.global_batch * self.config.model.context

    @property
    def average(self) -> WeightAverage | None:
        """ema_decay's averaged weights (train/average.py), which the train step moves; None without."""
        return self.train_step.average

    @property
    def n_params(self) -> int:
        return self.views.plain.num_params()


def total_steps(cfg: TrainConfig, n_params: int, batches: BatchPlan) -> int:
    """max_steps, else the steps that train on max_tokens, else on tokens_per_param x parameters."""
    if cfg.max_steps:
        return cfg.max_steps
    return batches.steps_for(math.ceil(cfg.max_tokens or cfg.tokens_per_param * n_params))


def build_run(
    config: RunConfig, data: TrainData, runtime: Runtime, *, init_weights=None, tail=Tail(), say=print
) -> Run:
    """The run of `config` on `data` (see the module docstring); `init_weights` start it from given
    tensors instead of a random initialisation; `tail` is an extended run's schedule tail (schedule.Tail);
    `say` logs on the main process."""
    config = config.with_vocab(data.tokenizer.vocab_size, data.tokenizer.eot_id)
    check_vocab(config, data.tokenizer)
    cfg, dist = config.train, runtime.dist
    # FSDP: only rank 0 builds the whole model; the others build it on the meta device (no memory) and
    # receive their shards from rank 0 once sharded (the micro-batch search needs a real model each).
    from_rank0 = dist.enabled and cfg.parallel == "fsdp" and cfg.micro_batch != "auto"
    meta = from_rank0 and dist.rank > 0
    torch.manual_seed(cfg.seed)  # before the model: rank 0 (or every rank) builds the same weights
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = GPT(config.model)
    if init_weights is not None and not meta:
        load_model_tensors(model, init_weights)
    if not meta:
        model.to(runtime.device)
    whole = model.state_dict() if from_rank0 and not meta else {}
    layout = batch_layout(model, data, cfg, runtime, say)
    batches = BatchPlan.build(layout, parse_batch_schedule(cfg.batch_schedule), config.model.context)
    total = total_steps(cfg, model.num_params(), batches)
    start_rank_stream(cfg.seed, dist)  # each rank its own dropout stream from here
    full = config.model.attn_window or config.model.context
    window = functools.partial(attention_window, total_steps=total, full=full, warmup=cfg.attn_window_warmup)
    # Compile the graphs the run will use (its micro-batches, a window warmup's, evaluation's) while
    # eager is a fallback.
    warm_up = functools.partial(
        warm_up_shapes,
        data=data,
        batches=batches,
        runtime=runtime,
        eval_tokens=cfg.eval_tokens,
        window=window(0),
    )
    views = wrap_model(
        model,
        cfg,
        runtime,
        lambda m: compile_for_training(m, warm_up, say),
        whole=whole if from_rank0 else None,
    )
    # After wrapping: FSDP replaces the parameters with sharded ones, which the optimizers must hold.
    optimizers = build_optimizers(model, cfg, runtime.device)
    schedule = Schedule.from_config(cfg, total, tail)
    average = WeightAverage.from_config(cfg, total)
    train_step = TrainStep(views, optimizers, runtime, batches, schedule, cfg.grad_clip, window, average)
    return Run(config, data, runtime, views, optimizers, batches, schedule, total, train_step)


def check_vocab(config: RunConfig, tok) -> None:
    if config.model.vocab_size < tok.vocab_size:
        raise UserError(
            f"model vocab_size {config.model.vocab_size} is smaller than the data's tokenizer "
            f"({tok.name}, {tok.vocab_size} tokens); set vocab_size={tok.vocab_size} or prepare the data "
            "with another tokenizer"
        )


def batch_layout(model: GPT, data: TrainData, cfg: TrainConfig, runtime: Runtime, say) -> BatchLayout:
    """The run's batch layout; `micro_batch=auto` first searches the largest micro-batch that fits."""
    world, micro = runtime.dist.world, cfg.micro_batch
    if micro == "auto":
        # Search up to the whole per-process batch (no accumulation), or 64 without a global batch.
        per_rank = cfg.global_batch // world if cfg.global_batch else 64
        full = model.config.attn_window or model.config.context
        first = attention_window(0, 1, full, cfg.attn_window_warmup)  # step 0's: the same at any length
        micro = search_micro_batch(model, data, cfg, runtime, per_rank, window=first)
    layout = BatchLayout.from_config(cfg, world=world, rank=runtime.dist.rank, micro_batch=micro)
    if cfg.micro_batch == "auto":
        say(f"micro_batch auto: {micro} fits; gradient accumulation {layout.grad_accum}")
    return layout
