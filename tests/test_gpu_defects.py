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
