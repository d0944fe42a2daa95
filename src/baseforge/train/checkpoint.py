"""The checkpoint format: names, atomic writes, pointers, prune, find, read. No backend logic here.

One checkpoint (the run dir's layout is rundir.py's):

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

Which backend writes and reads a live run's checkpoint (plain or DCP shards) is decided in one place,
train/checkpointer.py; the RNG states it holds are train/rng.py's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from baseforge.config import RunConfig, load_run_config
from baseforge.data.shards import MANIFEST
from baseforge.errors import UserError
from baseforge.fileio import atomic_dir, atomic_write_json, atomic_write_text
from baseforge.model import GPT
from baseforge.rundir import RunDir, step_of
from baseforge.tokenizer import Tokenizer, load_tokenizer
from baseforge.train import statefile
from baseforge.train.rng import rng_state

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"
TRAINER_TENSORS, TRAINER_JSON = "trainer.safetensors", "trainer.json"


def model_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """A plain model's tensors as a checkpoint stores them."""
    return drop_tied_head({k: v.detach().contiguous() for k, v in model.state_dict().items()}, model.config)


def drop_tied_head(tensors: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A tied output head is stored once, as wte: safetensors refuses shared tensors; re-tied on load."""
    if config.tie_weights:
        tensors.pop("lm_head.weight", None)
    return tensors


def load_model_tensors(model: GPT, tensors: dict[str, torch.Tensor]) -> None:
    if model.config.tie_weights:
        tensors = {**tensors, "lm_head.weight": tensors["transformer.wte.weight"]}
    model.load_state_dict(tensors, strict=True)


def save_checkpoint(
    run_dir: RunDir | Path,
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

    `model` is a plain model, or its tensors as model_tensors gives them. `state` is the run's progress
    (state.json); `trainer` the optimizer / scaler / RNG state to resume from (None: a weights-only
    checkpoint, as for imported models). keep_last=0 prunes nothing. `staged`: a temporary folder that
    other ranks already wrote into (FSDP shards); it is completed and renamed into place instead of a
    new one.
    """
    run = RunDir(run_dir) if not isinstance(run_dir, RunDir) else run_dir
    path = run.checkpoint(step)
    if not path.exists():
        with atomic_dir(path, staged=staged) as tmp:
            save_file(
                model if isinstance(model, dict) else model_tensors(model),
                str(tmp / MODEL_FILE),
                metadata={"format": "pt", "step": str(step)},
            )
            if trainer is not None:
                skeleton, tensors = statefile.encode(trainer)
                save_file(tensors, str(tmp / TRAINER_TENSORS))
                (tmp / TRAINER_JSON).write_text(json.dumps(skeleton))
            (tmp / STATE_FILE).write_text(
                json.dumps({**state, "step": step, "tokenizer": tokenizer.record()}, indent=2)
            )
            (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
            tokenizer.save(tmp)
    atomic_write_text(run.pointer("latest"), path.name + "\n")
    if is_best:
        atomic_write_text(run.pointer("best"), path.name + "\n")
    if keep_last:
        prune(run, keep_last)
    return path


def _pointer(root: Path, which: str) -> str | None:
    try:
        return (root / which).read_text().strip() or None
    except FileNotFoundError:
        return None


def checkpoint_steps(run: RunDir) -> list[Path]:
    """The run's checkpoint folders, oldest first (temporary and foreign names left out)."""
    found = [p for p in run.checkpoints.glob("step_*") if p.is_dir() and step_of(p.name) is not None]
    return sorted(found, key=lambda p: step_of(p.name))


def prune(run: RunDir, keep_last: int) -> None:
    """Delete old checkpoints, keeping the newest `keep_last` and whatever a pointer names."""
    keep = {_pointer(run.checkpoints, "latest"), _pointer(run.checkpoints, "best")}
    steps = checkpoint_steps(run)
    for old in steps[:-keep_last] if keep_last else steps:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in run.checkpoints.glob(".step_*.tmp"):  # left by a process killed mid-write
        shutil.rmtree(tmp, ignore_errors=True)


def discard_after(run: RunDir, step: int) -> None:
    """On resume from `step`: checkpoints of later steps belong to an abandoned future; remove them."""
    for path in checkpoint_steps(run):
        if step_of(path.name) > step:
            shutil.rmtree(path, ignore_errors=True)
    best = _pointer(run.checkpoints, "best")
    if best and not (run.checkpoints / best).is_dir():
        run.pointer("best").unlink()


def find_checkpoint(path: Path | str, which: str = "latest") -> Path:
    """A checkpoint dir from a checkpoint dir, a run dir (its latest/best) or a checkpoints dir."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return path
    for root in (RunDir(path).checkpoints, path):
        name = _pointer(root, which)
        if name:
            ckpt = root / name
            if (ckpt / MODEL_FILE).is_file():
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
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint {ckpt} is incomplete or corrupt ({exc})") from None
    return config, state


def read_model_tensors(ckpt: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / MODEL_FILE), device=str(device))


def load_model(path: Path | str, device: str | torch.device = "cpu", which: str = "latest"):
    """(model in eval mode, tokenizer, info) from a run dir or checkpoint dir, for sample/eval/finetune."""
    ckpt = find_checkpoint(path, which)
    config, state = read_checkpoint_meta(ckpt)
    model = GPT(config.with_vocab(state["tokenizer"]["vocab_size"]).model)
    try:
        load_model_tensors(model, read_model_tensors(ckpt))
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
    if (ckpt / "trainer.pt").is_file() and not (ckpt / TRAINER_JSON).is_file():
        raise UserError(
            f"{ckpt} was written by an older baseforge: its trainer.pt is a pickle, which baseforge no "
            "longer loads (a pickle can run code). Its weights still load (sample, eval, export, finetune)"
        )
    try:
        skeleton = json.loads((ckpt / TRAINER_JSON).read_text())
        tensors = load_file(str(ckpt / TRAINER_TENSORS))
        return statefile.decode(skeleton, tensors)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, OSError) as exc:
        raise UserError(
            f"checkpoint {ckpt} has no readable trainer state ({exc}); resume from another one"
        ) from None


def data_fingerprint(source: Path) -> str | None:
    """sha256 of a data dir's manifest (or of a data file): what identifies the data a run trained on."""
    source = Path(source)
    target = source / MANIFEST if source.is_dir() else source
    return hashlib.sha256(target.read_bytes()).hexdigest() if target.is_file() else None


def write_data_record(run: RunDir, source: Path) -> None:
    record = {"path": str(Path(source).resolve()), "manifest_sha256": data_fingerprint(source)}
    atomic_write_json(run.data_record, record)


def read_data_record(run: RunDir) -> dict | None:
    return json.loads(run.data_record.read_text()) if run.data_record.is_file() else None


def write_run_config(run: RunDir, config: RunConfig) -> None:
    atomic_write_json(run.config, config.to_dict())
