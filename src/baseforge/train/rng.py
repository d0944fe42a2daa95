"""Random streams of a run: each rank's own dropout seed, and the RNG states a checkpoint keeps.

Every rank seeds `seed` before building the model, so the initial weights agree everywhere; only then
do ranks >= 1 switch to their own stream (`rank_seed`), and rank 0's is left as it was, so one process
trains as it always did.

A checkpoint holds every rank's RNG state (a list, rank 0 first). On
resume each rank restores its own; where the world size changed, a rank without a saved state is seeded
deterministically from (seed, rank, step) (`restore_rng`). CUDA states are per device: a process saves
and restores the generator of its own device only, so any GPU count resumes.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from baseforge.errors import UserError
from baseforge.train.distributed import DistInfo, gather_to_main


def rank_seed(seed: int, rank: int) -> int:
    """The seed of `rank`'s own stream: `seed` itself on rank 0, and a well-mixed, deterministic function
    of (seed, rank) on the others, so no two ranks draw the same dropout masks."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def start_rank_stream(seed: int, dist: DistInfo) -> None:
    """Once the model is built: ranks >= 1 switch to their own stream; rank 0 keeps the one it has."""
    if dist.rank > 0:
        torch.manual_seed(rank_seed(seed, dist.rank))


def rng_state(device: torch.device | str = "cpu") -> dict:
    """This process's RNG states; with a CUDA device, that device's generator only."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    device = torch.device(device)
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | str = "cpu") -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    device = torch.device(device)
    cuda = state.get("cuda")
    if cuda is None or device.type != "cuda":
        return
    if isinstance(cuda, list):  # an older checkpoint: every device of the saving host; take ours if there
        index = device.index or 0
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def gather_rng_states(dist: DistInfo, device: torch.device | str = "cpu") -> list[dict]:
    """Every rank's RNG state on rank 0 (rank order), [] on the others: a collective, all ranks call it."""
    return gather_to_main(rng_state(device), dist)


def restore_rng(saved, dist: DistInfo, device, seed: int, step: int) -> bool:
    """Restore this rank's own RNG state; False when the checkpoint has none for this rank.

    `saved` is the trainer state's "rng": a list by rank.
    Same world size: every rank continues its stream exactly. Otherwise ranks below the saved world size
    still take their own saved state, and the others are seeded from (seed, rank, step): deterministic,
    though no longer the stream an unchanged world size would have drawn.
    """
    if not isinstance(saved, list):
        raise UserError("the checkpoint's RNG states are not a list by rank; resume from another checkpoint")
    states = saved
    if dist.rank < len(states):
        try:
            set_rng_state(states[dist.rank], device)
        except (TypeError, KeyError, ValueError, RuntimeError, IndexError) as exc:
            raise UserError(
                f"the checkpoint's RNG state is not one ({type(exc).__name__}); resume from another"
            ) from None
        return True
    torch.manual_seed(rank_seed(seed + step, dist.rank))
    return False
