"""Muon: MomentUm Orthogonalized by Newton-Schulz, for the 2-D hidden weight matrices.

The algorithm is Keller Jordan's (https://kellerjordan.github.io/posts/muon/, reference code at
https://github.com/KellerJordan/Muon): take SGD's Nesterov momentum, then replace the update matrix
G = U S V^T by (approximately) its orthogonal factor U V^T, so every direction of the update moves
by about the same amount however skewed the gradient's spectrum. A few Newton-Schulz iterations of
an odd quintic polynomial compute that with matmuls only, stably in bfloat16 (in fp32 on a device
without native bf16: a CPU without AVX512-BF16 or AMX emulates bf16 matmuls ~40x slower than fp32).

Only hidden matrices (attention and MLP weights) belong here. Embeddings, the output head, norms,
biases and scalars go to AdamW: `param_groups_for_muon` splits a model's parameters that way.

Gradient accumulation: `step` only reads `.grad` (never writes it), so summing micro-batch grads first
works as for any optimizer. DDP: grads are all-reduced before `step`, so every rank holds the same
grad and momentum and computes the same update; nothing is communicated here (the orthogonalisation
is duplicated on each rank, which is cheap next to forward and backward at GPT-2 sizes).

FSDP (parameters, gradients and momentum sharded by rows as DTensors): each rank gathers the whole
update matrices (one all-gather per group of equal shape, of the stacked momentum-corrected updates),
orthogonalises them all, and adds the rows of its own shard. Chosen over "each rank owns whole matrices"
because it needs no second layout of the parameters and gives exactly DDP's update. Its cost: per step,
one all-gather of the hidden matrices in fp32 (as much traffic as FSDP's forward all-gather in fp32,
twice that of a bf16 one), a transient full-size copy of one shape group on every rank, and the
Newton-Schulz work duplicated on every rank, as under DDP. Owning whole matrices would split that
compute by the world size and send less, at the price of a redistribution; worth it only where the
orthogonalisation shows in a profile (it is a few percent of a GPT-2 step).

Speed: matrices of equal shape are stacked and orthogonalised in one batched Newton-Schulz, and the
momentum and weight updates use foreach kernels, so a step launches a few dozen kernels per shape
instead of a dozen per matrix (GPT-2 small: 48 matrices of 4 shapes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn

from baseforge.errors import UserError

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

# Quintic coefficients from Keller Jordan's write-up: chosen to maximise the slope at 0 (so small
# singular values grow fast) while keeping the iteration in a band around 1. The result is not
# exactly U V^T: the singular values end up spread over roughly [0.7, 1.2], which works as well in
# practice and takes fewer steps than a convergent iteration.
NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932): one quintic per step, each the
# minimax-optimal next step for the band the previous one left, with modded-nanogpt's 2% safety
# margin (the input is divided by 1.02 x its Frobenius norm). Five steps.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def orthogonalize(
    g: torch.Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    method: str = "jordan",
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Approximately U V^T for `g` = U S V^T, by `steps` Newton-Schulz iterations in `dtype`.

    `g` is one matrix (m, n) or a stack of equal-shape matrices (k, m, n), each orthogonalised on its own.
    `method`: "jordan" (one quintic, `steps` times) or "polar_express" (its five quintics, in order).
    """
    if g.ndim not in (2, 3):
        raise ValueError(f"orthogonalize needs a matrix or a stack of matrices, got shape {tuple(g.shape)}")
    coeffs = POLAR_EXPRESS if method == "polar_express" else (NS_COEFFS,) * steps
    margin = 1.02 if method == "polar_express" else 1.0
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: X X^T is then the smaller Gram matrix
        x = x.mT
    # Frobenius norm >= spectral norm, so this puts every singular value in [0, 1] where the
    # polynomial's iteration converges towards its band around 1.
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * margin + eps)
    for a, b, c in coeffs:
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x  # a X + b (X X^T) X + c (X X^T)^2 X
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters. Per step, for each matrix W with gradient G:

        M = momentum * M + (1 - momentum) * G            (an EMA of the gradient)
        U = G + momentum * (M - G) if nesterov else M    (Nesterov: look one step ahead)
        W = W * (1 - lr * weight_decay) - lr * sqrt(max(1, rows / cols)) * orthogonalize(U)

    The shape factor keeps the per-element update size comparable for tall matrices, whose
    orthogonalised update has smaller entries. Weight decay is decoupled, as in AdamW, and scaled
    by lr; with Muon's lr (~0.02) that is ~30x AdamW's decay per step for the same weight_decay.
    State per parameter: `momentum_buffer`, so `state_dict()`/`load_state_dict()` resume exactly.

    Refinements, each off by default: `ns="polar_express"` (the orthogonalisation's coefficients);
    `normuon` (NorMuon, arXiv:2510.05491: each neuron's share of the orthogonalised update divided by
    the root of its running mean square, `neuron_second_moment`, then the whole rescaled back to the
    orthogonalised update's norm); `cautious_wd` (arXiv:2510.12402: decay only the entries where the
    update has the weight's sign, i.e. moves it towards zero anyway).
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        ns: str = "jordan",
        normuon: bool = False,
        normuon_beta2: float = 0.95,
        cautious_wd: bool = False,
        ns_dtype: torch.dtype = torch.bfloat16,
    ):
        if not lr > 0:
            raise ValueError(f"lr must be positive, not {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), not {momentum}")
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
            ns=ns, normuon=normuon, normuon_beta2=normuon_beta2, cautious_wd=cautious_wd,
        )  # fmt: skip
        super().__init__(params, defaults)
        # A property of the device, not a hyperparameter: kept out of the groups (and checkpoints).
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon is for 2-D weight matrices; got a parameter of shape "
                        f"{tuple(p.shape)} (send it to AdamW: see param_groups_for_muon)"
                    )
                if normuon and _is_dtensor(p):
                    raise UserError(
                        "normuon is not supported with FSDP yet: use parallel=ddp or normuon=false"
                    )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for params in _same_shape_batches([p for p in group["params"] if p.grad is not None]):
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        """One step for matrices of equal shape: a handful of batched kernels, not a loop per matrix."""
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad for p in params]
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        sharded = _is_dtensor(params[0])
        updates = _momentum(bufs, grads, beta, group["nesterov"], per_tensor=sharded)
        stacked = torch.stack(updates)
        if sharded:
            # every rank: the whole matrices of this shape (all-gather)
            stacked = cast("DTensor", stacked).full_tensor()
        full = orthogonalize(stacked, group["ns_steps"], method=group["ns"], dtype=self.ns_dtype)
        if group["normuon"]:
            full = self._normuon(params, full, group["normuon_beta2"])
        ortho: list[torch.Tensor] | tuple[torch.Tensor, ...] = full.to(params[0].dtype).unbind(0)
        if sharded:
            ortho = [_own_shard(o, p) for o, p in zip(ortho, params)]
        scale = max(1.0, params[0].size(0) / params[0].size(1)) ** 0.5
        if wd and group["cautious_wd"]:
            for p, o in zip(params, ortho):  # o is subtracted: it moves p towards 0 where signs agree
                p.sub_(lr * wd * p * (o * p > 0))
        elif wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, ortho, alpha=-lr * scale)

    def _normuon(self, params: list[torch.Tensor], ortho: torch.Tensor, beta2: float) -> torch.Tensor:
        """NorMuon's per-neuron normalisation of the stacked orthogonalised updates (k, m, n)."""
        reduce = neuron_axis(params[0].shape)
        sq = ortho.float().square().mean(dim=reduce, keepdim=True)  # each neuron's mean square
        for p, s in zip(params, sq.unbind(0)):
            if "neuron_second_moment" not in self.state[p]:
                self.state[p]["neuron_second_moment"] = torch.zeros_like(s)
        moments = torch.stack([self.state[p]["neuron_second_moment"] for p in params])
        moments.lerp_(sq, 1 - beta2)
        for p, m in zip(params, moments.unbind(0)):
            self.state[p]["neuron_second_moment"].copy_(m)
        scaled = ortho.float() * moments.clamp_min(1e-10).rsqrt()
        before = ortho.float().norm(dim=(-2, -1), keepdim=True)
        after = scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10)
        return scaled * (before / after)


