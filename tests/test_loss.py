"""The fused, chunked head + cross-entropy against PyTorch's own F.cross_entropy on full logits, and
its GPU code path reading no tensor value on the host (no host-device sync inside a micro-step)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baseforge.model import loss as fused


def reference(h, w, targets, softcap):
    logits = (h @ w.t()).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets, ignore_index=-100)


@pytest.mark.parametrize("softcap", [0.0, 5.0])
@pytest.mark.parametrize("chunk", [1 << 22, 300])  # one chunk, and many uneven chunks
def test_fused_loss_and_grads_match_reference(softcap, chunk, monkeypatch):
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[::5] = -100  # masked positions carry no loss
    got = fused.linear_cross_entropy(h, w, targets, softcap)
    (got * 3).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    want = reference(h, w, targets, softcap)
    (want * 3).backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, h.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, w.grad, rtol=1e-4, atol=1e-6)


def test_fused_loss_under_bf16_autocast_is_close():
    torch.manual_seed(0)
    h, w = torch.randn(64, 32), torch.randn(100, 32) * 0.1
    targets = torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused.linear_cross_entropy(h, w, targets)
    assert abs(got.item() - reference(h, w, targets, 0.0).item()) < 2e-2


def test_no_grad_path_computes_loss_only():
    h, w = torch.randn(8, 4), torch.randn(10, 4)
    targets = torch.randint(0, 10, (8,))
    with torch.no_grad():
        got = fused.linear_cross_entropy(h, w, targets)
    torch.testing.assert_close(got, reference(h, w, targets, 0.0))


def test_bf16_loss_and_grads_match_autocast_reference():
    """Under bf16 autocast: what F.cross_entropy on autocast's bf16 logits gives, within bf16 rounding."""
    torch.manual_seed(0)
    h = torch.randn(96, 32, requires_grad=True)
    w = (torch.randn(500, 32) * 0.3).requires_grad_()
    targets = torch.randint(0, 500, (96,))
    targets[::7] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused.linear_cross_entropy(h, w, targets)
        want = F.cross_entropy((h @ w.t()).float(), targets, ignore_index=-100)  # logits in bf16, CE in fp32
    got_grads = torch.autograd.grad(got, (h, w))
    want_grads = torch.autograd.grad(want, (h, w))
    assert abs(got.item() - want.item()) < 2e-3
    for g, ref in zip(got_grads, want_grads):
        assert g.dtype == torch.float32
        assert (g - ref).abs().max().item() < 2e-2 * ref.abs().max().item()


def test_target_probability_underflow_gives_the_exact_loss():
    """A target whose probability underflows to 0 still gets its finite loss (lse - logit)."""
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    w = torch.tensor([[300.0, 0.0], [0.0, 0.0], [0.0, 2.0]])  # row 0's target 1 is 300 nats below the top
    targets = torch.tensor([1, 2, -100])  # row 2 is masked, and its "target" (index 0 after clamping) is fine
    got = fused.linear_cross_entropy(h, w, targets)
    torch.testing.assert_close(got, reference(h, w, targets, 0.0))
    assert 140 < got.item() < 160
    h = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    w = torch.tensor([[0.0, 0.0], [300.0, 0.0]])
    masked_underflow = torch.tensor([0, -100])  # row 1's clamped target 0 underflows, but it is masked
    got = fused.linear_cross_entropy(h, w, masked_underflow)
    torch.testing.assert_close(got, reference(h, w, masked_underflow, 0.0))


