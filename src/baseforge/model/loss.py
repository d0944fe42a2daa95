"""Output head + cross-entropy, fused and chunked, so the (tokens x vocab) logits never exist whole.

With GPT-2's 50,257-token vocabulary the logits of a batch are the largest tensor of a training
step (8 x 256 x 50257 floats = 400 MB in fp32), and the softmax over them, forward and backward,
costs more than the whole transformer body on a CPU. Here each chunk of rows computes its logits,
its softmax, its loss and, when gradients are needed, its gradients at once (the loss is the last
operation, so d loss / d logits = softmax - onehot is known in the forward pass); backward only
scales the stored gradients. Targets equal to IGNORE (-100) carry no loss; the loss is the mean over
the others.

Memory traffic is what this costs beyond the matmuls, so the chunk is touched as few times as
possible, all in the compute dtype: the matmul writes the logits into a reused buffer, one fused
softmax kernel overwrites them with probabilities, and those, minus one at each target, are the
gradient fed to the two backward matmuls. Under bf16 autocast nothing of the chunk's size is
ever cast to fp32 (the softmax kernel accumulates in fp32 internally). The loss of a row is
-log p[target]: in bf16 that carries a relative rounding of 2^-9 on p, 0.002 nats, far less than
the rounding autocast already applies to the logits themselves.

Nothing here waits for a GPU: masked rows are masked without asking whether there are any, and
rows whose target probability underflows are repaired with torch.where (`_repair_underflow`). On CPU,
where reading a tensor's value costs no sync, the cheaper host branches are kept.

Two exceptions. Under `torch.no_grad` (evaluation) only the loss is computed: no gradient matmuls.
Under fp16 autocast gradients formed in the forward would be rounded to fp16 before GradScaler's
loss scale reaches them, so there the gradients are formed in backward, scaled by grad_output,
at the price of recomputing the head matmul.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch

IGNORE = -100  # a target that carries no loss (a fine-tuning prompt's, padding); PyTorch's ignore_index

# Logits per chunk: 2^27 = 256 MB in bf16. A CPU micro-batch (e.g. 8 x 256 tokens x 50257) is
# then a single chunk: fewer, larger matmuls run faster, and the weight gradient is one matmul
# with one cast to fp32; on a GPU it bounds the memory of large micro-batches.
CHUNK_ELEMENTS = 1 << 27

_workspaces: dict[tuple, torch.Tensor] = {}


def _workspace(numel: int, dtype: torch.dtype, device: torch.device, slot: int = 0) -> torch.Tensor:
    """A flat buffer reused across calls on CPU, where every fresh allocation this large is mapped
    and page-faulted anew (measured: more than the softmax itself). CUDA's allocator caches already."""
    if device.type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    key = (dtype, slot)
    buf = _workspaces.get(key)
    if buf is None or buf.numel() < numel:
        buf = _workspaces[key] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def _exact_row_losses(hc, wc, targets, softcap: float) -> torch.Tensor:
    """lse - logit[target] in fp32, for the rare rows whose target probability underflowed to 0."""
    z = (hc @ wc.t()).float()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return torch.logsumexp(z, dim=-1) - z.gather(1, targets[:, None]).squeeze(1)


def host_reads_are_free(device: torch.device) -> bool:
    """A bool() of a CPU tensor reads host memory; on a GPU it waits for the device (a sync)."""
    return device.type == "cpu"


def _logit_at(hs, wc, index, softcap: float) -> torch.Tensor:
    """Each row's logit at `index` (fp32 dot products, no (rows x vocab) work)."""
    z = (hs.float() * wc[index].float()).sum(-1)
    return softcap * torch.tanh(z / softcap) if softcap else z


def _repair_underflow(losses, p, hs, wc, targets, softcap: float, host: bool) -> torch.Tensor:
    """Rows whose target probability underflowed to 0 (their loss is inf): the exact loss instead.

    On CPU the rare rows are found and recomputed. On a GPU that would be a sync per chunk, so every
    row gets a branch-free second value, lse - z[target] with lse = z[k] - log p[k] at the row's most
    likely token k (p[k] >= 1/vocab never underflows), and torch.where keeps it for the bad rows only:
    one extra read of the chunk, the other rows' losses unchanged."""
    bad = torch.isinf(losses)
    if host:
        if bool(bad.any()):
            losses[bad] = _exact_row_losses(hs[bad], wc, targets[bad], softcap)
        return losses
    p_max, k = p.max(dim=-1)
    lse = _logit_at(hs, wc, k, softcap) - p_max.float().log()
    return torch.where(bad, lse - _logit_at(hs, wc, targets, softcap), losses)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    device = h.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype


