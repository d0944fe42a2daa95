"""Checkpoints: atomic, resumable to the bit, readable without baseforge.

Layout of a run dir:

    RUN/config.json                  the resolved config of the run
    RUN/data.json                    where the run's data came from: {"path", "manifest_sha256"}
    RUN/metrics.jsonl                one JSON object per logged step (see metrics.py)
    RUN/charts/*.png                 loss, learning rate and grad-norm charts
    RUN/checkpoints/latest           text file: the name of the newest complete checkpoint
    RUN/checkpoints/best             text file: the one with the lowest validation loss
    RUN/checkpoints/step_0001000/
        model.safetensors            fp32 weights (a tied output head is stored once, as wte)
        trainer.safetensors          optimizer(s) tensors and RNG states      } the trainer state, no pickle:
        trainer.json                 the rest of it, naming those tensors     } see statefile.py
        dcp/                         FSDP runs only: every rank's shards of the weights and optimizer
                                     state (torch.distributed.checkpoint; see sharded.py), which then
                                     stay out of trainer.*; model.safetensors is still written whole
        state.json                   step, tokens seen, data position, losses, tokenizer record
        config.json                  the resolved config
        tokenizer.json               for trained BPE tokenizers

A checkpoint is written under a temporary name and renamed into place, and only then do the
pointers move (also atomically), so a kill at any moment leaves `latest` on a complete one.
Checkpoints of imported models (and trainer-less writes) have no trainer.* files. Nothing in a
checkpoint is executed when it is read: weights and trainer tensors are safetensors, the rest JSON
(DCP's own metadata file in dcp/ is its format's; baseforge reads it only through DCP).

RNG: the trainer state holds every rank's own RNG state (a list, rank 0 first; older checkpoints hold
one dict). On resume each rank restores its own; where the world size changed, a rank without a saved
state is seeded deterministically from (seed, rank, step) (`restore_rng`). CUDA states are per device:
a process saves and restores the generator of its own device only, so any GPU count resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from baseforge.config import RunConfig, load_run_config
from baseforge.errors import UserError
from baseforge.fileio import (
    _fsync_file,
    apply_umask_modes,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    io_errors,
)
from baseforge.model import GPT
from baseforge.tokenizer import Tokenizer, load_tokenizer
from baseforge.train import statefile
from baseforge.train.distributed import DistInfo, gather_to_main, rank_seed

CHECKPOINTS = "checkpoints"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain GPT inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_tensors(model: GPT) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in unwrap(model).state_dict().items()}
    if unwrap(model).config.tie_weights:
        state.pop("lm_head.weight", None)  # safetensors refuses shared tensors; re-tied on load
    return state


def load_model_tensors(model: GPT, tensors: dict[str, torch.Tensor]) -> None:
    if model.config.tie_weights:
        tensors = {**tensors, "lm_head.weight": tensors["transformer.wte.weight"]}
    model.load_state_dict(tensors, strict=True)


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

    `saved` is the trainer state's "rng": a list by rank, or one dict (older checkpoints: rank 0's).
    Same world size: every rank continues its stream exactly. Otherwise ranks below the saved world size
    still take their own saved state, and the others are seeded from (seed, rank, step): deterministic,
    though no longer the stream an unchanged world size would have drawn.
    """
    states = saved if isinstance(saved, list) else [saved]
    if dist.rank < len(states):
        set_rng_state(states[dist.rank], device)
        return True
    torch.manual_seed(rank_seed(seed + step, dist.rank))
    return False


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model,
    config: RunConfig,
    tokenizer: Tokenizer,
    state: dict,
    trainer: dict | None = None,
    keep_last: int = 0,
    is_best: bool = False,
    staged: Path | None = None,
) -> Path:
    """Write checkpoint `step_{step}` atomically, move the pointers, prune old ones.

    `model` is the model, or its tensors as model_tensors gives them. `state` is the run's progress
    (state.json); `trainer` the optimizer / scaler / RNG state to resume from (None: a weights-only
    checkpoint, as for imported models). keep_last=0 prunes nothing. `staged`: a temporary folder that
    other ranks already wrote into (FSDP shards); it is completed and renamed into place instead of a
    new one.
    """
    root = Path(run_dir) / CHECKPOINTS
    name = f"step_{step:07d}"
    path = root / name
    if not path.exists():
        with adopt_dir(staged, path) if staged is not None else atomic_dir(path) as tmp:
            save_file(
                model if isinstance(model, dict) else model_tensors(model),
                str(tmp / "model.safetensors"),
                metadata={"format": "pt", "step": str(step)},
            )
            if trainer is not None:
                skeleton, tensors = statefile.encode(trainer)
                save_file(tensors, str(tmp / "trainer.safetensors"))
                (tmp / "trainer.json").write_text(json.dumps(skeleton))
            (tmp / "state.json").write_text(
                json.dumps({**state, "step": step, "tokenizer": tokenizer.record()}, indent=2)
            )
            (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
            tokenizer.save(tmp)
    atomic_write_text(root / "latest", name + "\n")
    if is_best:
        atomic_write_text(root / "best", name + "\n")
    if keep_last:
        prune(root, keep_last)
    return path


@contextlib.contextmanager
def adopt_dir(staged: Path, path: Path):
    """Like fileio.atomic_dir, for a temporary folder made beforehand (shared by several writers)."""
    try:
        with io_errors(path):
            yield staged
            for f in staged.rglob("*"):
                if f.is_file():
                    _fsync_file(f)
            apply_umask_modes(staged)  # DCP shards and safetensors files are written 0600
            os.replace(staged, path)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def _pointer(root: Path, which: str) -> str | None:
    try:
        return (root / which).read_text().strip() or None
    except FileNotFoundError:
        return None


def prune(root: Path, keep_last: int) -> None:
    """Delete old checkpoints, keeping the newest `keep_last` and whatever a pointer names."""
    keep = {_pointer(root, "latest"), _pointer(root, "best")}
    steps = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.startswith("."))
    for old in steps[:-keep_last] if keep_last else steps:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".step_*.tmp"):  # left by a process killed mid-write
        shutil.rmtree(tmp, ignore_errors=True)


