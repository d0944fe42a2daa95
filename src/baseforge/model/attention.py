"""Which earlier positions a token attends to, and the kernels that compute attention under that rule.

Always causal; optionally only within the token's own document (`attn_doc_mask`: a document starts
at each `doc_token`, the data's <|endoftext|>, so packed documents do not see each other) and only
within a sliding window of the last `attn_window` positions. `Visibility` holds the rule for one
forward pass, built once from the token ids on their device (no host sync) and shared by every layer.

Kernels: plain causal attention is PyTorch's fused SDPA, or explicit matmuls for bf16 on CPU up to
EXPLICIT_ATTENTION_MAX_LEN positions (measured faster there). A masked rule on CUDA uses FlexAttention
with a block mask, which skips the blocks nobody sees; elsewhere (the CPU, where FlexAttention has no
backward, or with attention dropout, which it lacks) the same boolean mask goes to SDPA, which beat
explicit matmuls with the mask on CPU even in bf16 (`benchmarks/bench_attention.py --masked`:
1.1-1.3x). `masked_backend` names the choice for the run's opening lines.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

# PyTorch's fused (flash) attention kernel for CPUs runs bf16 no faster than fp32, while plain bf16
# matmuls run 2x faster: up to about 512 positions, matmuls + softmax do forward and backward in
# about half the time of the fused kernel (benchmarks/results/train-throughput.md); from ~1024 on
# the fused kernel, which skips the masked half and never builds the T x T scores, wins.
EXPLICIT_ATTENTION_MAX_LEN = 512


def explicit_attention_is_faster(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.size(-2) <= EXPLICIT_ATTENTION_MAX_LEN


def explicit_attention(q, k, v, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, as SDPA computes it with is_causal=True."""
    T = q.size(-2)
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1)
    probs = torch.softmax(scores.masked_fill_(future, -torch.inf), dim=-1)
    if dropout:
        probs = F.dropout(probs, dropout)
    return probs @ v


def documents(ids: torch.Tensor, doc_token: int) -> torch.Tensor:
    """The document number of each position (B, T): a new document starts at each `doc_token`."""
    return (ids == doc_token).cumsum(-1)


def positions_in_document(ids: torch.Tensor, doc_token: int) -> torch.Tensor:
    """Each position's offset from its document's start (B, T); a window's first document starts at 0."""
    t = torch.arange(ids.size(-1), device=ids.device).expand_as(ids)
    starts = torch.where(ids == doc_token, t, torch.zeros_like(t)).cummax(-1).values
    return t - starts


@dataclass(frozen=True)
class Visibility:
    """The attention rule of one forward pass, shared by every layer.

    Queries are the `T` newest positions; keys are `past` cached positions plus those T.
    """

    past: int = 0
    doc: torch.Tensor | None = None  # (B, past + T) document numbers; None: all one document
    window: int = 0  # a query sees at most this many positions, itself included; 0: no limit
    block_mask: Any = None  # FlexAttention's BlockMask of the same rule, when that kernel is used
    mask: torch.Tensor | None = None  # `allowed(T)`, built once for every layer, when SDPA is used

    @property
    def causal_only(self) -> bool:
        return self.doc is None and not self.window

    def allowed(self, T: int, device) -> torch.Tensor:
        """(B or 1, 1, T, past + T) booleans, True where a query may attend to a key."""
        q = torch.arange(self.past, self.past + T, device=device)[:, None]
        k = torch.arange(self.past + T, device=device)[None]
        rule = k <= q
        if self.window:
            rule = rule & (q - k < self.window)
        rule = rule[None, None]
        if self.doc is not None:
            rule = rule & (self.doc[:, self.past :, None] == self.doc[:, None, :])[:, None]
        return rule


def flex_block_mask(doc: torch.Tensor | None, window: int, batch: int, T: int, device) -> Any:
    """FlexAttention's BlockMask for causal attention within documents and/or a window (built on
    the device: the rule is evaluated on block indices, no host sync)."""

    def rule(b, h, q, k):
        ok = q >= k
        if doc is not None:
            ok = ok & (doc[b, q] == doc[b, k])
        if window:
            ok = ok & (q - k < window)
        return ok

    return create_block_mask(rule, batch if doc is not None else None, None, T, T, device=device)


def use_flex(device_type: str, dropout: float) -> bool:
    """FlexAttention for a masked rule: on CUDA (compiled by Triton), where it has no dropout."""
    return device_type == "cuda" and dropout == 0


def masked_backend(device_type: str, dropout: float) -> str:
    """The kernel a document- or window-masked forward pass uses: flex or sdpa."""
    return "flex" if use_flex(device_type, dropout) else "sdpa"


BACKEND_NAMES = {
    "flex": "FlexAttention with a block mask (compiled)",
    "sdpa": "scaled_dot_product_attention with a boolean mask",
}


@functools.cache
def _compiled_flex():
    # Uncompiled FlexAttention builds the whole score matrix; compiled, it is a fused kernel.
    return torch.compile(flex_attention, dynamic=False)


def attend(q, k, v, vis: Visibility, dropout: float) -> torch.Tensor:
    """Attention of queries q (B, H, T, D) over keys/values k, v (B, H, past + T, D) under `vis`."""
    T = q.size(-2)
    if vis.causal_only and vis.past == 0:
        if explicit_attention_is_faster(q):
            return explicit_attention(q, k, v, dropout)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    if vis.causal_only and T == 1:  # one new token attends to everything before it
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    if vis.block_mask is not None and dropout == 0:
        return _compiled_flex()(q, k, v, block_mask=vis.block_mask)
    allowed = vis.mask if vis.mask is not None else vis.allowed(T, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
