"""Precision on CPU with faked GPUs: `auto` picks bf16 only where the GPU has it natively (fp16 on
GPUs that emulate it), and fp32 means fp32 (TF32 off), mixed precision switches TF32 on, CPU runs
leave it alone."""

from __future__ import annotations

import pytest
import torch

from baseforge.errors import UserError
from baseforge.train import precision as prec

CUDA = torch.device("cuda")  # never touched: the tests below fake what the code asks of it


# --- bf16 only where the GPU has it natively --------------------------------------------------------
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


# --- fp32 means fp32 ----------------------------------------------------------------------------------
def tf32_enabled() -> bool:
    """Whether fp32 matmuls and convolutions may use TF32 (both of set_tf32's switches on)."""
    return bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)


@pytest.fixture
def tf32_switches():
    """The process-wide TF32 switches, saved and put back through the same API the trainer uses
    (monkeypatch's undo on torch's precision objects breaks on pytest 9.2 and torch 2.11)."""
    saved = tf32_enabled()
    yield
    prec.set_tf32(saved)


def _readable_everywhere() -> None:
    """torch.compile reads the legacy getters; they must not raise after the trainer set TF32."""
    torch.get_float32_matmul_precision()
    torch._C._get_cublas_allow_tf32()


def test_fp32_run_switches_tf32_off(tf32_switches, monkeypatch):
    prec.set_tf32(True)  # as an earlier bf16 run in this process left them
    assert prec.setup_precision("fp32", CUDA).name == "fp32"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
    _readable_everywhere()


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_mixed_precision_run_switches_tf32_on(tf32_switches, monkeypatch, name):
    _fake_gpu(monkeypatch, (9, 0))
    prec.set_tf32(False)
    assert prec.setup_precision(name, CUDA).name == name
    assert tf32_enabled()
    _readable_everywhere()


def test_cpu_run_leaves_tf32_alone(tf32_switches):
    prec.set_tf32(True)
    prec.setup_precision("fp32", torch.device("cpu"))
    assert tf32_enabled()
