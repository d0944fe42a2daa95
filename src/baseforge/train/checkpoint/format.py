"""The checkpoint format: names, atomic writes, pointers, prune, find, read. No backend logic here.

One checkpoint (the run dir's layout is rundir.py's):

    RUN/checkpoints/step_0001000/
        model.safetensors            fp32 weights (a tied output head is stored once, as wte)
        ema.safetensors              ema_decay runs, once the average has started: the averaged
                                     weights, in the same layout (train/average.py)
        trainer.safetensors          optimizer(s) tensors and RNG states      } the trainer state, no pickle:
        trainer.json                 the rest of it, naming those tensors     } see statefile.py
        dcp/                         FSDP runs only: every rank's shards of the weights and optimizer
                                     state (torch.distributed.checkpoint; see sharded.py), which then
                                     stay out of trainer.*; model.safetensors is still written whole
        state.json                   step, tokens seen, data position, losses, tokenizer record, and
                                     "files": the sha256 and size of model.*, ema.*, trainer.*, dcp/'s
                                     files, verified before each is read (see integrity.py)
        config.json                  the resolved config
        tokenizer.json               for trained BPE tokenizers

A checkpoint is written under a temporary name and renamed into place, and only then do the
pointers move (also atomically), so a kill at any moment leaves `latest` on a complete one.
Checkpoints of imported models (and trainer-less writes) have no trainer.* files. Nothing in a
checkpoint is executed when it is read: weights and trainer tensors are safetensors, the rest JSON
(DCP's own metadata file in dcp/ is its format's; baseforge reads it only through DCP). Nothing in one is
trusted either: the files are verified against their checksums, the weights' shapes against the config
(before the model is allocated) and their values for NaN and inf, and the tokenizer built from the record
against the record's content hash and size (integrity.py, tokenizer.check_built).

Which backend writes and reads a live run's checkpoint (plain or DCP shards) is decided in one place,
train/checkpoint/checkpointer.py; the RNG states it holds are train/rng.py's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from baseforge.config import RunConfig, load_run_config
from baseforge.errors import UserError
from baseforge.fileio import atomic_dir, atomic_write_json, atomic_write_text
from baseforge.model import GPT
from baseforge.records import count, excerpt, read_json, text
from baseforge.rundir import RunDir, step_of
from baseforge.tokenizer import Tokenizer, check_built, load_tokenizer
from baseforge.train.checkpoint import integrity, statefile
from baseforge.train.rng import rng_state

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"  # ema_decay: the averaged weights, in model.safetensors' layout
STATE_FILE = "state.json"
MAX_VOCAB = 1 << 24  # a tokenizer larger than this is not one baseforge wrote
TRAINER_TENSORS, TRAINER_JSON = "trainer.safetensors", "trainer.json"
CHECKSUMMED = (MODEL_FILE, EMA_FILE, TRAINER_TENSORS, TRAINER_JSON)  # and every file under dcp/ (sharded.DCP)
DCP = "dcp"


def model_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """A plain model's tensors as a checkpoint stores them."""
    return drop_tied_head({k: v.detach().contiguous() for k, v in model.state_dict().items()}, model.config)


def expected_shapes(model: GPT) -> dict[str, torch.Size]:
    """The names and shapes model_tensors gives for `model` (which may be on the meta device)."""
    return drop_tied_head({k: v.shape for k, v in model.state_dict().items()}, model.config)


def drop_tied_head(tensors: dict, config) -> dict:
    """A tied output head is stored once, as wte: safetensors refuses shared tensors; re-tied on load."""
    if config.tie_weights:
        tensors.pop("lm_head.weight", None)
    return tensors


def load_model_tensors(model: GPT, tensors: dict[str, torch.Tensor]) -> None:
    if model.config.tie_weights and "transformer.wte.weight" in tensors:
        tensors = {**tensors, "lm_head.weight": tensors["transformer.wte.weight"]}
    model.load_state_dict(tensors, strict=True)


