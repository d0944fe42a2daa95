"""Run configuration: what the keys are, their types and checks, and the `RunConfig` that holds them.

Two typed dataclasses travel together as one `RunConfig`: the model's shape (`model.ModelConfig`)
and the training recipe (`TrainConfig`). Their keys are disjoint, so users write flat keys
(`n_layer=6`, `lr=1e-3`) and each lands where it belongs. Both are frozen and validate on construction
(`errors.ConfigError` for a bad value); every change goes through `RunConfig.update`, which rebuilds
them with `dataclasses.replace` (and so re-validates). Each key's help text is in its field's metadata
(`model.config.option`), read by `--help-config`. The resolved config is saved with every run and
checkpoint as `{"preset", "model": {...}, "train": {...}}`. A config is resolved from a preset, a TOML
file and `--set key=value` overrides in `overrides.py`. A run started with `--init-from` also saves
`"init_from"`, its source: the model's shape and first weights came from there, and the preset gave
only the training settings.
"""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

from baseforge.data.batch_plan import parse_batch_schedule
from baseforge.errors import ConfigError, UserError
from baseforge.model.config import ModelConfig, check_choices, help_text, option, type_name


@dataclass(frozen=True)
class TrainConfig:
    # Batch: sequences of `context` tokens. global_batch = micro_batch * grad_accum * processes;
    # when global_batch is set, grad_accum follows from it (data.batch_plan.BatchLayout.from_config),
    # so a grad_accum above 1 beside it is refused rather than ignored.
    micro_batch: int | Literal["auto"] = option(
        8, "sequences per forward/backward; auto: the largest that fits"
    )
    grad_accum: int = option(
        1, "micro-batches per optimizer step (derived, and not to be set, when global_batch is set)"
    )
    global_batch: int = option(
        0,
        "sequences per optimizer step over all processes (kept on any number); 0: micro x accum x processes",
    )
    batch_schedule: str = option(
        "", "smaller global batches early: SEQUENCES@TOKENS,... (e.g. 8@2e6,16@8e6), then global_batch"
    )
    # AdamW (the write-up's baseline: lr 4e-4, weight decay 0.1).
    optimizer: Literal["adamw", "muon"] = option(
        "adamw", "muon: Muon for hidden matrices + AdamW for the rest"
    )
    lr: float = option(4e-4, "peak learning rate of AdamW (with muon: of embeddings, head and gains)")
    weight_decay: float = option(0.1, "AdamW's decoupled weight decay")
    beta1: float = option(0.9, "AdamW's first-moment decay")
    beta2: float = option(0.95, "AdamW's second-moment decay")
    eps: float = option(1e-8, "AdamW's denominator epsilon")
    decay_all: bool = option(True, "false: no weight decay on biases, norms and embeddings")
    muon_lr: float = option(0.02, "Muon's learning rate for the hidden matrices")
    muon_momentum: float = option(0.95, "Muon's Nesterov momentum")
    muon_weight_decay: float = option(
        0.0, "Muon's weight decay; decoupled, so scaled by muon_lr: keep it small"
    )
    muon_ns: Literal["jordan", "polar_express"] = option(
        "jordan", "Newton-Schulz coefficients: Keller Jordan's fixed quintic, or Polar Express's per step"
    )
    normuon: bool = option(False, "NorMuon: scale Muon's update per neuron by its running second moment")
    cautious_wd: bool = option(False, "Muon's weight decay only where the update moves the weight towards 0")
    grad_clip: float = option(1.0, "max global grad norm; 0 = off")
    ema_decay: float = option(
        0.0, "an EMA of the weights with this decay per step, evaluated and saved beside them (0: off)"
    )
    ema_start: float = option(
        0.7, "fraction of the steps after which the EMA starts from the weights (0.7: where wsd decays)"
    )
    # Schedule.
    schedule: Literal["constant", "cosine", "wsd"] = option(
        "cosine",
        "learning-rate schedule: constant, cosine (warmup, cosine to min_lr), wsd (warmup-stable-decay)",
    )
    warmup_steps: int = option(0, "linear warmup steps (0: use warmup_fraction)")
    warmup_fraction: float = option(0.0, "warmup as a fraction of the steps, used when warmup_steps = 0")
    min_lr_ratio: float = option(0.1, "floor of the decay, as a fraction of lr")
    decay_fraction: float = option(0.2, "wsd: the last fraction of steps decays linearly")
    extend_lr: float = option(
        0.0,
        "--extend: re-warm to this fraction of lr where the rate has decayed below it, then decay again "
        "(0: continue from the current rate, refused under 5% of lr)",
    )
    # Length: max_steps, else max_tokens, else tokens_per_param x parameters (Chinchilla's 20).
    max_steps: int = option(0, "optimizer steps to train (0: from max_tokens or tokens_per_param)")
    max_tokens: int = option(0, "tokens to train on (0: tokens_per_param x parameters)")
    tokens_per_param: float = option(20.0, "the token budget per parameter (Chinchilla's 20)")
    seed: int = option(1337, "seed of initialisation, data order and dropout")
    attn_window_warmup: float = option(
        0.0, "fraction of the steps over which attention's window grows from 128 positions to its full size"
    )
    packing: Literal["concat", "bestfit"] = option(
        "concat", "train windows: any stretch of the token stream, or bestfit (each starts at a document)"
    )
    # Numerics and speed.
    device: str = option("auto", '"auto", "cpu", "cuda", "cuda:1", "mps"')
    precision: Literal["auto", "bf16", "fp16", "fp32"] = option(
        "auto",
        "compute precision; auto: bf16 where the device runs it natively, else fp16 on CUDA, else fp32",
    )
    compile: bool | Literal["auto"] = option(
        "auto", "torch.compile the model (eager where it cannot); auto: on for CUDA, off on the CPU (README)"
    )
    max_bad_steps: int = option(10, "stop after this many non-finite steps in a row")
    # Logging, evaluation, checkpoints.
    log_every: int = option(10, "steps between metrics rows (metrics.jsonl, trackers, the progress line)")
    trackers: str = option("", "also send metrics to: tensorboard, wandb (comma-separated; optional extras)")
    eval_every: int = option(250, "steps between validation-loss evaluations")
    eval_tokens: int = option(1_048_576, "fixed slice of the validation split, the same tokens every time")
    checkpoint_every: int = option(1000, "steps between checkpoints")
    checkpoint_minutes: float = option(0.0, "also checkpoint every this many minutes; 0 = off")
    keep_last: int = option(3, "checkpoints kept besides the best")
    early_stop_evals: int = option(
        0, "stop when validation loss has not improved for this many evaluations; 0 = off"
    )
    evaluators_every: int = option(
        0, "steps between the in-training evaluators (every one of them: today HellaSwag); 0 = off"
    )
    hellaswag_data: str = option(
        "", "hellaswag_val.jsonl(.gz) of the in-training HellaSwag; empty = download once"
    )
    hellaswag_limit: int = option(500, "items per in-training HellaSwag evaluation")
    sample_prompt: str = option(
        "", "prompt of the end-of-run sample; empty: the start of a held-out document"
    )
    sample_tokens: int = option(64, "tokens of that sample (0: no sample)")
    dist_timeout_s: float = option(
        600.0, "a dead rank stops the job after this many seconds instead of hanging it"
    )
    parallel: Literal["ddp", "fsdp"] = option(
        "ddp", "fsdp: shard weights, grads, optimizer state over processes"
    )
    fsdp_offload: bool = option(False, "fsdp: keep parameters and optimizer state in CPU memory")
    activation_checkpointing: Literal["none", "blocks", "selective"] = option(
        "none", "recompute activations in backward: none, every block, or every other block (selective)"
    )

    def __post_init__(self) -> None:
        def bad(key, why):
            raise ConfigError(f"config: {key} = {getattr(self, key)!r} {why}")

        if self.micro_batch != "auto" and (not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            bad("micro_batch", "must be a positive integer or 'auto'")
        check_choices(self)  # choices, and every float finite (so lr=inf is refused here)
        for key in ("grad_accum", "log_every", "eval_every", "checkpoint_every", "max_bad_steps"):
            if getattr(self, key) < 1:
                bad(key, "must be at least 1")
        non_negative = (
            "global_batch max_steps max_tokens warmup_steps eval_tokens keep_last sample_tokens "
            "evaluators_every hellaswag_limit weight_decay muon_weight_decay early_stop_evals grad_clip "
            "checkpoint_minutes eps"
        )
        for key in non_negative.split():
            if getattr(self, key) < 0:
                bad(key, "must not be negative")
        if not self.lr > 0:
            bad("lr", "must be positive")
        if self.optimizer == "muon" and not self.muon_lr > 0:
            bad("muon_lr", "must be positive")
        for key in ("beta1", "beta2", "muon_momentum", "ema_decay", "ema_start"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "must be in [0, 1)")
        for key in ("min_lr_ratio", "decay_fraction", "warmup_fraction", "extend_lr"):
            if not 0 <= getattr(self, key) <= 1:
                bad(key, "must be in [0, 1]")
        if self.tokens_per_param <= 0:
            bad("tokens_per_param", "must be positive")
        if self.global_batch and self.grad_accum > 1:  # it would be dropped: the layout derives it
            bad(
                "grad_accum",
                f"beside global_batch = {self.global_batch}: the accumulation follows from global_batch "
                "(global_batch / (micro_batch x processes)); set micro_batch instead, or global_batch=0",
            )
        if parse_batch_schedule(self.batch_schedule) and not self.global_batch:
            bad("batch_schedule", "needs global_batch: the batch the schedule grows to")


MODEL_KEYS = {f.name: f for f in fields(ModelConfig)}
TRAIN_KEYS = {f.name: f for f in fields(TrainConfig)}
# Old names still accepted (in --set, TOML files and the config.json of older runs): old -> new.
RENAMED = {"hellaswag_every": "evaluators_every"}
_told: set[str] = set()


def with_new_names(values: dict) -> dict:
    """`values` with old key names replaced by their new ones, saying so once per process on stderr."""
    out = {}
    for name, value in values.items():
        new = RENAMED.get(name)
        if new is None:
            out[name] = value
            continue
        if new in values:
            raise ConfigError(f"config: {name} is the old name of {new}; give only {new}")
        if name not in _told:
            _told.add(name)
            print(
                f"note: config key {name} is now {new} (it sets the cadence of every in-training "
                f"evaluator); the old name still works but is deprecated",
                file=sys.stderr,
            )
        out[new] = value
    return out


def unknown_key(key: str) -> ConfigError:
    """The error for a key that is neither a model nor a train key, naming the closest one."""
    known = sorted(MODEL_KEYS) + sorted(TRAIN_KEYS)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; see `baseforge train --help-config`"
    return ConfigError(f"unknown config key {key!r}{hint}")


@dataclass
class RunConfig:
    """The one config object of a run: the preset it started from, the model's shape, the recipe."""

    preset: str
    model: ModelConfig  # vocab_size may be None until the data's tokenizer is known
    train: TrainConfig
    init_from: str | None = None  # --init-from's source (launch.init_from says it): the model came from it

    def origin(self) -> str:
        """Where the run's model and recipe came from, as its opening line says it: the preset, or the
        --init-from source for the model and the preset for the training settings."""
        if self.init_from is None:
            return self.preset
        return f"model from {self.init_from}, training settings from preset {self.preset}"

    def update(self, values: dict) -> None:
        """Change several keys at once: the one way a config changes. Each half is rebuilt once with
        `dataclasses.replace` (both are frozen), so the result is validated as a whole (n_embd=64 with
        n_head=2 is fine even if n_embd=64 alone does not divide the old n_head)."""
        values = with_new_names(values)
        for name in values:
            if name not in MODEL_KEYS and name not in TRAIN_KEYS:
                raise unknown_key(name)
        self.model = replace(self.model, **{k: v for k, v in values.items() if k in MODEL_KEYS})
        self.train = replace(self.train, **{k: v for k, v in values.items() if k in TRAIN_KEYS})

    def set(self, key: str, value) -> None:
        self.update({key: value})

    def get(self, key: str):
        return getattr(self.model if key in MODEL_KEYS else self.train, key)

    def with_vocab(self, vocab_size: int, eot_id: int | None = None) -> RunConfig:
        """This config with the data's vocabulary (and, for a model that masks or positions by document,
        its <|endoftext|> as the document token) filled in where the preset leaves them open."""
        model = self.model
        if model.vocab_size is None:
            model = replace(model, vocab_size=vocab_size)
        if model.doc_token is None and eot_id is not None and model.needs_doc_token:
            model = replace(model, doc_token=eot_id)
        return self if model is self.model else replace(self, model=model)

    def to_dict(self) -> dict:
        source = {} if self.init_from is None else {"init_from": self.init_from}
        return {"preset": self.preset, **source, "model": asdict(self.model), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        if not isinstance(d, dict) or not all(isinstance(d.get(k, {}), dict) for k in ("model", "train")):
            raise ConfigError("config: a run config is a JSON object with `model` and `train` objects")
        model, train = d.get("model", {}), with_new_names(d.get("train", {}))
        for name in (n for n in [*model, *train] if n not in MODEL_KEYS and n not in TRAIN_KEYS):
            raise unknown_key(name)
        source = d.get("init_from")
        if source is not None and not isinstance(source, str):
            raise ConfigError(f"config: init_from is {type(source).__name__}, not the text naming a model")
        try:
            return cls(d.get("preset", "custom"), ModelConfig(**model), TrainConfig(**train), source)
        except TypeError as exc:  # a key under the wrong table
            raise ConfigError(f"config: {exc}") from None


def load_run_config(run_dir: Path | str) -> RunConfig:
    """The saved config of a run dir or checkpoint dir (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no config.json: not a run dir or checkpoint")
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is corrupt ({exc})") from None


def describe_keys(config: RunConfig | None = None) -> str:
    """Every config key: its type or choices, default and help text, for `--help-config`. The default
    shown is `config`'s value (a preset's), else the field's own (the base, before any preset)."""
    lines = []
    for title, cls, keys, values in (
        ("model keys", ModelConfig, MODEL_KEYS, config and config.model),
        ("train keys", TrainConfig, TRAIN_KEYS, config and config.train),
    ):
        lines.append(f"{title}:")
        for name, f in keys.items():
            default = getattr(values, name) if values else f.default
            lines.append(f"  {name} = {default!r}  ({type_name(cls, name)})")
            lines.append(f"      {help_text(cls, name)}")
    lines.append(
        "renamed keys (the old name still works): " + ", ".join(f"{o} -> {n}" for o, n in RENAMED.items())
    )
    return "\n".join(lines)
