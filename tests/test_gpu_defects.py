"""Issue 14's defects found by reading the code, on CPU: fake GPUs, fake out-of-memory, patched syncs."""

from __future__ import annotations

import pytest
import torch

from baseforge.errors import UserError
from baseforge.train import precision as prec

CUDA = torch.device("cuda")  # never touched: the tests below fake what the code asks of it


# --- defect 1: bf16 only where the GPU has it natively ---------------------------------------------
def _fake_gpu(monkeypatch, capability, keyword: bool = True):
    """A GPU of `capability` whose is_bf16_supported() counts emulation, as torch's does."""
    native = capability >= (8, 0)
    if keyword:

        def supported(including_emulation: bool = True) -> bool:
            return native or including_emulation

    else:

        def supported() -> bool:  # an older torch: no keyword, emulation counted
            return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize("keyword", [True, False], ids=["including_emulation", "capability"])
@pytest.mark.parametrize("capability", [(7, 0), (7, 5)], ids=["V100", "T4"])
def test_auto_precision_is_fp16_on_gpus_that_emulate_bf16(monkeypatch, capability, keyword):
    _fake_gpu(monkeypatch, capability, keyword)
    assert prec.resolve_precision("auto", CUDA) == "fp16"
    with pytest.raises(UserError, match="no bf16"):
        prec.resolve_precision("bf16", CUDA)


@pytest.mark.parametrize("keyword", [True, False])
def test_auto_precision_is_bf16_from_ampere_on(monkeypatch, keyword):
    _fake_gpu(monkeypatch, (8, 0), keyword)
    assert prec.resolve_precision("auto", CUDA) == "bf16"
    assert prec.resolve_precision("bf16", CUDA) == "bf16"


# --- defect 11: fp32 means fp32 -------------------------------------------------------------------
@pytest.fixture
def tf32_switches(monkeypatch):
    """The process-wide TF32 switches, put back after the test."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has only allow_tf32")
    monkeypatch.setattr(matmul, "fp32_precision", matmul.fp32_precision)
    monkeypatch.setattr(conv, "fp32_precision", conv.fp32_precision)
    return matmul, conv


def test_fp32_run_switches_tf32_off(tf32_switches, monkeypatch):
    matmul, conv = tf32_switches
    matmul.fp32_precision = conv.fp32_precision = "tf32"  # as an earlier bf16 run in this process left them
    assert prec.setup_precision("fp32", CUDA).name == "fp32"
    assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_mixed_precision_run_switches_tf32_on(tf32_switches, monkeypatch, name):
    _fake_gpu(monkeypatch, (9, 0))
    matmul, conv = tf32_switches
    matmul.fp32_precision = conv.fp32_precision = "ieee"
    assert prec.setup_precision(name, CUDA).name == name
    assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")


def test_cpu_run_leaves_tf32_alone(tf32_switches):
    matmul, _ = tf32_switches
    matmul.fp32_precision = "tf32"
    prec.setup_precision("fp32", torch.device("cpu"))
    assert matmul.fp32_precision == "tf32"


# --- defect 6: no host-device sync inside a micro-step ---------------------------------------------
def forbid_host_reads(monkeypatch) -> None:
    """The GPU code path of the fused loss, on CPU, with every way of reading a tensor's value failing."""
    from baseforge.model import loss

    def sync(self, *args, **kwargs):
        raise AssertionError("a host read of a tensor's value: a host-device sync on a GPU")

    monkeypatch.setattr(loss, "host_reads_are_free", lambda device: False)
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
    from baseforge.model.loss import linear_cross_entropy

    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = linear_cross_entropy(h, w, targets, softcap)
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
    reference = torch.nn.functional.cross_entropy(z, targets, ignore_index=-100)
    assert torch.isfinite(device[0]) and torch.isclose(device[0], reference, rtol=2e-2)
    if underflow:  # the repaired row: the same loss up to the logits' rounding
        torch.testing.assert_close(device[0], host[0], rtol=1e-3, atol=0)
        assert all(torch.equal(a, b) for a, b in zip(device[1:], host[1:]))
    else:  # nothing to repair: the same numbers, bit for bit
        assert all(torch.equal(a, b) for a, b in zip(device, host))
