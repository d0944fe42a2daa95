"""How the model runs forward in training: one process, DDP, or FSDP2; activation checkpointing for all.

`wrap_model` is the one place that decides, and returns the `ModelViews` every user of the model
takes its view from (nobody unwraps a wrapper to guess what is inside). Its order matters:

1. Activation recomputation first, on the plain blocks (`recompute_blocks`; the config key is
   `activation_checkpointing`), so the wrappers see blocks whose forward recomputes in backward.
2. One process: the model itself (compiled if asked).
3. DDP (`parallel=ddp`, several processes): `DistributedDataParallel(gradient_as_bucket_view=True)`,
   so gradients live in the all-reduce buckets (no copy in, no second gradient-sized buffer), then
   `torch.compile` of the DDP module. That is PyTorch's documented order for DDP + compile
   (torch.compiler FAQ, "Do you support distributed code?"): Dynamo sees the active DDP module and its
   DDPOptimizer splits the compiled graph at bucket boundaries, so each bucket's all-reduce is issued
   while backward of the earlier layers still runs. Compiling inside DDP instead gives one opaque
   backward whose gradients are all ready only at its end: all-reduce cannot overlap it.
4. FSDP2 (`parallel=fsdp`): `fully_shard` on each transformer block, then on the root (embeddings,
   final norm, head), over a 1-D device mesh of all processes; parameters, gradients and optimizer
   state are sharded by rows (Shard(0)), and each block's weights are all-gathered just in time for
   its forward and backward. Mixed precision is autocast's, as under DDP: FSDP gathers the fp32
   parameters and reduce-scatters fp32 gradients (no MixedPrecisionPolicy), so the residual stream,
   norms, rotary tables and value embeddings stay fp32 and FSDP computes what DDP computes (tested in
   bf16, step by step). FSDP2's bf16 policy would halve the all-gather's bytes but cast every block's
   inputs and norm weights to bf16 (and LayerNorm's fp32-input, bf16-weight mix fails on the CPU).
   `fsdp_offload=true` keeps the sharded parameters, gradients and optimizer state in CPU memory
   (CPUOffloadPolicy): slower, for models whose optimizer state does not fit. Compile, if asked,
   applies to the sharded root.

With one process `parallel=fsdp` trains the plain model (sharding over one process saves nothing);
its checkpoints are ordinary ones.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Literal, cast

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint

from baseforge.config import TrainConfig
from baseforge.errors import UserError
from baseforge.model import GPT
from baseforge.train.checkpoint.sharded import gathered_model
from baseforge.train.device import Runtime


def recompute_blocks(model: GPT, mode: str) -> int:
    """Recompute transformer blocks' activations in backward instead of storing them; returns how many.

    "blocks": every block keeps only its input; backward reruns its forward (about one extra forward
    pass, ~33% more compute; activation memory falls from all of every block to one block's at a time).
    "selective": every other block (0, 2, 4, ...): about half the activation memory saved for half the
    recomputation, for a model that almost fits. Non-reentrant checkpointing (the recommended kind: works
    with FSDP's hooks and torch.compile, and with inputs that need no grad); the RNG state is replayed,
    so dropout draws the same masks in the recomputation and the gradients are those without it.
    """
    if mode == "none":
        return 0
    blocks = list(model.transformer.h)
    chosen = blocks if mode == "blocks" else blocks[::2]
    for block in chosen:
        # An instance attribute: nn.Module.__call__ (and FSDP's hooks around it) run this instead of
        # the class's forward, while parameter names, and so checkpoints, stay as they are.
        block.forward = functools.partial(_checkpointed, type(block).forward.__get__(block))
    return len(chosen)


def _checkpointed(forward: Callable, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


@dataclass(frozen=True)
class ModelViews:
    """The model as each of its users needs it; `wrap_model` builds them.

    `plain` holds the parameters: the optimizers step them, clipping reads their gradients, a checkpoint
    saves them (under FSDP it is the sharded module itself). `train` runs forward in training (compiled
    and/or wrapped by DDP). `eval` runs the held-out loss on every rank without DDP's gradient sync: one
    process evaluates on the compiled model (its evaluation shapes were warmed up), DDP and FSDP on
    `plain`. Work that rank 0 does alone (sampling, HellaSwag) takes `whole_on_main()`.
    """

    plain: GPT
    train: torch.nn.Module
    eval: torch.nn.Module
    kind: Literal["single", "ddp", "fsdp"]
    runtime: Runtime
    ddp: DDP | None = None  # the DDP module, whose no_sync the micro-steps use

    def gradient_sync(self, sync: bool):
        """A context for one micro-step's backward: gradients are reduced only when `sync` (the last one).

        DDP: `no_sync()` on the others. FSDP2: `set_requires_gradient_sync(False)` keeps the unsharded
        gradients and accumulates into them locally, then one reduce-scatter on the last micro-step;
        `set_reshard_after_backward(False)` keeps the parameters gathered between those micro-steps
        (one all-gather per step, not per micro-step) at the price of holding them for the step.
        """
        if self.kind == "fsdp":
            sharded = cast(FSDPModule, self.plain)  # fully_shard made the model's class a subclass of both
            sharded.set_requires_gradient_sync(sync)
            sharded.set_reshard_after_backward(sync)
        if sync or self.ddp is None:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def whole_on_main(self) -> GPT | None:
        """The whole model, uncompiled, on rank 0; None on the others. A collective: every rank calls it
        (under FSDP rank 0 gets a gathered copy, since the sharded model's collectives cannot run alone)."""
        if self.kind == "fsdp":
            return gathered_model(self.plain, self.runtime.device)
        return self.plain if self.runtime.is_main else None


def wrap_model(
    model: GPT,
    cfg: TrainConfig,
    runtime: Runtime,
    compile_fn: Callable[[torch.nn.Module], torch.nn.Module],
    whole: dict | None = None,
) -> ModelViews:
    """The views of `model` for this run (see the module docstring). `compile_fn(module)` compiles (and
    warms up) a module, falling back to it where compiling fails; it is called only when `runtime.compile`
    (the config's `compile`, resolved for the device).

    FSDP shards `model` in place: its parameters become DTensors, so build optimizers after this.
    `whole`: under FSDP, rank 0's full state dict (others pass {} and a model on the meta device);
    each rank's shards are then filled from it (`from_rank0`), so no other rank holds the whole model.
    """
    recompute_blocks(model, cfg.activation_checkpointing)
    maybe_compile = compile_fn if runtime.compile else (lambda m: m)
    if not runtime.dist.enabled:
        compiled = maybe_compile(model)
        return ModelViews(model, compiled, compiled, "single", runtime)
    if cfg.parallel == "fsdp":
        shard_model(model, cfg, runtime)
        if whole is not None:
            from_rank0(model, whole, runtime)
        return ModelViews(model, maybe_compile(model), model, "fsdp", runtime)
    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    ddp = DDP(model, device_ids=ids, gradient_as_bucket_view=True)
    return ModelViews(model, maybe_compile(ddp), model, "ddp", runtime, ddp=ddp)


def from_rank0(model: GPT, whole: dict, runtime: Runtime) -> None:
    """Fill a sharded model's shards from rank 0's full state dict (a broadcast: every rank calls it).
    Ranks built on the meta device first get real, empty storage and their RoPE tables."""
    if next(model.parameters()).device.type == "meta":
        model.to_empty(device=runtime.device)
        model.reset_buffers(runtime.device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, whole if runtime.dist.is_main else {}, options=options)


def shard_model(model: GPT, cfg: TrainConfig, runtime: Runtime) -> None:
    """FSDP2 over all processes: each transformer block is one unit (all-gathered for its forward and
    backward, freed after), the root holds the rest. The root is not resharded after forward: backward
    starts with it at once (the usual FSDP2 choice for the last unit to run)."""
    name = runtime.precision.name
    if name == "fp16":
        # torch.amp.GradScaler checks only this rank's gradient shard for inf: ranks would disagree on
        # the scale and reduce-scatter mixed scales. ShardedGradScaler is needed first.
        raise UserError("config: parallel = fsdp does not support precision = fp16 yet; use bf16 or fp32")
    mesh = init_device_mesh(runtime.device.type, (runtime.dist.world,))
    options: dict[str, Any] = {"mesh": mesh}  # no mp_policy: autocast casts, as under DDP (docstring)
    if cfg.fsdp_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for block in model.transformer.h:
        fully_shard(block, **options)
    fully_shard(model, reshard_after_forward=False, **options)