def find_checkpoint(path: Path | str, which: str = "latest") -> Path:
    """A checkpoint dir from a checkpoint dir, a run dir (its latest/best) or a checkpoints dir."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    for root in (path / CHECKPOINTS, path):
        name = _pointer(root, which)
        if name:
            ckpt = root / name
            if (ckpt / "model.safetensors").is_file():
                return ckpt
            raise UserError(
                f"{root / which} names {name}, which is missing; pick a checkpoint dir explicitly"
            )
    if not path.exists():
        raise UserError(f"{path} does not exist")
    raise UserError(f"{path} is neither a run dir with checkpoints nor a checkpoint dir")


def read_checkpoint_meta(ckpt: Path) -> tuple[RunConfig, dict]:
    config = load_run_config(ckpt)
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint {ckpt} is incomplete or corrupt ({exc})") from None
    return config, state


def load_model(path: Path | str, device: str | torch.device = "cpu", which: str = "latest"):
    """(model in eval mode, tokenizer, info) from a run dir or checkpoint dir, for sample/eval/finetune."""
    ckpt = find_checkpoint(path, which)
    config, state = read_checkpoint_meta(ckpt)
    model = GPT(config.with_vocab(state["tokenizer"]["vocab_size"]).model)
    try:
        load_model_tensors(model, load_file(str(ckpt / "model.safetensors")))
    except Exception as exc:
        raise UserError(f"cannot load weights from {ckpt}: {exc}") from None
    tokenizer = load_tokenizer(state["tokenizer"], ckpt)
    model.to(device).eval()
    return model, tokenizer, {"checkpoint": str(ckpt), "config": config, "state": state}


def trainer_state(optimizers, scaler, rng: list[dict] | None = None) -> dict:
    """optimizers None: their state is elsewhere (dcp/). rng: every rank's (gather_rng_states); default
    this process's alone."""
    return {
        "optimizers": optimizers.state_dict() if optimizers is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng if rng is not None else [rng_state()],
    }


def read_trainer_state(ckpt: Path) -> dict:
    """The trainer state of a checkpoint, read without unpickling anything."""
    if (ckpt / "trainer.pt").is_file() and not (ckpt / "trainer.json").is_file():
        raise UserError(
            f"{ckpt} was written by an older baseforge: its trainer.pt is a pickle, which baseforge no "
            "longer loads (a pickle can run code). Its weights still load (sample, eval, export, finetune)"
        )
    try:
        skeleton = json.loads((ckpt / "trainer.json").read_text())
        tensors = load_file(str(ckpt / "trainer.safetensors"))
        return statefile.decode(skeleton, tensors)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, OSError) as exc:
        raise UserError(
            f"checkpoint {ckpt} has no readable trainer state ({exc}); resume from another one"
        ) from None


def restore_training(
    ckpt: Path, model, optimizers, scaler, device, dist: DistInfo | None = None, seed: int = 0
) -> dict:
    """Load weights, optimizer, scaler and RNG states into a live run; return state.json.

    A checkpoint with dcp/ (written by an FSDP run) loads weights and optimizer state from its shards,
    into a sharded model or a plain one, at any world size; a sharded model needs such a checkpoint.
    """
    from baseforge.train import sharded
    from baseforge.train.parallel import is_fsdp

    dist = dist or DistInfo()
    _, state = read_checkpoint_meta(ckpt)
    trainer = read_trainer_state(ckpt)
    if (ckpt / sharded.DCP).is_dir():
        sharded.load_sharded(ckpt / sharded.DCP, unwrap(model), optimizers)
    elif is_fsdp(unwrap(model)):
        raise UserError(
            f"{ckpt} was written by a DDP run (no dcp/ folder); resume it with parallel=ddp, or start the "
            "FSDP run from its weights with `baseforge finetune`"
        )
    else:
        load_model_tensors(unwrap(model), load_file(str(ckpt / "model.safetensors"), device=str(device)))
        optimizers.load_state_dict(trainer["optimizers"])
    if scaler is not None and trainer["scaler"] is not None:
        scaler.load_state_dict(trainer["scaler"])
    restore_rng(trainer["rng"], dist, device, seed, state["step"])
    return state


DATA_RECORD = "data.json"


def data_fingerprint(source: Path) -> str | None:
    """sha256 of a data dir's manifest (or of a data file): what identifies the data a run trained on."""
    source = Path(source)
    target = source / "manifest.json" if source.is_dir() else source
    return hashlib.sha256(target.read_bytes()).hexdigest() if target.is_file() else None


def write_data_record(run_dir: Path, source: Path) -> None:
    record = {"path": str(Path(source).resolve()), "manifest_sha256": data_fingerprint(source)}
    atomic_write_json(Path(run_dir) / DATA_RECORD, record)


def read_data_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / DATA_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def write_run_config(run_dir: Path, config: RunConfig) -> None:
    atomic_write_json(Path(run_dir) / "config.json", config.to_dict())


def discard_after(run_dir: Path, step: int) -> None:
    """On resume from `step`: checkpoints of later steps belong to an abandoned future; remove them."""
    root = Path(run_dir) / CHECKPOINTS
    for path in root.glob("step_*"):
        if path.is_dir() and int(path.name.split("_")[1]) > step:
            shutil.rmtree(path, ignore_errors=True)
    best = _pointer(root, "best")
    if best and not (root / best).is_dir():
        (root / "best").unlink()
