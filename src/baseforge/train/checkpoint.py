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
        state.json                   step, tokens seen, data position, losses, tokenizer record
        config.json                  the resolved config
        tokenizer.json               for trained BPE tokenizers

A checkpoint is written under a temporary name and renamed into place, and only then do the
pointers move (also atomically), so a kill at any moment leaves `latest` on a complete one.
Checkpoints of imported models (and trainer-less writes) have no trainer.* files. Nothing in a
checkpoint is executed when it is read: weights and trainer tensors are safetensors, the rest JSON.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from baseforge.config import RunConfig
from baseforge.errors import UserError
from baseforge.fileio import atomic_dir, atomic_write_json, atomic_write_text
from baseforge.model import GPT
from baseforge.tokenizer import Tokenizer, load_tokenizer
from baseforge.train import statefile

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


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
) -> Path:
    """Write checkpoint `step_{step}` atomically, move the pointers, prune old ones.

    `state` is the run's progress (state.json); `trainer` the optimizer / scaler / RNG state to resume
    from (None: a weights-only checkpoint, as for imported models). keep_last=0 prunes nothing.
    """
    root = Path(run_dir) / CHECKPOINTS
    name = f"step_{step:07d}"
    path = root / name
    if not path.exists():
        with atomic_dir(path) as tmp:
            save_file(
                model_tensors(model),
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
    try:
        config = RunConfig.from_dict(json.loads((ckpt / "config.json").read_text()))
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


def trainer_state(optimizers, scaler) -> dict:
    return {
        "optimizers": optimizers.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
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


def restore_training(ckpt: Path, model, optimizers, scaler, device) -> dict:
    """Load weights, optimizer, scaler and RNG states into a live run; return state.json."""
    _, state = read_checkpoint_meta(ckpt)
    trainer = read_trainer_state(ckpt)
    load_model_tensors(unwrap(model), load_file(str(ckpt / "model.safetensors"), device=str(device)))
    optimizers.load_state_dict(trainer["optimizers"])
    if scaler is not None and trainer["scaler"] is not None:
        scaler.load_state_dict(trainer["scaler"])
    set_rng_state(trainer["rng"])
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
