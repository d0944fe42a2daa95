"""A GPT-2-style decoder-only transformer, with switchable modern options.

Module names follow OpenAI's GPT-2 checkpoint (`transformer.h.0.attn.c_attn`, ...) so that the
weights map 1:1 onto Hugging Face's `GPT2LMHeadModel` (see `hf.py`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from baseforge.model.attention import Visibility, attend, positions_in_document, visibility
from baseforge.model.config import ModelConfig
from baseforge.model.loss import linear_cross_entropy

if TYPE_CHECKING:

    class Transformer(nn.ModuleDict):
        """GPT.transformer's modules, typed (nn.ModuleDict's attributes are Tensor | Module to a checker)."""

        wte: nn.Embedding
        wpe: nn.Embedding  # only with pos_emb = "learned"
        ve: nn.ModuleList  # only with value_embeds > 0
        drop: nn.Dropout
        h: nn.ModuleList  # the blocks
        ln_f: nn.Module


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 whatever autocast does (a bf16 input with fp32 weights has no fused kernel).
        return F.rms_norm(x.float(), (x.size(-1),), self.weight, self.eps).type_as(x)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.n_embd
    if config.norm == "rmsnorm":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, eps=1e-5, bias=config.bias)


class KVCache:
    """Keys and values of past positions, per layer, so each new token costs one position."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, config.n_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        # The token ids so far: documents and in-document positions are recomputed from them.
        self.ids = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.max_len = max_len
        self.pos = 0  # positions filled so far; advanced by GPT.forward after all layers ran

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > {self.max_len}")
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def rope_tables(config: ModelConfig, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(half, device=device, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); rotate the two halves of each head as complex pairs.
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.config = config
        self.layer = layer
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # GPT-2 init: scale residual projections by depth. (torch types Module.__setattr__'s value as
        # Tensor | Module; any value works.)
        self.c_proj.residual_scale = True  # type: ignore[assignment]
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = make_norm(config, config.head_dim)
            self.k_norm = make_norm(config, config.head_dim)
        if value_embed_of(config, layer) is not None:
            # modded-nanogpt's learned mix: v = a * v + b * ve, both starting at 0.5
            self.ve_mix = nn.Parameter(torch.full((2,), 0.5))

    def forward(self, x, rope, vis: Visibility, cache: KVCache | None = None, ve=None):
        B, T, C = x.shape
        H, D = self.config.n_head, self.config.head_dim
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        if ve is not None:  # value embeddings: the token's own row, mixed into the values
            v = self.ve_mix[0] * v + self.ve_mix[1] * ve.view(B, T, H, D).transpose(1, 2).type_as(v)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)  # a cache of another dtype (e.g. under autocast)
        y = attend(q, k, v, vis, self.config.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True  # type: ignore[assignment]  # as in CausalSelfAttention
        self.relu2 = config.mlp_act == "relu2"
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, vis: Visibility, cache=None, ve=None):
        x = x + self.attn(self.ln_1(x), rope, vis, cache, ve)
        return x + self.mlp(self.ln_2(x))


def value_embed_of(config: ModelConfig, layer: int) -> int | None:
    """Which value-embedding table block `layer` mixes in (None: none): with N tables, the first N
    blocks take tables 0..N-1 and the last N blocks take them again, in the same order."""
    n, last = config.value_embeds, config.n_layer - config.value_embeds
    if layer < n:
        return layer
    return layer - last if n and layer >= last else None


