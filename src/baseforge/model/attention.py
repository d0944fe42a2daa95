"""Which earlier positions a token attends to, and the kernels that compute attention under that rule.

Always causal; optionally only within the token's own document (`attn_doc_mask`: a document starts
at each `doc_token`, the data's <|endoftext|>, so packed documents do not see each other) and only
within a sliding window of the last `attn_window` positions. `Visibility` holds the rule for one
forward pass, built once from the token ids on their device (no host sync) and shared by every layer;
every tensor the rule reads (document numbers, a window warmup's window: `window_tensor`) is on the
model's device.

Kernels: plain causal attention is PyTorch's fused SDPA, or explicit matmuls for bf16 on CPU up to
EXPLICIT_ATTENTION_MAX_LEN positions (measured faster there). A masked rule in a CUDA training forward
uses FlexAttention with a block mask, which skips the blocks nobody sees; it is compiled once per
training shape (`FlexKernel`: at most FLEX_COMPILE_LIMIT of them, and a compile that fails falls back
to SDPA with the mask, saying so once). Evaluation, sampling and scoring (no gradient) never compile:
on CUDA they take SDPA with the boolean mask. On the CPU, where FlexAttention has no backward, a
forward whose every document (and window) fits in a band of at most T * BAND_MAX_FRACTION positions
attends in blocks of that band, each query block to its own and the previous key block (`banded`:
the work of 2 x band keys per query instead of T, in plain matmuls); otherwise, and with attention
dropout on CUDA, the boolean mask goes to SDPA (`benchmarks/bench_attention.py --masked` measured all
three). Choosing the band reads the longest document from the tokens: a host sync, free on the CPU.
`masked_backend` names the choice for the run's opening lines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from baseforge.errors import is_oom

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


# A masked rule on the CPU takes the banded kernel when its band (the longest document, or the window)
# is at most this fraction of the sequence: from there, 2 x band keys per query are no fewer than SDPA's
# T in a kernel that is not faster per key (benchmarks/results/attention-masked.md).
BAND_MAX_FRACTION = 0.25
BAND_QUANTUM = 32  # the band is rounded up to a multiple of this many positions


def band_for(doc: torch.Tensor | None, window: int, T: int) -> int:
    """The banded kernel's block (0: use the dense mask): the most keys a query of this rule can see,
    rounded up to BAND_QUANTUM, when it is at most T * BAND_MAX_FRACTION. Reads the documents' lengths
    back to the host (a sync: for the CPU only)."""
    longest = T
    if doc is not None:  # a document's positions are consecutive: its length is how often its number occurs
        counts = torch.zeros(doc.size(0), T + 1, dtype=torch.long, device=doc.device)
        longest = int(counts.scatter_add_(1, doc - doc[:, :1], torch.ones_like(doc)).max())
    need = min(longest, window) if window else longest
    block = -(-need // BAND_QUANTUM) * BAND_QUANTUM
    return block if block <= T * BAND_MAX_FRACTION else 0


def banded_attention(q, k, v, doc: torch.Tensor | None, window: int, block: int, dropout: float = 0.0):
    """Attention under the causal / document / window rule where no query sees more than `block` keys:
    queries in blocks of `block` positions, each against its own key block and the one before (every
    key it may see is there), masked by the rule; matmuls and a softmax, like explicit_attention."""
    B, H, T, D = q.shape
    n = -(-T // block)
    pad = n * block - T
    if pad:  # padded keys have a document of their own (-1): no real query sees them
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        doc = F.pad(doc, (0, pad), value=-1) if doc is not None else None

    def with_previous(t, fill=0.0):  # (..., n, block, ...) -> (..., n, 2 * block, ...)
        return torch.cat([F.pad(t, (0, 0, 0, 0, 1, 0), value=fill)[:, :, :-1], t], dim=3)

    qb = q.view(B, H, n, block, D)
    kb, vb = (with_previous(t.view(B, H, n, block, D)) for t in (k, v))
    qpos = torch.arange(n * block, device=q.device).view(n, block)
    kpos = torch.cat([qpos - block, qpos], dim=1)
    rule = (kpos[:, None, :] <= qpos[:, :, None]) & (kpos[:, None, :] >= 0)  # (n, block, 2 * block)
    if window:
        rule = rule & (qpos[:, :, None] - kpos[:, None, :] < window)
    if doc is not None:
        dq = doc.view(B, 1, n, block, 1)
        dk = with_previous(doc.view(B, 1, n, block, 1), fill=-2).view(B, 1, n, 1, 2 * block)
        rule = rule & (dq == dk)
    scores = (qb * D**-0.5) @ kb.transpose(-2, -1)
    probs = torch.softmax(scores.masked_fill_(~rule, -torch.inf), dim=-1)
    if dropout:
        probs = F.dropout(probs, dropout)
    return (probs @ vb).view(B, H, n * block, D)[:, :, :T]


@dataclass(frozen=True)
class Visibility:
    """The attention rule of one forward pass, shared by every layer.

    Queries are the `T` newest positions; keys are `past` cached positions plus those T.
    """

    past: int = 0
    doc: torch.Tensor | None = None  # (B, past + T) document numbers; None: all one document
    # A query sees at most this many positions, itself included; 0: no limit. A 0-dim tensor (a window
    # warmup's, in training) is a limit whatever its value: compiled, one graph serves every size.
    window: int | torch.Tensor = 0
    block_mask: Any = None  # FlexAttention's BlockMask of the same rule, when that kernel is used
    mask: torch.Tensor | None = None  # `allowed(T)`, built once for every layer, when SDPA is used
    band: int = 0  # the banded kernel's block, when it is used (band_for)

    @property
    def windowed(self) -> bool:
        return is_windowed(self.window)

    @property
    def causal_only(self) -> bool:
        return self.doc is None and not self.windowed

    def allowed(self, T: int, device) -> torch.Tensor:
        """(B or 1, 1, T, past + T) booleans, True where a query may attend to a key."""
        q = torch.arange(self.past, self.past + T, device=device)[:, None]
        k = torch.arange(self.past + T, device=device)[None]
        rule = k <= q
        if self.windowed:
            rule = rule & (q - k < self.window)
        rule = rule[None, None]
        if self.doc is not None:
            rule = rule & (self.doc[:, self.past :, None] == self.doc[:, None, :])[:, None]
        return rule


def is_windowed(window: int | torch.Tensor) -> bool:
    """Does `window` limit attention? A tensor always does (its value is data, not read here)."""
    return isinstance(window, torch.Tensor) or window > 0


def visibility(
    ids: torch.Tensor,
    past: int,
    window: int | torch.Tensor,
    doc_token: int | None,
    dropout: float = 0.0,
    training: bool = False,
) -> Visibility:
    """The attention rule for a forward over `ids` (all positions so far) whose last ones are new, with
    what its kernel needs built once for every layer: documents start at `doc_token` (None: one
    document); a window given as a tensor (a window warmup's) is a rule whatever its value, so a
    compiled model runs every size through one graph, while an int is read here."""
    if isinstance(window, int) and window >= ids.size(1):
        window = 0  # a window as long as the sequence limits nothing
    if doc_token is None and not is_windowed(window):
        return Visibility(past=past)
    doc = documents(ids, doc_token) if doc_token is not None else None
    backend = masked_backend(ids.device.type, dropout, training)
    if past == 0 and backend == "flex":
        block = flex_block_mask(doc, window, ids.size(0), ids.size(1), ids.device)
        return Visibility(past=0, doc=doc, window=window, block_mask=block)
    # The band is read from the data (a host sync, free on the CPU); compiled, the mask keeps one graph.
    if past == 0 and backend == "band" and not torch.compiler.is_compiling():
        band = band_for(doc, int(window), ids.size(1))
        if band:
            return Visibility(past=0, doc=doc, window=int(window), band=band)
    mask = Visibility(past=past, doc=doc, window=window).allowed(ids.size(1) - past, ids.device)
    return Visibility(past=past, doc=doc, window=window, mask=mask)


def window_tensor(size: int, device) -> torch.Tensor:
    """A window warmup's window as the model takes it: a 0-dim int64 tensor on the model's device. Data,
    not a constant (a compiled model runs every size through one graph), and on the device because
    FlexAttention's compiled kernel reads what its mask captures through device pointers."""
    return torch.tensor(size, dtype=torch.int64, device=device)


def flex_block_mask(doc: torch.Tensor | None, window: int | torch.Tensor, batch: int, T: int, device) -> Any:
    """FlexAttention's BlockMask for causal attention within documents and/or a window (built on
    the device: the rule is evaluated on block indices, no host sync)."""
    windowed = is_windowed(window)

    def rule(b, h, q, k):
        ok = q >= k
        if doc is not None:
            ok = ok & (doc[b, q] == doc[b, k])
        if windowed:
            ok = ok & (q - k < window)
        return ok

    return create_block_mask(rule, batch if doc is not None else None, None, T, T, device=device)


def use_flex(device_type: str, dropout: float, training: bool = True) -> bool:
    """FlexAttention for a masked rule: in a training forward on CUDA (compiled by Triton), where it
    has no dropout. Other forwards (evaluation, sampling, scoring) would each compile for their own
    shapes; they take SDPA with the mask instead."""
    return device_type == "cuda" and dropout == 0 and training


def masked_backend(device_type: str, dropout: float, training: bool = True) -> str:
    """The kernel a document- or window-masked forward pass uses: flex, band (the CPU) or sdpa."""
    if use_flex(device_type, dropout, training):
        return "flex"
    return "band" if device_type == "cpu" else "sdpa"


BACKEND_NAMES = {
    "flex": "FlexAttention with a block mask (compiled; evaluation and sampling: SDPA with the mask)",
    "band": (
        f"banded matmuls when every document and the window fit in {BAND_MAX_FRACTION:.0%} of the "
        "sequence, else scaled_dot_product_attention with a boolean mask"
    ),
    "sdpa": "scaled_dot_product_attention with a boolean mask",
}

# Distinct (shape, dtype, rule) keys FlexAttention compiles for in one process: the micro-batch
# search's trials, then each training micro-batch size with and without a window warmup's window.
# Dynamo's own default (8 per function) would be reached by a search on a large GPU plus a batch
# schedule, after which it runs flex uncompiled: the whole (B, H, T, T) score tensor, per layer.
FLEX_COMPILE_LIMIT = 16


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class FlexKernel:
    """FlexAttention compiled by `torch.compile(kernel, dynamic=False)`, once per distinct key (shapes,
    dtype, grad mode, the rule's kind), at most `limit` keys; past the limit, or once a compile has
    failed, `__call__` returns None and the caller takes SDPA with the mask. `compiles` counts the
    keys compiled so far. Inside a compiled model Dynamo traces flex_attention itself (no wrapper)."""

    def __init__(
        self, kernel: Callable = flex_attention, backend: Any = "inductor", limit: int = FLEX_COMPILE_LIMIT
    ):
        self.kernel, self.backend, self.limit = kernel, backend, limit
        self.keys: set[tuple] = set()
        self.compiled: Callable | None = None
        self.broken = ""  # why flex is off for this process ("" while it works)

    @property
    def compiles(self) -> int:
        return len(self.keys)

    def __call__(self, q, k, v, vis: Visibility) -> torch.Tensor | None:
        if torch.compiler.is_compiling():
            return flex_attention(q, k, v, block_mask=vis.block_mask)
        if self.broken:
            return None
        key = _flex_key(q, k, vis)
        if key not in self.keys and len(self.keys) >= self.limit:
            self._off(f"its {self.limit} compiled shapes are used up (a new one: {key[:2]})")
            return None
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.kernel, backend=self.backend, dynamic=False)
            with torch._dynamo.config.patch(recompile_limit=self.limit + 1):
                out = self.compiled(q, k, v, block_mask=vis.block_mask)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the masked SDPA still runs
            if is_oom(exc):
                raise  # an answer for the micro-batch search, not a broken compiler
            self._off(f"it failed to compile ({_first_line(exc)})")
            return None
        self.keys.add(key)
        return out

    def _off(self, why: str) -> None:
        self.broken = why
        _say(
            f"warning: FlexAttention is off for the rest of this process: {why}; attention takes "
            "scaled_dot_product_attention with the mask (the same result, more memory and time)"
        )


def _first_line(exc: BaseException) -> str:
    """'Type: first line' of the error a compiler failure wraps (Dynamo's BackendCompilerFailed)."""
    while getattr(exc, "inner_exception", None) or exc.__cause__:
        exc = getattr(exc, "inner_exception", None) or exc.__cause__  # type: ignore[assignment]
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _flex_key(q, k, vis: Visibility) -> tuple:
    """What a compile of flex is specialised to: an int window is a constant in the graph, a tensor
    window is data (one graph for every size)."""
    window = "tensor" if isinstance(vis.window, torch.Tensor) else int(vis.window)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    return (tuple(q.shape), tuple(k.shape), q.dtype, grad, window, vis.doc is None)


FLEX = FlexKernel()  # the process's one: its keys are Dynamo's cache entries for flex_attention


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
        out = FLEX(q, k, v, vis)
        if out is not None:
            return out
    if vis.band:
        return banded_attention(q, k, v, vis.doc, int(vis.window), vis.band, dropout)
    allowed = vis.mask if vis.mask is not None else vis.allowed(T, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
