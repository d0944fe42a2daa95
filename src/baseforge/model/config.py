"""The model's shape and architecture options, and the named shapes of the presets."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 50257
    context: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    qkv_bias: bool = True  # bias on the fused query/key/value projection
    bias: bool = True  # biases on the other linear layers and on the norms
    tie_weights: bool = True  # output head shares the token embedding matrix
    # Modern options (all off = GPT-2). Each is independent.
    pos_emb: str = "learned"  # "learned" absolute positions, or "rope" (rotary)
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    qk_norm: bool = False  # normalise queries and keys per head before attention
    mlp_act: str = "gelu"  # "gelu" (GPT-2's tanh approximation) or "relu2" (squared ReLU)
    zero_init_head: bool = False  # start the (untied) output head at zero
    logit_softcap: float = 0.0  # 0 = off; else logits = cap * tanh(logits / cap)
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos_emb not in ("learned", "rope"):
            raise ValueError(f"pos_emb must be 'learned' or 'rope', not {self.pos_emb!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', not {self.norm!r}")
        if self.mlp_act not in ("gelu", "relu2"):
            raise ValueError(f"mlp_act must be 'gelu' or 'relu2', not {self.mlp_act!r}")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("rope needs an even head size")
        if self.zero_init_head and self.tie_weights:
            raise ValueError("zero_init_head needs tie_weights = false (a zero embedding cannot learn)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


_GPT2 = dict(vocab_size=50257, context=1024, qkv_bias=True, bias=True, tie_weights=True, dropout=0.0)

# Named shapes. vocab_size=None means "take it from the data's tokenizer".
MODEL_PRESETS: dict[str, dict] = {
    # The write-up's 163M model: GPT-2 small's shape, untied head, no QKV bias, dropout 0.1.
    "gpt2-small-seed": dict(
        _GPT2, n_layer=12, n_head=12, n_embd=768, qkv_bias=False, tie_weights=False, dropout=0.1
    ),
    # OpenAI's GPT-2 family layouts (tied head, biases everywhere).
    "gpt2-124m": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    # Small enough to visibly learn in minutes on 2 CPU cores.
    "cpu-tiny": dict(
        vocab_size=None,
        context=128,
        n_layer=4,
        n_head=4,
        n_embd=128,
        dropout=0.0,
        qkv_bias=False,
        tie_weights=True,
    ),
    "cpu-small": dict(
        vocab_size=None,
        context=256,
        n_layer=6,
        n_head=6,
        n_embd=384,
        dropout=0.0,
        qkv_bias=False,
        tie_weights=True,
    ),
}

# The modern options together (as in modded-nanogpt / nanochat): rotary positions, RMSNorm,
# QK-norm, squared-ReLU MLP, an untied zero-initialised head, soft-capped logits, no biases.
# Not exportable to HF GPT-2 (see hf.exportable).
_MODERN = dict(
    pos_emb="rope",
    norm="rmsnorm",
    qk_norm=True,
    mlp_act="relu2",
    tie_weights=False,
    zero_init_head=True,
    logit_softcap=15.0,
    qkv_bias=False,
    bias=False,
    dropout=0.0,
)
MODEL_PRESETS.update(
    {
        # GPT-2 small's shape; vocabulary padded from 50257 to 50304 (a multiple of 128) for faster matmuls.
        "gpt2-small-modern": dict(MODEL_PRESETS["gpt2-124m"], **_MODERN, vocab_size=50304),
        # The twin of cpu-small.
        "cpu-small-modern": dict(MODEL_PRESETS["cpu-small"], **_MODERN),
    }
)