def load_checked(model: GPT, tensors: dict[str, torch.Tensor], ckpt: Path) -> None:
    """load_model_tensors, with weights that do not fit the model (names, shapes) one line."""
    try:
        load_model_tensors(model, tensors)
    except RuntimeError as exc:
        first = str(exc).replace("\n", " ").replace("\t", "")
        raise UserError(f"the weights in {ckpt} do not fit its config ({excerpt(first, 160)})") from None


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
    average: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint `step_{step}` atomically, move the pointers, prune old ones.

    `model` is a plain model, or its tensors as model_tensors gives them. `state` is the run's progress
    (state.json); `trainer` the optimizer / scaler / RNG state to resume from (None: a weights-only
    checkpoint, as for imported models). keep_last=0 prunes nothing. `staged`: a temporary folder that
    other ranks already wrote into (FSDP shards); it is completed and renamed into place instead of a
    new one. `average`: the averaged weights (WeightAverage.tensors), saved as ema.safetensors.
    """
    run = RunDir.of(run_dir)
    path = run.checkpoint(step)
    if not path.exists():
        with atomic_dir(path, staged=staged) as tmp:
            save_file(
                model if isinstance(model, dict) else model_tensors(model),
                str(tmp / MODEL_FILE),
                metadata={"format": "pt", "step": str(step)},
            )
            if average is not None:
                save_file(
                    drop_tied_head(dict(average), config.model),
                    str(tmp / EMA_FILE),
                    metadata={"format": "pt", "step": str(step)},
                )
            if trainer is not None:
                skeleton, tensors = statefile.encode(trainer)
                save_file(tensors, str(tmp / TRAINER_TENSORS))
                (tmp / TRAINER_JSON).write_text(json.dumps(skeleton))
            files = integrity.record_files(tmp, CHECKSUMMED, tree=DCP)
            (tmp / STATE_FILE).write_text(
                json.dumps({**state, "step": step, "tokenizer": tokenizer.record(), "files": files}, indent=2)
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
    """The checkpoint folder a pointer names (None: no pointer); only a step_NNNNNNN name beside it."""
    path = root / which
    if path.is_symlink():
        raise UserError(
            f"{path} is a symlink; a checkpoint pointer is a plain file naming a folder beside it"
        )
    if not path.is_file():
        return None
    name = path.read_bytes()[:256].decode("utf-8", errors="replace").strip()
    if name and step_of(name) is None:
        raise UserError(
            f"{path} names {excerpt(name)}, not a checkpoint folder (step_NNNNNNN) beside it; "
            "point it at one, or pick a checkpoint dir explicitly"
        )
    return name or None


def checkpoint_steps(run: RunDir) -> list[Path]:
    """The run's checkpoint folders, oldest first (temporary and foreign names left out)."""
    found = [p for p in run.checkpoints.glob("step_*") if p.is_dir() and step_of(p.name) is not None]
    return sorted(found, key=_step)


def _step(checkpoint: Path) -> int:
    """The step of a folder `checkpoint_steps` found (so its name is a checkpoint's)."""
    step = step_of(checkpoint.name)
    assert step is not None, checkpoint
    return step


def prune(run: RunDir, keep_last: int) -> None:
    """Delete old checkpoints, keeping the newest `keep_last` and whatever a pointer names."""
    keep = {_pointer(run.checkpoints, "latest"), _pointer(run.checkpoints, "best")}
    steps = checkpoint_steps(run)
    for old in steps[:-keep_last] if keep_last else steps:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in run.checkpoints.glob(".step_*.tmp"):  # left by a process killed mid-write
        shutil.rmtree(tmp, ignore_errors=True)


