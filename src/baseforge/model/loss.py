"""Output head + cross-entropy, fused and chunked, so the (tokens x vocab) logits never exist whole.

With GPT-2's 50,257-token vocabulary the logits of a batch are the largest tensor of a training
step (8 x 256 x 50257 floats = 400 MB in fp32), and the softmax over them, forward and backward,
costs more than the whole transformer body on a CPU. Here each chunk of rows computes its logits,
its log-sum-exp, its loss and, when gradients are needed, its gradients at once (the loss is the
last operation, so d loss / d logits = softmax - onehot is known in the forward pass); backward
only scales the stored gradients. The same matmuls run, in the autocast dtype, but the big tensor
is gone. Targets equal to -100 carry no loss; the loss is the mean over the others.

The per-chunk softmax works in place, in as few passes over memory as eager PyTorch allows.
(A torch.compile'd version of it measured no faster inside a real training step on this CPU:
benchmarks/results/train-throughput.md.)
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 25  # logits per chunk: 32M floats = 128 MB (fewer, larger matmuls run faster)


def _chunk_eager(z, safe, valid, softcap: float, need_grad: bool):
    """(sum of losses, d loss_sum / d logits in z's dtype or None) for one chunk of logits z."""
    z = z.float()
    if softcap:
        t = torch.tanh(z / softcap)
        z = softcap * t
    target_logit = z.gather(1, safe[:, None]).squeeze(1)
    peak = z.amax(dim=-1, keepdim=True)
    e = z.sub_(peak).exp_()  # one exp pass, in place: its row sums give both lse and softmax
    sums = e.sum(dim=-1, keepdim=True)
    loss = ((peak.squeeze(1) + sums.log().squeeze(1) - target_logit) * valid).sum()
    if not need_grad:
        return loss, None
    g = e.div_(sums)
    g[torch.arange(g.shape[0], device=g.device), safe] -= 1.0
    if not bool(valid.all()):
        g *= valid[:, None]
    if softcap:
        g *= 1 - t * t
    return loss, g


class FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, softcap: float):
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        hc, wc = h.to(dtype), weight.to(dtype)
        valid = (targets != -100).float()
        safe = targets.clamp(min=0)
        count = valid.sum().clamp(min=1)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
        for start in range(0, h.shape[0], rows):
            end = start + rows
            loss, g = _chunk_eager(hc[start:end] @ wc.t(), safe[start:end], valid[start:end], softcap,
                              need_h or need_w)
            total += loss
            if g is not None:
                g = g.to(dtype)
                if need_h:
                    grad_h[start:end] = g @ wc
                if need_w:
                    grad_w += (g.t() @ hc[start:end]).float()
        ctx.save_for_backward(*(x / count if x is not None else torch.empty(0) for x in (grad_h, grad_w)))
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None


@torch.compiler.disable  # data-dependent Python control flow: a whole-model torch.compile calls it eagerly
def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         softcap: float = 0.0) -> torch.Tensor:
    """mean CE of softmax(softcap(h @ weight.T)) against targets; h (N, C), weight (V, C), targets (N,)."""
    return FusedLinearCrossEntropy.apply(h, weight, targets, softcap)
