"""GPU peak table (exact device names, memory sizes), the measured fallback, the MFU formatter, and the
FLOPs a run's MFU counts."""

from __future__ import annotations

import json

import pytest
import torch

from baseforge import hardware
from baseforge.errors import UserError
from baseforge.overrides import resolve_config
from baseforge.train import mfu
from baseforge.train.loop import Trainer
from baseforge.train.metrics import read_metrics
from baseforge.train.schedule import attention_window
from helpers import TINY

# Strings as torch.cuda.get_device_name() reports them -> (short name, bf16 TFLOP/s, memory GiB).
REAL_NAMES = {
    "NVIDIA GeForce RTX 3090": ("rtx-3090", 71, 24),
    "NVIDIA GeForce RTX 3090 Ti": ("rtx-3090-ti", 80, 24),
    "NVIDIA GeForce RTX 4090": ("rtx-4090", 165.2, 24),
    "NVIDIA GeForce RTX 5090": ("rtx-5090", 209.5, 32),
    "NVIDIA A10": ("a10", 125, 24),
    "NVIDIA A10G": ("a10g", 70, 24),
    "NVIDIA A100-SXM4-40GB": ("a100-40gb", 312, 40),
    "NVIDIA A100-SXM4-80GB": ("a100-80gb", 312, 80),
    "NVIDIA A100-PCIE-40GB": ("a100-40gb-pcie", 312, 40),
    "NVIDIA A100 80GB PCIe": ("a100-80gb-pcie", 312, 80),
    "NVIDIA L4": ("l4", 121, 24),
    "NVIDIA L40": ("l40", 181, 48),
    "NVIDIA L40S": ("l40s", 362, 48),
    "NVIDIA H100 80GB HBM3": ("h100-sxm", 989, 80),
    "NVIDIA H100 PCIe": ("h100-pcie", 756, 80),
    "NVIDIA H100 NVL": ("h100-nvl", 835, 94),
    "NVIDIA H200": ("h200", 989, 141),
    "NVIDIA H200 NVL": ("h200-nvl", 835, 141),
    "NVIDIA B200": ("b200", 2250, 180),
    "NVIDIA RTX A6000": ("rtx-a6000", 154.8, 48),
    "NVIDIA RTX 6000 Ada Generation": ("rtx-6000-ada", 364.2, 48),
    "Tesla V100-SXM2-16GB": ("v100-sxm2-16gb", None, 16),
    "Tesla V100-SXM2-32GB": ("v100-sxm2-32gb", None, 32),
    "Tesla V100-PCIE-32GB": ("v100-pcie-32gb", None, 32),
    "Tesla T4": ("t4", None, 16),
}


@pytest.mark.parametrize("name", sorted(REAL_NAMES))
def test_real_device_names_match_exactly(name):
    key, bf16, memory = REAL_NAMES[name]
    gpu = hardware.gpu_for_device_name(name)
    assert gpu is not None and gpu.key == key
    assert gpu.bf16 == bf16 and gpu.memory_gib == memory
    assert mfu.table_peak(name, "bf16") == (bf16 * 1e12 if bf16 else None)


def test_substring_misfires_are_gone():
    # Each of these matched a different GPU's entry under the old substring lookup.
    assert mfu.table_peak("NVIDIA H100 NVL", "bf16") == 835e12
    assert mfu.table_peak("NVIDIA H200 NVL", "bf16") == 835e12
    assert mfu.table_peak("NVIDIA L40", "bf16") == 181e12
    assert mfu.table_peak("NVIDIA GeForce RTX 3090 Ti", "bf16") == 80e12
    assert mfu.table_peak("Tesla V100-PCIE-32GB", "fp16") == 112e12
    assert mfu.table_peak("NVIDIA RTX A1000", "bf16") is None  # not an A10: measured instead
    assert mfu.table_peak("NVIDIA RTX A1000 6GB Laptop GPU", "bf16") is None


def test_no_bf16_on_gpus_without_it():
    assert mfu.table_peak("Tesla T4", "bf16") is None
    assert mfu.table_peak("Tesla T4", "fp16") == 65e12


def test_mfu_peak_table():
    assert mfu.table_peak("NVIDIA GeForce RTX 3090", "bf16") == 71e12
    assert mfu.table_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert mfu.table_peak("NVIDIA H100 PCIe", "bf16") == 756e12
    assert mfu.table_peak("Some Future GPU", "bf16") is None


def test_find_gpu_by_short_name_alias_or_device_name():
    assert hardware.find_gpu("rtx-3090").label == "RTX 3090"
    assert hardware.find_gpu("H100").key == "h100-sxm"
    assert hardware.find_gpu("NVIDIA H100 NVL").key == "h100-nvl"
    with pytest.raises(UserError, match="unknown GPU"):
        hardware.find_gpu("rtx-9999")