def _fused_pass(h, weight, targets, softcap: float, need_h: bool, need_w: bool):
    """Chunked loss (sum over valid rows, fp32) and, if asked, the row-summed grad_h and grad_w (fp32)."""
    dtype = _compute_dtype(h)
    hc, wc = h.to(dtype), weight.to(dtype)
    n, vocab = h.shape[0], weight.shape[0]
    valid = targets != IGNORE
    host = host_reads_are_free(h.device)
    all_valid = bool(valid.all()) if host else False  # on a GPU: mask always, no sync
    safe = targets.clamp(min=0)
    grad_h = torch.empty_like(h) if need_h else None
    grad_w_t = None
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    rows = max(1, min(n, CHUNK_ELEMENTS // vocab))
    buf = _workspace(rows * vocab, dtype, h.device)
    for start in range(0, n, rows):
        end = min(start + rows, n)
        hs, ts = hc[start:end], safe[start:end]
        z = torch.mm(hs, wc.t(), out=buf[: (end - start) * vocab].view(end - start, vocab))
        if softcap:  # z becomes t = tanh(z / cap), kept for the gradient; logits = cap * t
            t = z.div_(softcap).tanh_()
            p = torch.mul(t, softcap, out=_workspace(z.numel(), dtype, h.device, slot=1).view_as(z))
        else:
            p = z
        p = torch.softmax(p, dim=-1, out=p)  # in place: one kernel, fp32 accumulation inside
        at_target = (torch.arange(end - start, device=h.device), ts)
        losses = -p[at_target].float().log()
        if not all_valid:
            losses = losses.masked_fill(~valid[start:end], 0.0)
        losses = _repair_underflow(losses, p, hs, wc, ts, softcap, host)
        total += losses.sum()
        if not (need_h or need_w):
            continue
        p[at_target] -= 1  # p is now d(sum of row losses) / d logits
        if softcap:
            p.mul_(t.square_().neg_().add_(1))
        if grad_h is not None:  # need_h
            gh = p @ wc
            grad_h[start:end] = gh if all_valid else gh * valid[start:end, None]
        if need_w:  # as (C, V): this orientation of the matmul runs ~25% faster on oneDNN
            part = (hs if all_valid else hs * valid[start:end, None].to(dtype)).t() @ p
            grad_w_t = part.float() if grad_w_t is None else grad_w_t.add_(part)
    grad_w = None
    if need_w:
        assert grad_w_t is not None  # the loop ran: there are rows
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=h.device).copy_(grad_w_t.t())
    return total, grad_h, grad_w


def _scaled_grads(h, weight, targets, softcap: float, dtype, scale, need_h: bool, need_w: bool):
    """fp16's backward: recompute each chunk's logits, form (softmax - onehot) * scale in fp32 and only
    then round it to fp16 for the two matmuls. `scale` (grad_out / count) carries GradScaler's loss
    scale, so small gradients are lifted above fp16's underflow and an overflow shows up as inf for
    the scaler to skip: what autocast does for an unfused head. Costs one extra head matmul."""
    hc, wc = h.to(dtype), weight.to(dtype)
    n, vocab = h.shape[0], weight.shape[0]
    valid = (targets != IGNORE)[:, None]
    safe = targets.clamp(min=0)
    grad_h = torch.empty_like(h) if need_h else None
    grad_w_t = None
    rows = max(1, min(n, CHUNK_ELEMENTS // vocab))
    for start in range(0, n, rows):
        end = min(start + rows, n)
        hs = hc[start:end]
        z = (hs @ wc.t()).float()
        t = torch.tanh(z / softcap) if softcap else None
        g = torch.softmax(softcap * t if t is not None else z, dim=-1)
        g[torch.arange(end - start, device=h.device), safe[start:end]] -= 1
        if t is not None:  # softcap
            g *= 1 - t.square()
        g = (g * (scale * valid[start:end])).to(dtype)
        if grad_h is not None:  # need_h
            grad_h[start:end] = g @ wc
        if need_w:
            part = (hs.t() @ g).float()
            grad_w_t = part if grad_w_t is None else grad_w_t.add_(part)
    if not need_w:
        return grad_h, None
    assert grad_w_t is not None  # the loop ran: there are rows
    return grad_h, grad_w_t.t()


class FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, softcap: float):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.dtype, ctx.weight_dtype, ctx.softcap = _compute_dtype(h), weight.dtype, softcap
        # fp16: gradients formed here would be rounded to fp16 before GradScaler's scale reaches them
        # (tiny ones flush to zero, which no scale can undo); form them in backward instead.
        ctx.deferred = ctx.dtype == torch.float16
        total, grad_h, grad_w = _fused_pass(
            h, weight, targets, softcap, need_h and not ctx.deferred, need_w and not ctx.deferred
        )
        count = (targets != IGNORE).sum().clamp(min=1)
        if ctx.deferred:
            ctx.save_for_backward(count, h, weight, targets)
        else:  # stored as sums over rows; backward scales them by grad_out / count at once
            empty = torch.empty(0)
            ctx.save_for_backward(count, grad_h if need_h else empty, grad_w if need_w else empty)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if ctx.deferred:
            count, h, weight, targets = ctx.saved_tensors
            scale = grad_out.float() / count
            gh, gw = _scaled_grads(h, weight, targets, ctx.softcap, ctx.dtype, scale, need_h, need_w)
        else:
            count, grad_h, grad_w = ctx.saved_tensors
            scale = grad_out / count
            gh = grad_h * scale if need_h else None
            gw = grad_w * scale if need_w else None
        return gh, (gw.to(ctx.weight_dtype) if need_w else None), None, None


@torch.compiler.disable  # data-dependent Python control flow: a whole-model torch.compile calls it eagerly
def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float = 0.0
) -> torch.Tensor:
    """mean CE of softmax(softcap(h @ weight.T)) against targets; h (N, C), weight (V, C), targets (N,)."""
    if not torch.is_grad_enabled():
        # Inside forward grad mode is always off and needs_input_grad follows requires_grad, so
        # evaluation under no_grad would build both gradients: decide here, loss only.
        total, _, _ = _fused_pass(h, weight, targets, softcap, False, False)
        return total / (targets != IGNORE).sum().clamp(min=1)
    return FusedLinearCrossEntropy.apply(h, weight, targets, softcap)


@torch.no_grad()
def loss_sum(
    model, batches: Iterable, device, autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
) -> tuple[float, int]:
    """(sum of per-target losses, number of scored targets) of `model` over `batches` of (inputs, targets).

    The one definition of held-out loss: token-weighted over the scored targets (those not IGNORE),
    used by the trainer's validation and by `baseforge eval`.
    """
    total, count = 0.0, 0
    for x, y in batches:
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        n = int((y != IGNORE).sum())
        total += loss.item() * n
        count += n
    return total, count
