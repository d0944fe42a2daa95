"""Run configuration: a preset, then a TOML file, then `--set key=value` overrides.

Two small dataclasses: the model's shape (`model.ModelConfig`) and the training recipe
(`TrainConfig`). Their keys are disjoint, so users write flat keys (`n_layer=6`, `lr=1e-3`)
and each lands where it belongs. The resolved config is saved with every run and checkpoint
as `{"preset": ..., "model": {...}, "train": {...}}`.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from baseforge.errors import UserError
from baseforge.model.config import MODEL_PRESETS, ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class TrainConfig:
    # Batch: sequences of `context` tokens. global_batch = micro_batch * grad_accum * processes;
    # when global_batch is set, grad_accum follows from it (so a run keeps its global batch on
    # any number of processes). micro_batch = "auto" searches for the largest that fits.
    micro_batch: int | str = 8
    grad_accum: int = 1
    global_batch: int = 0
    # AdamW (the write-up's baseline: lr 4e-4, weight decay 0.1).
    optimizer: str = "adamw"  # "adamw", or "muon" (Muon for hidden matrices + AdamW for the rest)
    lr: float = 4e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    decay_all: bool = True  # false: no weight decay on biases, norms and embeddings
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0  # decoupled, so scaled by muon_lr: keep it small
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # Schedule: "constant", "cosine" (warmup, cosine to min_lr), "wsd" (warmup-stable-decay).
    schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # used when warmup_steps = 0
    min_lr_ratio: float = 0.1  # floor of the decay, as a fraction of lr
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly
    # Length: max_steps, else max_tokens, else tokens_per_param x parameters (Chinchilla's 20).
    max_steps: int = 0
    max_tokens: int = 0
    tokens_per_param: float = 20.0
    seed: int = 1337
    # Numerics and speed.
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    precision: str = (
        "auto"  # "auto" (bf16 where supported, else fp16 on CUDA, else fp32), "bf16", "fp16", "fp32"
    )
    compile: bool = False  # torch.compile the model; falls back to eager where it cannot run
    max_bad_steps: int = 10  # stop after this many non-finite steps in a row
    # Logging, evaluation, checkpoints.
    log_every: int = 10
    eval_every: int = 250
    eval_tokens: int = 1_048_576  # fixed slice of the validation split, the same tokens every time
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 0.0  # also checkpoint every this many minutes; 0 = off
    keep_last: int = 3  # checkpoints kept besides the best
    early_stop_evals: int = 0  # stop when validation loss has not improved for this many evaluations; 0 = off
    hellaswag_every: int = 0  # also score HellaSwag every this many steps (0 = off)
    hellaswag_data: str = ""  # hellaswag_val.jsonl(.gz); empty = download once
    hellaswag_limit: int = 500  # items per in-training HellaSwag evaluation
    sample_prompt: str = "Every effort moves you"
    sample_tokens: int = 64
    dist_timeout_s: float = 600.0  # a dead rank stops the job after this long instead of hanging it

    def validate(self) -> None:
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
        if self.optimizer not in ("adamw", "muon"):
            bad("optimizer", "must be 'adamw' or 'muon'")
        if self.schedule not in ("constant", "cosine", "wsd"):
            bad("schedule", "must be 'constant', 'cosine' or 'wsd'")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            bad("precision", "must be 'auto', 'bf16', 'fp16' or 'fp32'")
        for key in ("beta1", "beta2", "muon_momentum"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "must be in [0, 1)")
        for key in ("min_lr_ratio", "decay_fraction", "warmup_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                bad(key, "must be in [0, 1]")
        if self.tokens_per_param <= 0:
            bad("tokens_per_param", "must be positive")


# Training recipes per preset; the model shape comes from MODEL_PRESETS under the same name.
_WRITEUP = dict(
    lr=4e-4,
    weight_decay=0.1,
    schedule="cosine",
    warmup_fraction=0.05,
    min_lr_ratio=0.1,
    grad_clip=1.0,
    micro_batch="auto",
    global_batch=32,
    tokens_per_param=20.0,
    eval_every=500,
    eval_tokens=10_485_760,
    checkpoint_every=1000,
    checkpoint_minutes=30.0,
    log_every=10,
)
_CPU = dict(
    lr=2e-3,
    weight_decay=0.1,
    schedule="cosine",
    warmup_steps=30,
    min_lr_ratio=0.1,
    grad_clip=1.0,
    micro_batch=16,
    global_batch=16,
    eval_every=100,
    eval_tokens=65_536,
    checkpoint_every=200,
    log_every=10,
    sample_prompt="def ",
)
TRAIN_PRESETS: dict[str, dict] = {
    "gpt2-small-seed": _WRITEUP,
    "gpt2-124m": _WRITEUP,
    "gpt2-medium": dict(_WRITEUP, lr=3e-4),
    "gpt2-large": dict(_WRITEUP, lr=2.5e-4),
    "gpt2-xl": dict(_WRITEUP, lr=2e-4),
    "cpu-tiny": dict(
        _CPU, max_steps=1500, global_batch=16, micro_batch=16, eval_every=250, checkpoint_every=500
    ),
    "cpu-small": dict(_CPU, max_steps=600, lr=1.5e-3),
}
# The modern recipe: Muon for the hidden matrices, AdamW for embeddings/head/gains, warmup-stable-decay.
# CPU values: the best of a small grid in benchmarks/bench_recipes.py, seed 0 (muon_lr 0.02/0.03/0.05
# at lr 3e-3, then lr 3e-3/6e-3 at muon_lr 0.03).
_MODERN = dict(
    optimizer="muon",
    muon_lr=0.03,
    muon_momentum=0.95,
    lr=6e-3,
    schedule="wsd",
    warmup_steps=0,
    warmup_fraction=0.02,
    decay_fraction=0.3,
    min_lr_ratio=0.0,
)
TRAIN_PRESETS.update(
    {
        "cpu-small-modern": dict(TRAIN_PRESETS["cpu-small"], **_MODERN),
        # For a GPU: ~5 tokens per parameter (0.8B tokens), where speedrun recipes reach GPT-2 small
        "gpt2-small-modern": dict(
            _WRITEUP, **{**_MODERN, "muon_lr": 0.02, "lr": 3e-3}, global_batch=64, tokens_per_param=5.0
        ),
    }
)
PRESETS = [name for name in MODEL_PRESETS if name in TRAIN_PRESETS]

MODEL_KEYS = {f.name: f for f in fields(ModelConfig)}
TRAIN_KEYS = {f.name: f for f in fields(TrainConfig)}


def _parse_value(key: str, raw: str, current):
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
    preset: str
    model: dict  # ModelConfig fields; vocab_size may be None until the data is known
    train: TrainConfig

    def set(self, key: str, value) -> None:
        if key in MODEL_KEYS:
            self.model[key] = value
        elif key in TRAIN_KEYS:
            setattr(self.train, key, value)
        else:
            raise _unknown(key)

    def get(self, key: str):
        if key in MODEL_KEYS:
            return self.model.get(key, MODEL_KEYS[key].default)
        return getattr(self.train, key)

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        values = dict(self.model)
        if values.get("vocab_size") is None:
            if vocab_size is None:
                raise UserError("config: vocab_size is unknown (it comes from the data's tokenizer)")
            values["vocab_size"] = vocab_size
        try:
            return ModelConfig(**values)
        except (TypeError, ValueError) as exc:
            raise UserError(f"config: {exc}") from None

    def to_dict(self) -> dict:
        return {"preset": self.preset, "model": dict(self.model), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        train = TrainConfig()
        for key, value in d.get("train", {}).items():
            if key not in TRAIN_KEYS:
                raise _unknown(key)
            setattr(train, key, value)
        model = dict(d.get("model", {}))
        for key in model:
            if key not in MODEL_KEYS:
                raise _unknown(key)
        return cls(d.get("preset", "custom"), model, train)


def preset_config(name: str) -> RunConfig:
    if name not in MODEL_PRESETS or name not in TRAIN_PRESETS:
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return RunConfig(name, dict(MODEL_PRESETS[name]), TrainConfig(**TRAIN_PRESETS[name]))


def load_toml(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None


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
    for key, value in flat.items():
        current = config.get(key) if key in MODEL_KEYS or key in TRAIN_KEYS else None
        if isinstance(value, str) and not isinstance(current, str):
            value = _parse_value(key, value, current)
        config.set(key, value)
    apply_overrides(config, overrides)
    return config


def apply_overrides(config: RunConfig, overrides, model_keys: bool = True) -> None:
    """Apply `--set key=value` strings, then validate the whole config."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in MODEL_KEYS and key not in TRAIN_KEYS:
            raise _unknown(key)
        if key in MODEL_KEYS and not model_keys:
            raise UserError(f"--set {key}: the model's shape cannot change on --resume")
        config.set(key, _parse_value(key, raw, config.get(key)))
    config.train.validate()
    config.model_config(config.model.get("vocab_size") or 1)  # shape errors surface now, not mid-run


def describe_keys() -> str:
    """Every config key with its default, for `--help-config`."""
    lines = ["model keys:"]
    for name, f in MODEL_KEYS.items():
        lines.append(f"  {name} = {f.default!r}")
    lines.append("train keys:")
    for name, f in TRAIN_KEYS.items():
        lines.append(f"  {name} = {f.default!r}")
    return "\n".join(lines)
