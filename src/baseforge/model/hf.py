"""Weight mapping between baseforge's GPT and Hugging Face `transformers` `GPT2LMHeadModel`.

The module names already match; the only differences are that HF stores linear weights as
`Conv1D` (in_features, out_features), i.e. transposed, and always has a QKV bias (zeros when
baseforge has none). Works on state dicts so nothing here needs `transformers` installed.
"""

from __future__ import annotations

import torch

from baseforge.model.config import ModelConfig

_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_IGNORED_HF = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in older transformers;
# the leading dot matters: "c_attn.bias" (the real QKV bias) also ends with "attn.bias".


def exportable(config: ModelConfig) -> list[str]:
    """Reasons this architecture cannot be expressed as a standard GPT2LMHeadModel (empty = fine)."""
    reasons = []
    if config.pos_emb != "learned":
        reasons.append("rotary position embeddings (GPT-2 uses learned absolute positions)")
    if config.norm != "layernorm":
        reasons.append("RMSNorm (GPT-2 uses LayerNorm)")
    if config.qk_norm:
        reasons.append("QK-norm")
    if config.mlp_act != "gelu":
        reasons.append(f"{config.mlp_act} MLP activation (GPT-2 uses tanh-GELU)")
    if config.logit_softcap:
        reasons.append("logit soft-capping")
    if config.attn_doc_mask:
        reasons.append("attention within documents")
    if config.rope_doc_reset:
        reasons.append("rotary positions restarting at each document")
    if config.attn_window:
        reasons.append(f"sliding-window attention ({config.attn_window} positions)")
    if config.value_embeds:
        reasons.append(f"{config.value_embeds} value-embedding tables")
    if config.unet_skips:
        reasons.append("U-net skip connections")
    return reasons  # missing biases are fine: HF's zeros are exact


def hf_config_dict(config: ModelConfig, eot_id: int | None = None) -> dict:
    """The `transformers` GPT2Config fields for this model (as a plain dict).

    `eot_id` becomes bos/eos; by default GPT-2's <|endoftext|> (50256) when the vocabulary holds
    it, else none (a trained tokenizer's id is only known to the caller).
    """
    if eot_id is None and config.known_vocab_size > 50256:
        eot_id = 50256
    return dict(
        model_type="gpt2",
        architectures=["GPT2LMHeadModel"],
        vocab_size=config.vocab_size,
        n_positions=config.context,
        n_ctx=config.context,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=None,
        activation_function="gelu_new",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=config.tie_weights,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
    )


def config_from_hf(hf: dict) -> ModelConfig:
    """A baseforge ModelConfig from a GPT2Config dict (config.json)."""
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"not a GPT-2 model (model_type={hf.get('model_type')!r})")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"unsupported GPT-2 activation {act!r}")
    # Variants GPT-2's code allows but baseforge's blocks do not compute: refuse, never approximate.
    n_inner = hf.get("n_inner")
    if n_inner not in (None, 4 * hf["n_embd"]):
        raise ValueError(f"unsupported MLP width n_inner={n_inner} (baseforge uses 4 * n_embd)")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise ValueError(f"unsupported layer_norm_epsilon={hf['layer_norm_epsilon']} (baseforge uses 1e-5)")
    if hf.get("scale_attn_by_inverse_layer_idx", False) or not hf.get("scale_attn_weights", True):
        raise ValueError("unsupported attention scaling (baseforge uses 1/sqrt(head_dim))")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        context=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        dropout=0.0,
        qkv_bias=True,
        bias=True,
        tie_weights=hf.get("tie_word_embeddings", True),
    )


def to_hf_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """baseforge state dict -> GPT2LMHeadModel state dict (all tensors contiguous, untied copies).

    A tied head is left out, as `save_pretrained` does: `from_pretrained` re-ties it, and
    `load_state_dict` needs `strict=False` (the only missing key is then `lm_head.weight`).
    """
    reasons = exportable(config)
    if reasons:
        raise ValueError("cannot export as GPT-2: " + "; ".join(reasons))
    out = {}
    for name, tensor in state.items():
        if name.startswith("rope_"):
            continue
        if name == "lm_head.weight" and config.tie_weights:
            continue  # HF re-ties it to transformer.wte.weight
        out[name] = tensor.t().contiguous() if name.endswith(_TRANSPOSED) else tensor.clone()
    e = config.n_embd
    for i in range(config.n_layer):
        zero = next(iter(state.values())).new_zeros
        if not config.qkv_bias:
            out[f"transformer.h.{i}.attn.c_attn.bias"] = zero(3 * e)
        if not config.bias:
            for sub, n in (
                ("attn.c_proj", e),
                ("mlp.c_fc", 4 * e),
                ("mlp.c_proj", e),
                ("ln_1", e),
                ("ln_2", e),
            ):
                out[f"transformer.h.{i}.{sub}.bias"] = zero(n)
    if not config.bias:
        out["transformer.ln_f.bias"] = next(iter(state.values())).new_zeros(e)
    return out


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel state dict -> baseforge state dict for a model built with `config`.

    Biases that `config` lacks (qkv_bias/bias false, e.g. a re-imported export) are dropped when
    they are all zero, and refused otherwise.
    """
    out = {}
    for name, tensor in hf_state.items():
        if name.endswith(_IGNORED_HF):
            continue
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # bare GPT2Model checkpoints (OpenAI's `gpt2` repo) lack the prefix
        if name.endswith(".bias") and not _has_bias(name, config):
            if torch.count_nonzero(tensor):
                raise ValueError(f"checkpoint has a non-zero {name} but the config has no such bias")
            continue
        out[name] = tensor.t().contiguous() if name.endswith(_TRANSPOSED) else tensor
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    if config.tie_weights and not torch.equal(out["lm_head.weight"], out["transformer.wte.weight"]):
        raise ValueError("checkpoint has an untied output head but the config ties it")
    return out


def _has_bias(name: str, config: ModelConfig) -> bool:
    return config.qkv_bias if name.endswith("attn.c_attn.bias") else config.bias


# A remote-code export (eval/hf_export.py) writes these ModelConfig fields under their own names.
REMOTE_MODEL_TYPE = "baseforge_gpt"
REMOTE_KEYS = (
    "vocab_size", "context", "n_layer", "n_head", "n_embd", "qkv_bias", "bias", "tie_weights",
    "pos_emb", "norm", "qk_norm", "mlp_act", "logit_softcap", "rope_base",
)  # fmt: skip


# Keys a remote-code config.json may lack: an export made before these options existed has none of
# them, and its model is that of their defaults, so each is read only when present.
REMOTE_KEYS_OPTIONAL = (
    "attn_doc_mask",
    "rope_doc_reset",
    "attn_window",
    "value_embeds",
    "unet_skips",
    "doc_token",
)


def config_from_remote(hf: dict) -> ModelConfig:
    """The ModelConfig of a remote-code export's config.json (model_type baseforge_gpt)."""
    missing = [k for k in REMOTE_KEYS if k not in hf]
    if missing:
        raise ValueError(f"a {REMOTE_MODEL_TYPE} config without {', '.join(missing)}")
    keys = REMOTE_KEYS + tuple(k for k in REMOTE_KEYS_OPTIONAL if k in hf)
    return ModelConfig(**{k: hf[k] for k in keys})
