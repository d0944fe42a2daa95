"""Output head + cross-entropy, fused and chunked, so the (tokens x vocab) logits never exist whole.

With GPT-2's 50,257-token vocabulary the logits of a batch are the largest tensor of a training
step (8 x 256 x 50257 floats = 400 MB in fp32), and the softmax over them, forward and backward,
costs more than the whole transformer body on a CPU. Here each chunk of rows computes its logits,
its softmax, its loss and, when gradients are needed, its gradients at once (the loss is the last
operation, so d loss / d logits = softmax - onehot is known in the forward pass); backward only
scales the stored gradients. Targets equal to -100 carry no loss; the loss is the mean over the others.

Memory traffic is what this costs beyond the matmuls, so the chunk is touched as few times as
possible, all in the compute dtype: the matmul writes the logits into a reused buffer, one fused
softmax kernel overwrites them with probabilities, and those, minus one at each target, are the
gradient fed to the two backward matmuls. Under bf16 autocast nothing of the chunk's size is
ever cast to fp32 (the softmax kernel accumulates in fp32 internally). The loss of a row is
-log p[target]: in bf16 that carries a relative rounding of 2^-9 on p, 0.002 nats, far less than
the rounding autocast already applies to the logits themselves.
"""

from __future__ import annotations

import torch

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


class FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, softcap: float):
        dtype = (
            torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        )
        hc, wc = h.to(dtype), weight.to(dtype)
        n, vocab = h.shape[0], weight.shape[0]
        valid = targets != -100
        all_valid = bool(valid.all())
        safe = targets.clamp(min=0)
        count = valid.sum().clamp(min=1)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = grad_w_t = None
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
            bad = torch.isinf(losses)
            if bool(bad.any()):
                losses[bad] = _exact_row_losses(hs[bad], wc, ts[bad], softcap)
            total += losses.sum()
            if not (need_h or need_w):
                continue
            p[at_target] -= 1  # p is now d(sum of row losses) / d logits
            if softcap:
                p.mul_(t.square_().neg_().add_(1))
            if need_h:
                gh = p @ wc
                grad_h[start:end] = gh if all_valid else gh * valid[start:end, None]
            if need_w:  # as (C, V): this orientation of the matmul runs ~25% faster on oneDNN
                part = (hs if all_valid else hs * valid[start:end, None].to(dtype)).t() @ p
                grad_w_t = part.float() if grad_w_t is None else grad_w_t.add_(part)
        if need_w:
            grad_w = torch.empty(weight.shape, dtype=torch.float32, device=h.device).copy_(grad_w_t.t())
        # Gradients are stored as sums over rows; backward scales them by grad_out / count at once.
        ctx.save_for_backward(count, *(x if x is not None else torch.empty(0) for x in (grad_h, grad_w)))
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        count, grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / count
        gh = grad_h * scale if ctx.needs_input_grad[0] else None
        gw = (grad_w * scale).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None


@torch.compiler.disable  # data-dependent Python control flow: a whole-model torch.compile calls it eagerly
def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float = 0.0
) -> torch.Tensor:
    """mean CE of softmax(softcap(h @ weight.T)) against targets; h (N, C), weight (V, C), targets (N,)."""
    return FusedLinearCrossEntropy.apply(h, weight, targets, softcap)
