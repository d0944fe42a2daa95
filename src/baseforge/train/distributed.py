"""Distributed training on PyTorch's own engine: torchrun sets the environment, DDP does the rest.

Outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1) everything here is a no-op, so one code path
serves one process and many. NCCL on CUDA, gloo on CPU; a timeout on every collective so a dead
rank stops the job instead of hanging it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from baseforge.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
        )
    return DistInfo(rank, world, local_rank)


def device_for(info: DistInfo, requested: torch.device) -> torch.device:
    if info.enabled and requested.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return requested


def all_reduce_mean(value: float, info: DistInfo, device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / info.world


def all_reduce_sum(values: list[float], info: DistInfo, device) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, info: DistInfo, device) -> bool:
    """True on every rank if it is true on any (stop requests, time-based checkpoints)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def batch_geometry(global_batch: int, micro_batch: int, grad_accum: int, world: int) -> tuple[int, int, int]:
    """(global_batch, micro_batch, grad_accum) for this world size.

    With global_batch set, it belongs to the run: accumulation follows from it, so a run can move
    between numbers of processes and keep its optimisation. Otherwise it is micro x accum x world.
    """
    if not global_batch:
        return micro_batch * grad_accum * world, micro_batch, grad_accum
    if global_batch % world:
        raise UserError(f"global_batch {global_batch} is not divisible by {world} processes")
    per_rank = global_batch // world
    if per_rank % micro_batch:
        raise UserError(
            f"global_batch {global_batch} over {world} processes is {per_rank} sequences each, "
            f"not divisible by micro_batch {micro_batch}; pick a micro_batch that divides it"
        )
    return global_batch, micro_batch, per_rank // micro_batch