def test_no_grad_runs_only_the_forward_matmul():
    """Eval under no_grad, parameters requiring grad: one (N x C) @ (C x V) matmul, no gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    h = torch.randn(32, 16, requires_grad=True)
    w = torch.randn(100, 16, requires_grad=True)
    targets = torch.randint(0, 100, (32,))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        got = fused.linear_cross_entropy(h, w, targets)
    assert counter.get_total_flops() == 2 * 32 * 16 * 100
    assert not got.requires_grad
    torch.testing.assert_close(got, reference(h, w, targets, 0.0).detach())


@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_fp16_gradients_carry_the_loss_scale(softcap):
    """fp16 autocast with a GradScaler-sized loss scale: the fused gradients equal what autocast's fp16
    logits + F.cross_entropy give, element by element, tiny ones included (formed in the forward, before
    the scale, they flushed to zero or lost most of their digits)."""
    torch.manual_seed(0)
    h = torch.randn(64, 16, requires_grad=True)
    w = (torch.randn(300, 16) * 1.5).requires_grad_()
    targets = torch.randint(0, 300, (64,))
    targets[::7] = -100
    scale = 2.0**14

    def scaled_grads(loss_fn):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = loss_fn()
        return loss.detach(), *(g / scale for g in torch.autograd.grad(loss * scale, (h, w)))

    got = scaled_grads(lambda: fused.linear_cross_entropy(h, w, targets, softcap))
    want = scaled_grads(lambda: reference(h, w, targets, softcap))
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=0)  # fp16 p[target]: 2^-11
    for g, ref in zip(got[1:], want[1:]):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        torch.testing.assert_close(g, ref, rtol=5e-2, atol=1e-9)


def test_fp16_overflow_reaches_the_scaler_as_inf():
    """A loss scale too large for fp16 must overflow (GradScaler then skips the step and lowers it)."""
    torch.manual_seed(0)
    h = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (8,))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = fused.linear_cross_entropy(h, w, targets)
    gh, gw = torch.autograd.grad(loss * 2.0**30, (h, w))
    assert not torch.isfinite(gh).all() and not torch.isfinite(gw).all()


# --- no host-device sync inside a micro-step ----------------------------------------------------------
def forbid_host_reads(monkeypatch) -> None:
    """The GPU code path of the fused loss, on CPU, with every way of reading a tensor's value failing."""

    def sync(self, *args, **kwargs):
        raise AssertionError("a host read of a tensor's value: a host-device sync on a GPU")

    monkeypatch.setattr(fused, "host_reads_are_free", lambda device: False)
    for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, sync)


def _loss_case(underflow: bool):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(24, 16, generator=g)
    w = 0.1 * torch.randn(64, 16, generator=g)
    targets = torch.randint(0, 64, (24,), generator=g)
    targets[::5] = -100
    if underflow:  # row 3's logit 0 is 450 nats above its target's: p[target] is 0 in fp32 and bf16
        h[3], w[0] = 0.0, 0.0
        h[3, 0], w[0, 0], targets[3] = 30.0, 15.0, 1
    return h, w, targets


def _fused_loss_and_grads(h, w, targets, dtype, softcap=0.0):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = fused.linear_cross_entropy(h, w, targets, softcap)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("softcap", [0.0, 500.0])
@pytest.mark.parametrize("underflow", [False, True], ids=["plain", "underflow"])
def test_fused_loss_reads_no_value_on_the_host(dtype, softcap, underflow, monkeypatch):
    h, w, targets = _loss_case(underflow)
    host = _fused_loss_and_grads(h, w, targets, dtype, softcap)
    with monkeypatch.context() as patch:
        forbid_host_reads(patch)
        device = _fused_loss_and_grads(h, w, targets, dtype, softcap)
    z = h @ w.t()
    z = softcap * torch.tanh(z / softcap) if softcap else z
    full = F.cross_entropy(z, targets, ignore_index=-100)
    assert torch.isfinite(device[0]) and torch.isclose(device[0], full, rtol=2e-2)
    if underflow:  # the repaired row: the same loss up to the logits' rounding
        torch.testing.assert_close(device[0], host[0], rtol=1e-3, atol=0)
        assert all(torch.equal(a, b) for a, b in zip(device[1:], host[1:]))
    else:  # nothing to repair: the same numbers, bit for bit
        assert all(torch.equal(a, b) for a, b in zip(device, host))
