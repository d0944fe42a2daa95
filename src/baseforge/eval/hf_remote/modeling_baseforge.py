"""A baseforge GPT as a transformers causal LM (remote code: `trust_remote_code=True`).

Shipped by `baseforge export` for architectures transformers' GPT2LMHeadModel cannot express.
Depends only on torch and transformers and computes exactly what baseforge's `model/gpt.py` does:
pre-norm blocks (LayerNorm eps 1e-5 or RMSNorm eps 1e-6, computed in fp32), fused QKV projection,
optional per-head QK-norm applied before rotary embeddings, rotary embeddings that rotate the two
halves of each head (base `rope_base`, angles in fp32), causal attention scaled by 1/sqrt(head_dim),
a 4x MLP with tanh-GELU or squared ReLU, and logits soft-capped as cap * tanh(logits / cap) in fp32.
Optionally: attention only within a token's own document (a document starts at each `doc_token`)
and within the last `attn_window` positions, rotary positions restarting at each document, value
embeddings mixed into the values of the first and last `value_embeds` blocks (v = a*v + b*ve), and
U-net skips (block i's output, weighted, joins block L-1-i's input).
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
    def __init__(self, config: BaseforgeConfig, layer: int):
        super().__init__()
        self.config = config
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        if config.qk_norm:
            head_dim = config.n_embd // config.n_head
            self.q_norm = make_norm(config, head_dim)
            self.k_norm = make_norm(config, head_dim)
        if value_embed_of(config, layer) is not None:
            self.ve_mix = nn.Parameter(torch.full((2,), 0.5))

    def forward(self, x, rope=None, mask=None, ve=None):
        B, T, C = x.shape
        H = self.config.n_head
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        if ve is not None:
            v = self.ve_mix[0] * v + self.ve_mix[1] * ve.view(B, T, H, C // H).transpose(1, 2).type_as(v)
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


def value_embed_of(config: BaseforgeConfig, layer: int):
    """The value-embedding table block `layer` mixes in: the first N blocks take tables 0..N-1 and the
    last N blocks take them again in the same order (None: no table)."""
    n = getattr(config, "value_embeds", 0)
    if layer < n:
        return layer
    return layer - (config.n_layer - n) if n and layer >= config.n_layer - n else None


class Block(nn.Module):
    def __init__(self, config: BaseforgeConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, mask=None, ve=None):
        x = x + self.attn(self.ln_1(x), rope, mask, ve)
        return x + self.mlp(self.ln_2(x))


def attention_rule(config: BaseforgeConfig, input_ids: torch.Tensor, attention_mask):
    """(boolean attention mask (B, 1, T, T) or None for plain causal, positions (B, T)).

    Real tokens attend causally to real tokens (within their document and window where configured);
    a padding position attends to itself only, so its softmax is defined (its output is never used).
    Positions count real tokens only, from each document's start with `rope_doc_reset`.
    """
    B, T = input_ids.shape
    device = input_ids.device
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    padded = not bool(keep.all())
    positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    doc_token = getattr(config, "doc_token", None)
    starts = (input_ids == doc_token) & keep if doc_token is not None else torch.zeros_like(keep)
    if getattr(config, "rope_doc_reset", False):
        positions = positions - torch.where(starts, positions, torch.zeros_like(positions)).cummax(-1).values
    doc_mask, window = getattr(config, "attn_doc_mask", False), getattr(config, "attn_window", 0)
    if not (padded or doc_mask or window):
        return None, positions
    q, k = torch.arange(T, device=device)[:, None], torch.arange(T, device=device)[None]
    rule = (k <= q)[None].expand(B, T, T) & keep[:, None, :]
    if window:
        real = keep.long().cumsum(-1)  # distance in real tokens
        rule = rule & (real[:, :, None] - real[:, None, :] < window)
    if doc_mask:
        doc = starts.long().cumsum(-1)
        rule = rule & (doc[:, :, None] == doc[:, None, :])
    rule = rule | torch.eye(T, dtype=torch.bool, device=device)
    return rule[:, None], positions


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
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=make_norm(config, config.n_embd),
        )
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.context, config.n_embd)
        n_ve = getattr(config, "value_embeds", 0)
        if n_ve:
            modules["ve"] = nn.ModuleList(nn.Embedding(config.vocab_size, config.n_embd) for _ in range(n_ve))
        self.transformer = nn.ModuleDict(modules)
        if getattr(config, "unet_skips", False):
            self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2))
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

    def blocks(self, x, input_ids, rope, mask):
        n_layer = self.config.n_layer
        ves = [table(input_ids) for table in self.transformer.ve] if "ve" in self.transformer else []
        unet = getattr(self.config, "unet_skips", False)
        skips = []
        for i, block in enumerate(self.transformer.h):
            j = n_layer - 1 - i
            if unet and j < len(skips):
                x = x + self.skip_weights[j] * skips[j]
            table = value_embed_of(self.config, i)
            x = block(x, rope, mask, ves[table] if table is not None else None)
            if unet and i < n_layer // 2:
                skips.append(x)
        return x

    def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        B, T = input_ids.shape
        if T > self.config.context:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.config.context}")
        mask, positions = attention_rule(self.config, input_ids, attention_mask)
        x = self.transformer.wte(input_ids)
        rope = None
        if self.config.pos_emb == "learned":
            x = x + self.transformer.wpe(positions)
        else:
            cos, sin = rope_tables(self.config, positions)
            rope = (cos[:, None], sin[:, None])  # broadcast over heads
        x = self.blocks(x, input_ids, rope, mask)
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