def discard_after(run: RunDir, step: int) -> list[Path]:
    """On resume from `step`: checkpoints of later steps belong to an abandoned future. They are moved
    aside into RUN/discarded/ (not deleted: the user decides); returns where they went."""
    moved = []
    for path in checkpoint_steps(run):
        if _step(path) > step:
            target = _free_name(run.discarded / path.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            moved.append(target)
    best = _pointer(run.checkpoints, "best")
    if best and not (run.checkpoints / best).is_dir():
        run.pointer("best").unlink()
    return moved


def _free_name(path: Path) -> Path:
    """`path`, or `path.2`, `path.3`, ... where an earlier discard already used the name."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


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
    """(config, state.json) of a checkpoint, each checked: the state's step is its folder's, its tokenizer
    record whole (name, size, content hash)."""
    config = load_run_config(ckpt)
    path = ckpt / STATE_FILE
    state = read_json(path, "checkpoint state")
    step = count(state, "step", path)
    named = step_of(ckpt.name)
    if named is not None and named != step:
        raise UserError(
            f"{path}: step is {step} but the folder is {ckpt.name}: the checkpoint was edited or moved; "
            "resume from another one"
        )
    count(state, "tokens", path, optional=True)
    tok = state.get("tokenizer")
    if not isinstance(tok, dict):
        raise UserError(f"{path}: tokenizer is {excerpt(tok)}, not a tokenizer record; corrupt checkpoint")
    where = path.with_name(f"{STATE_FILE} tokenizer")
    text(tok, "name", where)
    count(tok, "vocab_size", where, low=1, high=MAX_VOCAB)
    text(tok, "sha256", where)  # the tokenizer's identity: required, never skipped
    return config, state


def read_model_tensors(
    ckpt: Path,
    expected: dict[str, torch.Size],
    device: str | torch.device = "cpu",
    by: str | None = None,
    file: str = MODEL_FILE,
) -> dict[str, torch.Tensor]:
    """A checkpoint's weights (`file`: model.safetensors, or ema.safetensors for the averaged ones),
    checked: the file against its checksum, then its names and shapes against `expected`
    (expected_shapes of the model `by` describes; default the checkpoint's config.json) before any is
    read, then every value finite."""
    path = ckpt / file
    if path.is_symlink():
        raise UserError(
            f"{path} is a symlink; baseforge loads weights only from a plain file in the checkpoint"
        )
    integrity.verify(ckpt / STATE_FILE, [file])
    integrity.check_shapes(path, expected, by or str(ckpt / "config.json"))
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"{path} is not readable safetensors ({excerpt(str(exc), 80)}); it is torn or corrupt"
        ) from None
    integrity.check_finite(ckpt, tensors)
    return tensors


def load_model(path: Path | str, device: str | torch.device = "cpu", which: str = "latest"):
    """(model in eval mode, tokenizer, info) from a run dir or checkpoint dir, for sample/eval/finetune.
    `which`: latest, best, or ema (the latest checkpoint's averaged weights, ema.safetensors).

    Everything is checked before the model is allocated: its shapes come from a copy on the meta device."""
    ckpt = find_checkpoint(path, "latest" if which == "ema" else which)
    file = EMA_FILE if which == "ema" else MODEL_FILE
    if not (ckpt / file).exists():
        raise UserError(
            f"{ckpt} has no averaged weights ({EMA_FILE}): only runs with ema_decay > 0 keep them, from "
            "ema_start on; use --which latest"
        )
    config, state = read_checkpoint_meta(ckpt)
    record = state["tokenizer"]
    model_config = config.with_vocab(record["vocab_size"], record.get("eot_id")).model
    with torch.device("meta"):
        expected = expected_shapes(GPT(model_config))
    tensors = read_model_tensors(ckpt, expected, file=file)
    tokenizer = load_tokenizer(record, ckpt)
    check_built(tokenizer, record, str(ckpt / STATE_FILE), model_config.known_vocab_size)
    model = GPT(model_config)
    load_checked(model, tensors, ckpt)
    model.to(device).eval()
    info = {"checkpoint": str(ckpt), "config": config, "state": state, "weights": file}
    return model, tokenizer, info


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
            "longer loads (a pickle can run code), so it cannot be resumed: start the run again"
        )
    if (ckpt / TRAINER_TENSORS).is_symlink():
        raise UserError(f"{ckpt / TRAINER_TENSORS} is a symlink; resume from another checkpoint")
    integrity.verify(ckpt / STATE_FILE, [TRAINER_JSON, TRAINER_TENSORS])
    skeleton = read_json(ckpt / TRAINER_JSON, "trainer state")
    try:
        state = statefile.decode(skeleton, load_file(str(ckpt / TRAINER_TENSORS)))
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"checkpoint {ckpt} has no readable trainer state "
            f"({type(exc).__name__}: {excerpt(str(exc), 80)}); resume from another one"
        ) from None
    if not isinstance(state, dict) or not {"optimizers", "scaler", "rng"} <= set(state):
        raise UserError(
            f"{ckpt / TRAINER_JSON} lacks optimizers, scaler or rng; resume from another checkpoint"
        )
    return state


def write_run_config(run: RunDir | Path, config: RunConfig) -> None:
    atomic_write_json(RunDir.of(run).config, config.to_dict())