def neuron_axis(shape) -> int:
    """The axis NorMuon averages over: a tall or square matrix's columns (per row), a wide one's rows."""
    return -1 if shape[0] >= shape[1] else -2


def neuron_moment_shape(shape) -> tuple[int, int]:
    return (shape[0], 1) if neuron_axis(shape) == -1 else (1, shape[1])


def _momentum(
    bufs: list, grads: list, beta: float, nesterov: bool, per_tensor: bool
) -> list[torch.Tensor] | tuple[torch.Tensor, ...]:
    """buf <- lerp(buf, grad, 1 - beta); the update is buf, or lerp(grad, buf, beta) with Nesterov
    (out of place: .grad is never written). Per tensor for DTensors: torch 2.11 has no sharding rule
    for the foreach lerp (the same lerp kernel either way, so the numbers are the same)."""
    if not per_tensor:
        torch._foreach_lerp_(bufs, grads, 1 - beta)
        return torch._foreach_lerp(grads, bufs, beta) if nesterov else bufs
    for buf, grad in zip(bufs, grads):
        buf.lerp_(grad, 1 - beta)
    return [grad.lerp(buf, beta) for grad, buf in zip(grads, bufs)] if nesterov else bufs


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _own_shard(full: torch.Tensor, like):
    """`full` (equal on every rank) laid out as the DTensor `like`: this rank keeps its rows, no messages."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def _same_shape_batches(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Parameters grouped by (shape, dtype, device), in first-seen order, so each group stacks."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((tuple(p.shape), p.dtype, p.device), []).append(p)
    return list(groups.values())


def param_groups_for_muon(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon's parameters, AdamW's parameters) for a baseforge GPT.

    Muon takes the 2-D hidden matrices inside the transformer blocks (attention's c_attn/c_proj,
    the MLP's c_fc/c_proj). AdamW takes the rest: token and position embeddings and the output head
    (lookups and a classifier, not hidden linear maps: Muon's write-up keeps them on AdamW), norm
    weights, biases and any scalars. A tied head appears once. Frozen parameters are left out.
    """
    muon: list[nn.Parameter] = []
    adamw: list[nn.Parameter] = []
    for name, p in model.named_parameters():  # named_parameters() yields a shared tensor once
        if not p.requires_grad:
            continue
        hidden = ".h." in f".{name}" and p.ndim == 2  # transformer.h.<i>....weight
        (muon if hidden else adamw).append(p)
    return muon, adamw
