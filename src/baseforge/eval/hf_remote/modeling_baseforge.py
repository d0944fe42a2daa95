"""A baseforge GPT as a transformers causal LM (remote code: `trust_remote_code=True`).

Shipped by `baseforge export` for architectures transformers' GPT2LMHeadModel cannot express.
Depends only on torch and transformers and computes exactly what baseforge's `model/gpt.py` does:
pre-norm blocks (LayerNorm eps 1e-5 or RMSNorm eps 1e-6, computed in fp32), fused QKV projection,
optional per-head QK-norm applied before rotary embeddings, rotary embeddings that rotate the two
halves of each head (base `rope_base`, angles in fp32), causal attention scaled by 1/sqrt(head_dim),
a 4x MLP with tanh-GELU or squared ReLU, and logits soft-capped as cap * tanh(logits / cap) in fp32.
Parameter names are baseforge's own (`transformer.h.0.attn.c_attn.weight`, ...).

Generation recomputes the whole prefix each step (no KV cache): simple, exact, and cheap at these
context lengths.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel, __version__
from transformers.modeling_outputs import CausalLMOutput

from .configuration_baseforge import BaseforgeConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.size(-1),), self.weight, self.eps).type_as(x)


def make_norm(config: BaseforgeConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.rms_norm_eps)
    return nn.LayerNorm(dim, eps=config.layer_norm_eps, bias=config.bias)


def rope_tables(config: BaseforgeConfig, positions: torch.Tensor):
    """cos, sin of shape positions.shape + (head_dim / 2,); computed on the CPU as baseforge does."""
    half = config.n_embd // config.n_head // 2
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(half, dtype=torch.float32) / half))
    angles = positions.cpu().float().unsqueeze(-1) * inv_freq
    return angles.cos().to(positions.device), angles.sin().to(positions.device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: BaseforgeConfig):
        super().__init__()
        self.config = config
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        if config.qk_norm:
            head_dim = config.n_embd // config.n_head
            self.q_norm = make_norm(config, head_dim)
            self.k_norm = make_norm(config, head_dim)

    def forward(self, x, rope=None, mask=None):
        B, T, C = x.shape
        H = self.config.n_head
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: BaseforgeConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.relu2 = config.mlp_act == "relu2"

    def forward(self, x):
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh")
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, config: BaseforgeConfig):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, mask=None):
        x = x + self.attn(self.ln_1(x), rope, mask)
        return x + self.mlp(self.ln_2(x))


def padding_mask(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(boolean attention mask (B, 1, T, T), positions (B, T)) for a left- or right-padded batch.

    Real tokens attend causally to real tokens; a padding position attends to itself only, so its
    softmax is defined (its output is never used). Positions count real tokens only.
    """
    keep = attention_mask.bool()
    T = keep.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=keep.device).tril()
    mask = causal & keep[:, None, None, :]
    mask = mask | torch.eye(T, dtype=torch.bool, device=keep.device)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return mask, positions


class BaseforgePreTrainedModel(PreTrainedModel):
    config_class = BaseforgeConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # Only reached for weights a checkpoint lacks; baseforge's own initialisation.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class BaseforgeForCausalLM(BaseforgePreTrainedModel, GenerationMixin):
    # transformers 5 maps tied names to their source; 4.x lists them (tied when tie_word_embeddings).
    if int(__version__.split(".")[0]) >= 5:
        _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    else:
        _tied_weights_keys = ["lm_head.weight"]  # type: ignore[assignment]  # 4.x's type; 5 declares a dict

    def __init__(self, config: BaseforgeConfig):
        super().__init__(config)
        modules = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=make_norm(config, config.n_embd),
        )
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.context, config.n_embd)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # No KV cache: every step sees the whole sequence so far.
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        B, T = input_ids.shape
        if T > self.config.context:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.config.context}")
        mask = None
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        if attention_mask is not None and not bool(attention_mask.all()):
            mask, positions = padding_mask(attention_mask)
        x = self.transformer.wte(input_ids)
        rope = None
        if self.config.pos_emb == "learned":
            x = x + self.transformer.wpe(positions)
        else:
            cos, sin = rope_tables(self.config, positions)
            rope = (cos[:, None], sin[:, None])  # broadcast over heads
        for block in self.transformer.h:
            x = block(x, rope, mask)
        logits = self.lm_head(self.transformer.ln_f(x))
        if self.config.logit_softcap:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits.float() / cap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return CausalLMOutput(loss=loss, logits=logits)
