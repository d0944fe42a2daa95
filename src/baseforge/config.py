"""Run configuration: a preset, then a TOML file, then `--set key=value` overrides.

Two typed dataclasses travel together as one `RunConfig`: the model's shape (`model.ModelConfig`)
and the training recipe (`TrainConfig`). Their keys are disjoint, so users write flat keys
(`n_layer=6`, `lr=1e-3`) and each lands where it belongs. Both validate on construction, and every
change goes through `RunConfig.set`, which rebuilds (and so re-validates) the changed half. The
resolved config is saved with every run and checkpoint as `{"preset", "model": {...}, "train": {...}}`.
"""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

from baseforge.errors import UserError
from baseforge.model.config import ModelConfig, check_choices
from baseforge.presets import get_preset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class TrainConfig:
    # Batch: sequences of `context` tokens. global_batch = micro_batch * grad_accum * processes;
    # when global_batch is set, grad_accum follows from it (so a run keeps its global batch on
    # any number of processes). micro_batch = "auto" searches for the largest that fits.
    micro_batch: int | Literal["auto"] = 8  # sequences per forward/backward; auto: the largest that fits
    grad_accum: int = 1  # micro-batches per optimizer step (derived when global_batch is set)
    global_batch: int = 0  # sequences per optimizer step over all processes; 0: micro x accum x processes
    # AdamW (the write-up's baseline: lr 4e-4, weight decay 0.1).
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon for hidden matrices + AdamW for the rest
    lr: float = 4e-4  # peak learning rate of AdamW (with muon: of embeddings, head and gains)
    weight_decay: float = 0.1  # AdamW's decoupled weight decay
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.95  # AdamW's second-moment decay
    eps: float = 1e-8  # AdamW's denominator epsilon
    decay_all: bool = True  # false: no weight decay on biases, norms and embeddings
    muon_lr: float = 0.02  # Muon's learning rate for the hidden matrices
    muon_momentum: float = 0.95  # Muon's Nesterov momentum
    muon_weight_decay: float = 0.0  # decoupled, so scaled by muon_lr: keep it small
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # Schedule: constant, cosine (warmup, cosine to min_lr), wsd (warmup-stable-decay).
    schedule: Literal["constant", "cosine", "wsd"] = "cosine"
    warmup_steps: int = 0  # linear warmup steps (0: use warmup_fraction)
    warmup_fraction: float = 0.0  # used when warmup_steps = 0
    min_lr_ratio: float = 0.1  # floor of the decay, as a fraction of lr
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly
    # Length: max_steps, else max_tokens, else tokens_per_param x parameters (Chinchilla's 20).
    max_steps: int = 0  # optimizer steps to train (0: from max_tokens or tokens_per_param)
    max_tokens: int = 0  # tokens to train on (0: tokens_per_param x parameters)
    tokens_per_param: float = 20.0  # the token budget per parameter (Chinchilla's 20)
    seed: int = 1337  # initialisation, data order and dropout
    # Numerics and speed.
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    # compute precision; auto: bf16 where the device runs it natively, else fp16 on CUDA, else fp32
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: bool = False  # torch.compile the model; falls back to eager where it cannot run
    max_bad_steps: int = 10  # stop after this many non-finite steps in a row
    # Logging, evaluation, checkpoints.
    log_every: int = 10
    trackers: str = ""  # also send metrics to: tensorboard, wandb (comma-separated; optional extras)
    eval_every: int = 250  # steps between validation-loss evaluations
    eval_tokens: int = 1_048_576  # fixed slice of the validation split, the same tokens every time
    checkpoint_every: int = 1000  # steps between checkpoints
    checkpoint_minutes: float = 0.0  # also checkpoint every this many minutes; 0 = off
    keep_last: int = 3  # checkpoints kept besides the best
    early_stop_evals: int = 0  # stop when validation loss has not improved for this many evaluations; 0 = off
    hellaswag_every: int = 0  # also score HellaSwag every this many steps (0 = off)
    hellaswag_data: str = ""  # hellaswag_val.jsonl(.gz); empty = download once
    hellaswag_limit: int = 500  # items per in-training HellaSwag evaluation
    sample_prompt: str = "Every effort moves you"  # prompt of the sample at the end of training
    sample_tokens: int = 64  # tokens of that sample (0: no sample)
    dist_timeout_s: float = 600.0  # a dead rank stops the job after this long instead of hanging it
    parallel: Literal["ddp", "fsdp"] = "ddp"  # fsdp: shard weights, grads, optimizer state over processes
    fsdp_offload: bool = False  # fsdp: keep parameters and optimizer state in CPU memory
    activation_checkpointing: Literal["none", "blocks", "selective"] = "none"  # recompute in backward

    def __post_init__(self) -> None:
        def bad(key, why):
            raise UserError(f"config: {key} = {getattr(self, key)!r} {why}")

        if self.micro_batch != "auto" and (not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            bad("micro_batch", "must be a positive integer or 'auto'")
        for key in ("grad_accum", "log_every", "eval_every", "checkpoint_every", "max_bad_steps"):
            if getattr(self, key) < 1:
                bad(key, "must be at least 1")
        for key in (
            "global_batch",
            "max_steps",
            "max_tokens",
            "warmup_steps",
            "eval_tokens",
            "keep_last",
            "sample_tokens",
            "hellaswag_every",
            "hellaswag_limit",
            "weight_decay",
            "muon_weight_decay",
            "early_stop_evals",
            "grad_clip",
            "checkpoint_minutes",
            "eps",
        ):
            if getattr(self, key) < 0:
                bad(key, "must not be negative")
        if not self.lr > 0:
            bad("lr", "must be positive")
        if self.optimizer == "muon" and not self.muon_lr > 0:
            bad("muon_lr", "must be positive")
        try:
            check_choices(self)
        except ValueError as exc:
            raise UserError(f"config: {exc}") from None
        for key in ("beta1", "beta2", "muon_momentum"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "must be in [0, 1)")
        for key in ("min_lr_ratio", "decay_fraction", "warmup_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                bad(key, "must be in [0, 1]")
        if self.tokens_per_param <= 0:
            bad("tokens_per_param", "must be positive")


MODEL_KEYS = {f.name: f for f in fields(ModelConfig)}
TRAIN_KEYS = {f.name: f for f in fields(TrainConfig)}


def parse_value(key: str, raw: str, current):
    """Parse a --set string into the type of the key's current value."""
    kind = type(current)
    low = raw.strip().lower()
    if key == "micro_batch" and low == "auto":
        return "auto"
    if key == "vocab_size" and low in ("none", "data", "auto"):
        return None
    try:
        if isinstance(current, bool):
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if isinstance(current, int) or current is None or key == "micro_batch":
            number = float(raw)  # accepts 1e6 and 1_000_000 as well as 1000000
            if not number.is_integer():
                raise ValueError
            return int(number)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise UserError(f"config: {key} = {raw!r} is not a valid {kind.__name__}") from None
    return raw


def _unknown(key: str) -> UserError:
    known = sorted(MODEL_KEYS) + sorted(TRAIN_KEYS)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; see `baseforge train --help-config`"
    return UserError(f"unknown config key {key!r}{hint}")


@dataclass
class RunConfig:
    """The one config object of a run: the preset it started from, the model's shape, the recipe."""

    preset: str
    model: ModelConfig  # vocab_size may be None until the data's tokenizer is known
    train: TrainConfig

    def update(self, values: dict) -> None:
        """Change several keys at once; each half is rebuilt once, so the result is validated as a whole
        (n_embd=64 with n_head=2 is fine even if n_embd=64 alone does not divide the old n_head)."""
        for key in values:
            if key not in MODEL_KEYS and key not in TRAIN_KEYS:
                raise _unknown(key)
        try:
            self.model = replace(self.model, **{k: v for k, v in values.items() if k in MODEL_KEYS})
        except (TypeError, ValueError) as exc:
            raise UserError(f"config: {exc}") from None
        self.train = replace(self.train, **{k: v for k, v in values.items() if k in TRAIN_KEYS})

    def set(self, key: str, value) -> None:
        self.update({key: value})

    def get(self, key: str):
        return getattr(self.model if key in MODEL_KEYS else self.train, key)

    def with_vocab(self, vocab_size: int) -> RunConfig:
        """This config with the data's vocabulary filled in where the preset leaves it open."""
        if self.model.vocab_size is not None:
            return self
        return replace(self, model=replace(self.model, vocab_size=vocab_size))

    def to_dict(self) -> dict:
        return {"preset": self.preset, "model": asdict(self.model), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        for key in [*d.get("model", {}), *d.get("train", {})]:
            if key not in MODEL_KEYS and key not in TRAIN_KEYS:
                raise _unknown(key)
        try:
            model = ModelConfig(**d.get("model", {}))
        except (TypeError, ValueError) as exc:
            raise UserError(f"config: {exc}") from None
        return cls(d.get("preset", "custom"), model, TrainConfig(**d.get("train", {})))


def preset_config(name: str) -> RunConfig:
    preset = get_preset(name)
    return RunConfig(name, ModelConfig(**preset.model), TrainConfig(**preset.train))


RECIPES = Path(__file__).parent / "recipes"  # recipe files shipped with the package


def load_toml(path: Path | str) -> dict:
    """A TOML config file; a name that is not a file here is looked up among the shipped recipes
    (`--config seed-3090`, or `--config recipes/seed-3090.toml` outside a clone)."""
    path = Path(path)
    if not path.is_file():
        shipped = RECIPES / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
        if not shipped.is_file():
            names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.toml")))
            raise UserError(f"config file {path} not found (shipped recipes: {names})")
        path = shipped
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None


def load_run_config(run_dir: Path | str) -> RunConfig:
    """The saved config of a run dir or checkpoint dir (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no config.json: not a run dir or checkpoint")
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is corrupt ({exc})") from None


def resolve_config(
    preset: str | None, toml_path: Path | str | None = None, overrides: list[str] | tuple = ()
) -> RunConfig:
    """Preset, then TOML file (flat keys or [model]/[train] tables; may name a `preset`), then --set."""
    table = load_toml(toml_path) if toml_path else {}
    name = preset or table.pop("preset", None) or "cpu-small"
    table.pop("preset", None)
    config = preset_config(name)
    flat = {}
    for key, value in table.items():
        if key in ("model", "train") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    values = {}
    for key, value in flat.items():
        current = config.get(key) if key in MODEL_KEYS or key in TRAIN_KEYS else None
        if isinstance(value, str) and not isinstance(current, str):
            value = parse_value(key, value, current)
        values[key] = value
    values.update(_typed_overrides(config, overrides))
    config.update(values)
    return config


def parse_overrides(overrides) -> dict:
    """`--set key=value` strings as {key: raw value}, keys checked."""
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in MODEL_KEYS and key not in TRAIN_KEYS:
            raise _unknown(key)
        parsed[key] = raw
    return parsed


def config_changes(saved: RunConfig, wanted: RunConfig, allowed: set[str] = frozenset()) -> list[str]:
    """'key old -> new' for every key `wanted` changes in `saved`, except `allowed` train keys.

    A vocab_size left open (None) in `wanted` matches whatever the saved run took from its data.
    """
    changes = []
    for key in [*MODEL_KEYS, *TRAIN_KEYS]:
        old, new = saved.get(key), wanted.get(key)
        if key == "vocab_size" and new is None:
            continue
        if old != new and not (key in allowed and key in TRAIN_KEYS):
            changes.append(f"{key} {old!r} -> {new!r}")
    return changes


def resume_config(saved: RunConfig, preset: str | None, toml_path, overrides) -> RunConfig:
    """The config to resume with: the saved one, with `--set` train keys applied.

    `--preset` / `--config` / `--set` that equal the saved run are accepted (re-running the original
    command with --resume works); anything that would really change the model, or a train key
    that only a preset or file implies, is refused naming each key.
    """
    explicit = set(parse_overrides(overrides))
    if preset or toml_path:
        wanted = resolve_config(preset or saved.preset, toml_path, overrides)
        changes = config_changes(saved, wanted, allowed=explicit)
        if changes:
            raise UserError(
                f"--resume keeps the run's saved config, but the flags would change: {'; '.join(changes)}. "
                "Drop those flags, or change train keys with --set"
            )
    apply_overrides(saved, overrides, model_keys=False)
    return saved


def _typed_overrides(config: RunConfig, overrides) -> dict:
    return {key: parse_value(key, raw, config.get(key)) for key, raw in parse_overrides(overrides).items()}


def apply_overrides(config: RunConfig, overrides, model_keys: bool = True) -> None:
    """Apply `--set key=value` strings together, then validate the result."""
    values = _typed_overrides(config, overrides)
    for key, value in values.items():
        if key in MODEL_KEYS and not model_keys and value != config.get(key):
            raise UserError(f"--set {key}: the model's shape cannot change on --resume")
    config.update(values)


def _field_docs(cls) -> dict[str, str]:
    """The comment on (or just above) each field of a config dataclass: the keys' documentation."""
    import inspect

    docs, pending = {}, []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("# "))
            continue
        name = text.split(":", 1)[0]
        if ":" in text and name.isidentifier() and not text.startswith(("def ", "class ")):
            comment = text.split("  # ", 1)[1] if "  # " in text else ""
            docs[name] = comment or " ".join(pending)  # its own comment, else the one above it
        pending = []
    return docs


def _type_name(cls, name: str) -> str:
    import typing

    from baseforge.model.config import _choices

    hint = typing.get_type_hints(cls)[name]
    choices, types = _choices(hint)
    kinds = [t.__name__ for t in types if t is not type(None)] + ([" | ".join(choices)] if choices else [])
    return " | ".join(kinds) or str(hint)


def describe_keys() -> str:
    """Every config key with its type or choices, default and meaning, for `--help-config`."""
    lines = []
    for title, cls, keys in (
        ("model keys", ModelConfig, MODEL_KEYS),
        ("train keys", TrainConfig, TRAIN_KEYS),
    ):
        docs = _field_docs(cls)
        lines.append(f"{title}:")
        for name, f in keys.items():
            lines.append(f"  {name} = {f.default!r}  ({_type_name(cls, name)})")
            if docs.get(name):
                lines.append(f"      {docs[name]}")
    return "\n".join(lines)
