"""The model's shape and architecture options (the presets' shapes live in `baseforge.presets`).

Every config field is declared with `option(default, help)`: the help text lives in the field's
metadata, where `--help-config` reads it (`help_text`) and a test checks it for every key.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from baseforge.errors import ConfigError


def option(default, help: str):
    """A config field: its default and its one-line `--help-config` text (in the field's metadata)."""
    return field(default=default, metadata={"help": help})


def help_text(cls, name: str) -> str:
    """The help text of config key `name` of dataclass `cls` ('' if it has none)."""
    return {f.name: f for f in fields(cls)}[name].metadata.get("help", "")


def type_name(cls, name: str) -> str:
    """Key `name`'s type as `--help-config` shows it: `int`, `int | auto`, `learned | rope`."""
    choices, types = _choices(typing.get_type_hints(cls)[name])
    kinds = [t.__name__ for t in types if t is not type(None)] + ([" | ".join(choices)] if choices else [])
    return " | ".join(kinds) or str(typing.get_type_hints(cls)[name])


def check_choices(obj) -> None:
    """ConfigError for a dataclass field whose value its type does not admit: one of its `Literal[...]`
    choices, or a value of one of its types (a bool is no number here; an int is a float), and a float
    field that is not finite (inf, nan). A field may admit both (`int | Literal["auto"]`)."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        allowed, kinds = _choices(hints[f.name])
        value = getattr(obj, f.name)
        if (allowed or kinds) and not _fits(value, allowed, kinds):
            if allowed and not kinds:
                raise ConfigError(
                    f"config: {f.name} must be one of {', '.join(map(repr, allowed))}, not {value!r}"
                )
            raise ConfigError(f"config: {f.name} must be {type_name(type(obj), f.name)}, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config: {f.name} = {value!r} must be a finite number")


def _fits(value, allowed: list, kinds: list) -> bool:
    if any(value == a and type(value) is type(a) for a in allowed):
        return True
    for kind in kinds:
        if kind is bool or isinstance(value, bool):
            if kind is bool and isinstance(value, bool):
                return True
            continue
        if kind is float and isinstance(value, int):
            return True
        if isinstance(value, kind):
            return True
    return False


def _choices(hint) -> tuple[list, list]:
    """(literal values, other types) admitted by a type hint."""
    if typing.get_origin(hint) is Literal:
        return list(typing.get_args(hint)), []
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_choices(arg) for arg in typing.get_args(hint)]
        return [v for vals, _ in parts for v in vals], [t for _, ts in parts for t in ts]
    return [], [hint] if isinstance(hint, type) else []


# Far beyond any GPT-2-class model, and small enough that building one (even on the meta device, as
# `GPT.count_params` does) is never a runaway loop or allocation: a config read back from disk may hold
# any number.
SIZE_LIMITS = {"context": 1 << 20, "n_layer": 1024, "n_head": 1024, "n_embd": 1 << 16, "vocab_size": 1 << 24}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int | None = option(
        50257, "token vocabulary size; None: taken from the data's tokenizer when the run starts"
    )
    context: int = option(1024, "tokens per sequence (the attention window)")
    n_layer: int = option(12, "transformer blocks")
    n_head: int = option(12, "attention heads per block")
    n_embd: int = option(768, "width of the residual stream")
    dropout: float = option(0.0, "dropout rate on attention, MLP output and embeddings, in training only")
    qkv_bias: bool = option(True, "bias on the fused query/key/value projection")
    bias: bool = option(True, "biases on the other linear layers and on the norms")
    tie_weights: bool = option(True, "output head shares the token embedding matrix")
    # Modern options (all off = GPT-2). Each is independent.
    pos_emb: Literal["learned", "rope"] = option("learned", "learned absolute positions, or rotary (rope)")
    norm: Literal["layernorm", "rmsnorm"] = option("layernorm", "normalisation before each sublayer")
    qk_norm: bool = option(False, "normalise queries and keys per head before attention")
    mlp_act: Literal["gelu", "relu2"] = option("gelu", "GPT-2's tanh-approximated GELU, or squared ReLU")
    zero_init_head: bool = option(False, "start the (untied) output head at zero")
    logit_softcap: float = option(0.0, "cap on the logits, 0 = off; else logits = cap * tanh(logits / cap)")
    rope_base: float = option(10000.0, "rotary frequency base (pos_emb = rope)")
    # From modded-nanogpt's later records; each is independent and off by default.
    attn_doc_mask: bool = option(
        False, "a token attends only to its own document's earlier tokens (documents start at doc_token)"
    )
    rope_doc_reset: bool = option(False, "rotary positions restart at each document start (pos_emb = rope)")
    attn_window: int = option(0, "sliding-window attention: each token sees this many positions; 0 = all")
    value_embeds: int = option(
        0, "extra embedding tables mixed into the attention values of the first and last N blocks"
    )
    unet_skips: bool = option(False, "learned-weight skip connections from block i's output to block L-1-i")
    doc_token: int | None = option(
        None, "the token that starts a document; None: the data tokenizer's <|endoftext|>"
    )

    def __post_init__(self) -> None:
        def bad(why):
            raise ConfigError(f"config: {why}")

        check_choices(self)
        for name, most in SIZE_LIMITS.items():
            value = getattr(self, name)
            if value is not None and not 1 <= value <= most:
                bad(f"{name} must be between 1 and {most:,}, not {value}")
        if self.n_embd % self.n_head:
            bad(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            bad("rope needs an even head size")
        if self.zero_init_head and self.tie_weights:
            bad("zero_init_head needs tie_weights = false (a zero embedding cannot learn)")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), not {self.dropout}")
        if self.rope_doc_reset and self.pos_emb != "rope":
            bad("rope_doc_reset needs pos_emb = rope")
        if self.attn_window < 0:
            bad(f"attn_window must be 0 (off) or a number of positions, not {self.attn_window}")
        if not 0 <= self.value_embeds <= self.n_layer // 2:
            bad(
                f"value_embeds must be between 0 and n_layer / 2 = {self.n_layer // 2} (the first and last "
                f"N blocks each take one), not {self.value_embeds}"
            )
        if self.doc_token is not None and not 0 <= self.doc_token < (self.vocab_size or self.doc_token + 1):
            bad(f"doc_token {self.doc_token} is not a token of the vocabulary ({self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def known_vocab_size(self) -> int:
        """vocab_size once it is known: a model is built only after RunConfig.with_vocab fills it in."""
        if self.vocab_size is None:
            raise ValueError("vocab_size is not known yet: RunConfig.with_vocab takes it from the data")
        return self.vocab_size

    @property
    def masked_attention(self) -> bool:
        """Does attention follow more than the causal rule (documents, a window)?"""
        return self.attn_doc_mask or self.attn_window > 0

    @property
    def needs_doc_token(self) -> bool:
        return self.attn_doc_mask or self.rope_doc_reset

    def known_doc_token(self) -> int:
        if self.doc_token is None:
            raise ValueError("doc_token is not known yet: RunConfig.with_vocab takes it from the data")
        return self.doc_token

    def with_(self, **changes) -> ModelConfig:
        return replace(self, **changes)
