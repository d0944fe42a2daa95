"""Distributed training on PyTorch's own engine: torchrun sets the environment, DDP does the rest.

Outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1) everything here is a no-op, so one code path
serves one process and many. NCCL on CUDA, gloo on CPU; a timeout on every collective so a dead
rank stops the job instead of hanging it.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def dist_from_env() -> DistInfo:
    """Rank and world size as torchrun sets them; reads the environment only."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def backend_for(device: str) -> str:
    """The collective backend for a run on `device` (a config value): NCCL for CUDA runs, else gloo."""
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


@contextlib.contextmanager
def process_group(timeout_s: float, device: str = "auto") -> Iterator[DistInfo]:
    """The process group of a torchrun job for the duration of a command (a no-op outside torchrun).

    The backend follows the run's device, not the host: NCCL for a CUDA run, gloo for a CPU run
    (also on a host that has GPUs).

    Whatever holds a DDP model must be gone before the block ends (keep it in a function called inside
    the block; an exception's frames are cleared here): garbage is collected before the group is
    destroyed, because a DDP model freed after that takes the group down from its Reducer, whose
    binding holds the GIL while the group's destructor joins gloo's worker threads, which may need the
    GIL to free a finished collective's tensors: a hang at exit, seen on a loaded 2-core machine.
    """
    info = dist_from_env()
    if not info.enabled or dist.is_initialized():
        yield info
        return
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield info
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # the failed frames (a Trainer's self) let go of DDP
        raise
    finally:
        gc.collect()  # DDP models (and their Reducers) go while the group is registered
        if dist.is_initialized():
            dist.destroy_process_group()


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


def all_reduce_max(values: list[float], info: DistInfo, device) -> list[float]:
    """Each value's largest over the ranks, in one all-reduce."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def any_rank(flags: list[bool], info: DistInfo, device) -> list[bool]:
    """Each flag true on every rank if it is true on any (stop requests, time-based checkpoints).

    All flags travel in one all-reduce: one collective per step, whatever their number.
    """
    return [bool(v) for v in all_reduce_max([1.0 if f else 0.0 for f in flags], info, device)]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_to_main(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on rank 0, [] elsewhere; [obj] without a process group.

    Objects travel pickled between the ranks of one job (never through a file)."""
    if not info.enabled:
        return [obj]
    out: list | None = [None] * info.world if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out if out is not None else []
