"""The fused, chunked head + cross-entropy against PyTorch's own F.cross_entropy on full logits."""

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