def test_short_names_are_unique_and_every_gpu_has_memory():
    keys = [g.key for g in hardware.GPUS]
    assert len(keys) == len(set(keys))
    assert all(g.memory_gib > 0 and g.fp32 > 0 for g in hardware.GPUS)


def test_unknown_cuda_device_falls_back_to_a_measurement(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA RTX A1000")
    monkeypatch.setattr(mfu, "measure_matmul_peak", lambda device, dtype: 5e12)
    assert mfu.device_peak(torch.device("cuda", 0), "bf16") == (5e12, "measured")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 NVL")
    assert mfu.device_peak(torch.device("cuda", 0), "bf16") == (835e12, "table: NVIDIA H100 NVL")


def test_measured_peak_is_the_best_of_several_timings(monkeypatch):
    # A fake clock: the first timing of each size is slow (a busy machine), later ones are fast.
    ticks = iter([0.0, 10.0, 0.0, 1.0, 0.0, 2.0, 0.0, 10.0, 0.0, 1.0, 0.0, 2.0])
    monkeypatch.setattr(mfu.time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(mfu, "_measured", {})
    peak = mfu.measure_matmul_peak(torch.device("cpu"), torch.float32, sizes=(8, 16), repeats=3)
    assert peak == 2 * 16**3 / 1.0


def test_a_slow_matmul_ends_the_measurement_at_its_budget(monkeypatch):
    """A CPU without native bf16 takes seconds per matmul: the measurement stops at its time budget
    (rank 0 measures before the process group forms, while the other ranks wait out its timeout)."""
    clock = iter([0.0, mfu.MEASURE_BUDGET_S + 1])
    monkeypatch.setattr(mfu.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(mfu, "_measured", {})
    calls = []
    monkeypatch.setattr(mfu, "_sync", lambda device: calls.append(1))
    assert mfu.measure_matmul_peak(torch.device("cpu"), torch.float32, sizes=(8, 16), repeats=3) > 0
    assert len(calls) == 2  # one timed matmul (a sync before and after), not six


def test_format_mfu_never_shows_more_than_100_percent_as_real():
    assert mfu.format_mfu(0.4131) == "41.3%"
    assert mfu.format_mfu(1.741) == ">100% (peak under-measured)"
    assert mfu.format_mfu(None) is None
    assert mfu.format_mfu(float("nan")) is None


def test_a_cpu_peak_is_shown_in_its_own_units_with_its_caveat():
    """A CPU's measured peak (tens of GFLOP/s) used to print as '0.0 TFLOP/s'."""
    assert mfu.format_peak(989.5e12, "table: NVIDIA H100") == "989.5 TFLOP/s (table: NVIDIA H100)"
    line = mfu.format_peak(4.8e10, "measured")
    assert line.startswith("48.0 GFLOP/s (measured") and "busy" in line


def test_mfu_counts_each_steps_own_attention_window(shakespeare_dir, tmp_path):
    """Under a window warmup early steps attend over fewer keys: a metrics row's MFU counts the FLOPs of
    the windows its steps used (GPT.flops_per_token(window)), not the full window's."""
    items = [*TINY, "pos_emb=rope", "attn_window_warmup=1.0", "max_steps=4", "log_every=1"]
    config = resolve_config("cpu-small", None, items)
    trainer = Trainer(config, shakespeare_dir, tmp_path / "run", log=lambda *a: None)
    trainer.run()
    model, peak = trainer.built.views.plain, trainer.built.runtime.peak
    rows = [r for r in read_metrics(tmp_path / "run") if r.step]
    windows = [attention_window(step, 4, 64, 1.0) for step in range(4)]
    assert len(rows) == 4 and windows[0] < windows[2] and windows[-1] is None  # None: grown to 64
    for row, window in zip(rows, windows):
        seconds = 512 / row.tokens_per_s  # one step of 8 x 64 tokens a row
        assert row.mfu == pytest.approx(512 * model.flops_per_token(window) / seconds / peak, rel=1e-6)
    assert model.flops_per_token(windows[0]) < model.flops_per_token()
    # summary.json's MFU is the whole run's, beside the whole run's tokens/s (not the last row's)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    flops = sum(512 * model.flops_per_token(w) for w in windows)
    assert summary["mfu"] == pytest.approx(flops / summary["train_seconds"] / peak, rel=1e-6)
    assert summary["mfu"] != pytest.approx(rows[-1].mfu, rel=1e-3)


def test_a_ratio_keeps_two_figures():
    from baseforge.progress import format_ratio

    assert [format_ratio(x) for x in (0.05, 0.123, 5.0, 20.0, 123.4)] == ["0.05", "0.12", "5", "20", "123"]