class GPT(nn.Module):
    rope_cos: torch.Tensor  # buffers, with pos_emb = "rope"
    rope_sin: torch.Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        vocab = config.known_vocab_size
        wte = nn.Embedding(vocab, config.n_embd)
        modules = dict(
            wte=wte,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=make_norm(config),
        )
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.context, config.n_embd)
        if config.value_embeds:
            modules["ve"] = nn.ModuleList(
                nn.Embedding(vocab, config.n_embd) for _ in range(config.value_embeds)
            )
        self.transformer = cast("Transformer", nn.ModuleDict(modules))
        if config.unet_skips:  # block i's output joins block L-1-i's input, weighted (starting at 1)
            self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2))
        self.lm_head = nn.Linear(config.n_embd, vocab, bias=False)
        if config.tie_weights:
            self.lm_head.weight = wte.weight
        if config.pos_emb == "rope":
            # On the default device, so that a model built on the meta device allocates nothing.
            cos, sin = rope_tables(config, config.context, None)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        if config.zero_init_head:
            nn.init.zeros_(self.lm_head.weight)

    def reset_buffers(self, device) -> None:
        """Recompute the non-persistent buffers (RoPE tables) on `device`: after `to_empty` from meta."""
        if self.config.pos_emb == "rope":
            self.rope_cos, self.rope_sin = rope_tables(self.config, self.config.context, device)

    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, nn.Linear):
            if getattr(module, "residual_scale", False):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    @staticmethod
    def count_params(config: ModelConfig) -> int:
        """num_params() of the model `config` describes, without allocating it (built on the meta device)."""
        with torch.device("meta"):
            return GPT(config).num_params()

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied head counts once); without the lookup tables if asked (token and
        position embeddings, value embeddings)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if "ve" in self.transformer:
                n -= sum(p.numel() for p in self.transformer.ve.parameters())
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        window: int | torch.Tensor | None = None,
    ):
        """(logits, None) without targets; (None, mean cross-entropy) with them.

        With targets the output head and the loss are fused so the logits are never built whole;
        targets equal to loss.IGNORE (-100) carry no loss (used to mask prompts when fine-tuning).
        With `cache`, `idx` holds only the new positions; the cache supplies the rest. `window`
        overrides attn_window (a window warmup in training, as a 0-dim tensor: see `visibility`).
        """
        ids, start = self.history(idx, cache)
        vis = self.visibility(ids, start, self.config.attn_window if window is None else window)
        x, rope = self.embed(idx, ids, start)
        x = self.blocks(self.transformer.drop(x), idx, rope, vis, cache)
        if cache is not None:
            cache.pos += idx.size(1)
        return self.head(self.transformer.ln_f(x), targets)

    def history(self, idx: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, int]:
        """Every token id so far (the cache's and `idx`), and where `idx` starts among them."""
        start = cache.pos if cache is not None else 0
        if start + idx.size(1) > self.config.context:
            raise ValueError(
                f"sequence of {start + idx.size(1)} tokens exceeds the context of {self.config.context}"
            )
        if cache is None:
            return idx, start
        cache.ids[:, start : start + idx.size(1)] = idx
        return cache.ids[:, : start + idx.size(1)], start

    def embed(self, idx: torch.Tensor, ids: torch.Tensor, start: int):
        """Token embeddings of the new positions, with learned positions added, or the rotary tables
        for them (by position in the window, or in the document with rope_doc_reset)."""
        x = self.transformer.wte(idx)
        T = idx.size(1)
        if self.config.pos_emb == "learned":
            return x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device)), None
        if self.config.rope_doc_reset:
            pos = positions_in_document(ids, self.config.known_doc_token())[:, start:]
            return x, (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])  # (B, 1, T, D/2)
        return x, (self.rope_cos[start : start + T], self.rope_sin[start : start + T])

    def head(self, x: torch.Tensor, targets: torch.Tensor | None):
        """(logits, None), or with targets (None, loss) through the fused head + loss (see loss.py)."""
        if targets is not None:
            loss = linear_cross_entropy(
                x.flatten(0, 1), self.lm_head.weight, targets.reshape(-1), self.config.logit_softcap
            )
            return None, loss
        logits = self.lm_head(x)
        if self.config.logit_softcap:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits.float() / cap)
        return logits, None

    def blocks(self, x, idx, rope, vis: Visibility, cache) -> torch.Tensor:
        """The transformer blocks in order, with value embeddings and U-net skips where configured."""
        c = self.config
        ves = [table(idx) for table in self.transformer.ve] if c.value_embeds else []
        skips: list[torch.Tensor] = []  # the outputs of the first n_layer // 2 blocks
        for i, block in enumerate(self.transformer.h):
            j = c.n_layer - 1 - i  # the block whose output joins this one's input
            if c.unet_skips and j < len(skips):
                x = x + self.skip_weights[j] * skips[j]
            table = value_embed_of(c, i)
            x = block(x, rope, vis, cache, ves[table] if table is not None else None)
            if c.unet_skips and i < c.n_layer // 2:
                skips.append(x)
        return x

    def visibility(self, ids: torch.Tensor, past: int, window: int | torch.Tensor) -> Visibility:
        """The attention rule of a forward over `ids` whose last positions are new (attention.py picks
        the kernel: FlexAttention in CUDA training, the band or SDPA with the mask otherwise)."""
        c = self.config
        doc_token = c.known_doc_token() if c.attn_doc_mask else None
        return visibility(ids, past, window, doc_token, dropout=c.dropout if self.training else 0.0,
                          training=self.training and torch.is_grad_enabled())  # fmt: skip

    def flops_per_token(self, window: int | None = None) -> float:
        """Training FLOPs per token: 6N for the matmul weights plus attention scores (PaLM, appendix B).

        Embedding lookups are not matmuls, so an untied token embedding, the position embedding and
        value embeddings are left out of N; a tied embedding counts once, as the output head. The
        attention term counts every key a query may see in a full window, as PaLM counts the context:
        `window` of them (a window warmup's step), else `attn_window` when set, else the context.
        Document masking is not subtracted (how much it skips depends on the data, and only
        FlexAttention skips it), so with attn_doc_mask this is the work of the causal model and MFU
        reads high by up to the attention term's share of the whole.
        """
        c = self.config
        n = self.num_params(exclude_embeddings=True)
        if c.tie_weights:
            n += self.lm_head.weight.numel()
        return 6 * n + self.attention_flops_per_token(window)

    def attention_flops_per_token(self, window: int | None = None) -> float:
        c = self.config
        window = window or c.attn_window
        keys = min(window, c.context) if window else c.context
        return 12 * c.n_layer * c.n_embd * keys
