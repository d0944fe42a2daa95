"""Sharded checkpoints for FSDP runs: every rank writes its own shards with torch.distributed.checkpoint.

An FSDP checkpoint is an ordinary checkpoint folder (format.py) plus `dcp/`:

    step_0001000/dcp/            DCP's files: each rank's shards of the weights ("model") and of each
                                 optimizer's state ("optim.adamw", "optim.muon"), keyed by parameter name
    step_0001000/model.safetensors   the whole model, gathered to rank 0, so eval/sample/export/finetune
                                 read FSDP checkpoints as they read any other
    step_0001000/trainer.*       scaler and every rank's RNG state (the optimizers are in dcp/)

Atomic as every checkpoint: all ranks write into one temporary folder, `.step_N.dcp.tmp` beside the
final one (its name is fixed, so every rank knows it without a message); after a barrier rank 0 adds the
other files and renames it into place, and only then moves `latest` / `best`. A kill at any moment
leaves `latest` on a complete checkpoint (pruning removes a stale temporary folder).

No pickle from a run dir runs code: DCP writes its index (`dcp/.metadata`) with pickle, so baseforge
reads it through `SafeReader`, whose unpickler builds only DCP's own metadata classes, torch sizes,
dtypes and layouts, and paths (anything else is refused); the shards' tensors are raw bytes, and their
few non-tensor values (step counts, hyperparameters) DCP loads with `torch.load(weights_only=True)`.
Every file in dcp/ is checksummed in state.json with the others (integrity.py): rank 0 hashes them all
when it completes the folder, and every rank verifies them all before loading (the same verdict on every
rank, so a refusal needs no message between them).

Loading reshards: DCP reads into whatever layout the live run has, so a checkpoint written by N
processes resumes on M, and on one process without FSDP. Several nodes need the run dir on a
filesystem every node sees (each rank writes its own files into dcp/).
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from baseforge.errors import UserError
from baseforge.fileio import atomic_path, atomic_write_json
from baseforge.model import GPT
from baseforge.records import read_json
from baseforge.rundir import RunDir
from baseforge.train.checkpoint import format as ckpt
from baseforge.train.checkpoint import integrity
from baseforge.train.distributed import DistInfo, barrier
from baseforge.train.optim import run_hyperparameters_kept

DCP = ckpt.DCP

# What DCP's metadata pickle may build: its own dataclasses, and the torch / pathlib values they hold.
_SAFE_MODULES = {"torch.distributed.checkpoint.metadata"}
_SAFE_NAMES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        allowed = module in _SAFE_MODULES or (module, name) in _SAFE_NAMES
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a DCP index")
        return super().find_class(module, name)


class SafeReader(FileSystemReader):
    """DCP's file reader, with its index read by an allowlisting unpickler instead of pickle.load."""

    def read_metadata(self, *args, **kwargs):
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            raise UserError(f"no readable index ({exc})") from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def full_model_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """The whole model's tensors on CPU, as model_tensors gives them, on rank 0 ({} on the others).

    A collective: every rank sends its shards."""
    # A full state dict holds plain tensors (DCP's value type also covers DTensors and nested values).
    state = cast(
        "dict[str, torch.Tensor]",
        get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)),
    )
    if not state:
        return {}
    return ckpt.drop_tied_head({k: v.contiguous() for k, v in state.items()}, model.config)


def _sharded_state(model: torch.nn.Module, optimizers) -> dict:
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    for name, opt in optimizers.optimizers.items():
        state[f"optim.{name}"] = get_optimizer_state_dict(model, opt)
    return state


def save_sharded(run: RunDir, model, optimizers, scaler, rng: list[dict], info: DistInfo, **args) -> None:
    """An FSDP checkpoint (see the module docstring); every rank calls it. `args`: save_checkpoint's."""
    path = run.checkpoint(args["step"])
    if path.exists():  # on a shared filesystem every rank sees the same answer
        return
    staged = path.parent / f".{path.name}.dcp.tmp"
    if info.is_main:
        shutil.rmtree(staged, ignore_errors=True)  # left by a run killed mid-write
        staged.mkdir(parents=True)
    barrier(info)
    weights = full_model_tensors(model)
    dcp.save(_sharded_state(model, optimizers), checkpoint_id=staged / DCP)
    barrier(info)  # every rank's shards are on disk before rank 0 renames the folder
    if info.is_main:
        trainer = ckpt.trainer_state(None, scaler, rng)
        ckpt.save_checkpoint(run, model=weights, trainer=trainer, staged=staged, **args)


def load_sharded(path: Path, model: torch.nn.Module, optimizers) -> None:
    """Weights and optimizer states from a dcp/ folder into a live model (sharded or not), resharded to it.

    The run's config wins over the checkpoint for base_lr and weight_decay (optim.run_hyperparameters_kept).
    """
    state = _sharded_state(model, optimizers)
    _load(state, path, no_dist=not dist.is_initialized())
    set_model_state_dict(model, state["model"])
    for name, opt in optimizers.optimizers.items():
        with run_hyperparameters_kept(opt):
            set_optimizer_state_dict(model, opt, state[f"optim.{name}"])


def _load(state: dict, path: Path, no_dist: bool) -> None:
    """dcp.load through SafeReader; an unreadable or refused checkpoint is the user's one-line error."""

    integrity.verify_tree(path.parent / ckpt.STATE_FILE, path.name)
    # The index is checked here first: torch 2.11's dcp.load swallows the reader's refusal and fails
    # later with "metadata is None", which would hide why the checkpoint was refused.
    SafeReader(path).read_metadata()
    try:
        dcp.load(state, storage_reader=SafeReader(path), no_dist=no_dist)
    except CheckpointException as exc:
        causes = [str(e) for _, (e, _) in sorted(exc.failures.items())] or [str(exc)]
        raise UserError(f"cannot load sharded checkpoint {path}: {causes[0].splitlines()[0][:300]}") from None


def consolidate(checkpoint: Path) -> Path:
    """Write model.safetensors of a checkpoint from its dcp/ folder (one process, no process group)."""
    config, state = ckpt.read_checkpoint_meta(checkpoint)
    model = GPT(config.with_vocab(state["tokenizer"]["vocab_size"], state["tokenizer"].get("eot_id")).model)
    weights = {"model": model.state_dict()}
    _load(weights, checkpoint / DCP, no_dist=True)
    model.load_state_dict(weights["model"])
    out = checkpoint / ckpt.MODEL_FILE
    state_path = checkpoint / ckpt.STATE_FILE
    with atomic_path(out) as tmp:
        save_file(ckpt.model_tensors(model), str(tmp), metadata={"format": "pt", "step": str(state["step"])})
        # Recorded before the file appears: a kill in between leaves no model.safetensors; a rerun redoes it
        files = {**integrity.recorded(state_path), out.name: integrity.digest(tmp)}
        atomic_write_json(state_path, {**read_json(state_path, "checkpoint state"), "files": files})
    return out


def gathered_model(model: GPT, device) -> GPT | None:
    """A plain copy of a sharded model on rank 0 (None elsewhere), for work only rank 0 does (sampling,
    HellaSwag), which must not run the sharded model's collectives alone. A collective: all ranks call it."""
    tensors = full_model_tensors(model)
    if not tensors:
        return None
    copy = GPT(model.config)
    ckpt.load_model_tensors(copy, tensors)
    return copy.to(device).eval()
