"""`--dry-run` is the run's own preflight: it refuses what `train` would refuse before step 1 (a split
shorter than one window, a run dir that holds a run, an extension that would train at no rate, a
tracker typo) and always prints an estimate of the time, on a CPU from its measured matmul peak, on a
GPU from the table in hardware.py at an assumed MFU."""

from __future__ import annotations

import random
import shutil

import pytest
import torch

from baseforge import launch
from baseforge.overrides import resolve_config
from conftest import build_data_dir
from helpers import TINY, assert_clean_error, baseforge, sets


@pytest.fixture(scope="module")
def short_val_dir(tmp_path_factory):
    """Train split of some 20k tokens, validation split of a few thousand (one paragraph in 40)."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    text = "\n\n".join(" ".join(rng.choices(words, k=120)) for _ in range(400))
    return build_data_dir(tmp_path_factory.mktemp("data") / "short-val", text, val_every=40)


def train(data, out, *items, flags=()):
    return baseforge(
        "train", "--data", data, "--out", out, "--preset", "cpu-tiny", *flags, *sets(*TINY, *items)
    )


def test_a_val_split_shorter_than_one_window_is_refused_by_the_dry_run_as_by_train(short_val_dir, tmp_path):
    dry = train(short_val_dir, tmp_path / "r", "context=8192", flags=["--dry-run"])
    assert_clean_error(dry, "the val split", "fewer than one window of context 8192")
    real = train(short_val_dir, tmp_path / "r", "context=8192")
    assert_clean_error(real, "the val split", "fewer than one window of context 8192")
    assert dry.stderr == real.stderr and not (tmp_path / "r").exists()


def test_the_dry_run_prints_a_time_estimate_on_the_cpu(short_val_dir, tmp_path):
    dry = train(short_val_dir, tmp_path / "r", "max_steps=50", "device=cpu", flags=["--dry-run"])
    assert dry.returncode == 0, dry.stderr
    line = next(x for x in dry.stdout.splitlines() if x.startswith("time:"))
    assert "a step" in line and "for 50 steps" in line and "measured matmul peak" in line, line
    assert not (tmp_path / "r").exists()


def test_a_batch_schedule_is_timed_by_its_tokens_not_its_steps():
    """4 steps of 2 sequences, then 2 of 8: 24 sequences of tokens, not 6 full steps' 48."""
    estimate = launch.TimeEstimate(per_token=1e-2, basis="stub")
    line = estimate.describe(per_step=8 * 64, steps=6, tokens=24 * 64)
    assert line.startswith("time: about 0m05s a step of 512 tokens, 0m15s for 6 steps"), line  # not 0m30s


def test_the_dry_run_refuses_what_train_refuses_in_the_run_dir(shakespeare_dir, short_val_dir, tmp_path):
    run = tmp_path / "run"
    wsd = ("schedule=wsd", "min_lr_ratio=0", "max_steps=4", "eval_every=100", "checkpoint_every=100")
    assert train(short_val_dir, run, *wsd).returncode == 0
    fresh = train(short_val_dir, run, *wsd, flags=["--dry-run"])  # a fresh run into a run
    assert_clean_error(fresh, "already holds a run", "--resume")
    longer = ["--resume", "--extend", "--dry-run", *sets("max_steps=8")]
    assert_clean_error(baseforge("train", "--out", run, *longer), "decayed to 0x the peak", "extend_lr")
    ok = baseforge("train", "--out", run, *longer, *sets("extend_lr=0.5"))
    assert ok.returncode == 0 and "steps: 8" in ok.stdout, ok.stderr
    typo = train(short_val_dir, tmp_path / "x", "trackers=tensorbord", flags=["--dry-run"])
    assert_clean_error(typo, "unknown tracker tensorbord")
    other = tmp_path / "other"
    shutil.copytree(shakespeare_dir, other)  # another tokenizer: refused by the resume as by train
    resumed = baseforge("train", "--out", run, "--resume", "--dry-run", "--data", other, "--new-data")
    assert_clean_error(resumed, "tokenizer")


def test_a_gpu_estimate_is_the_tables_peak_at_a_stated_mfu(monkeypatch):
    """No GPU here: the device is stubbed, the estimate's arithmetic and wording are the point."""
    config = resolve_config("gpt2-small-seed").with_vocab(50257)
    monkeypatch.setattr(launch, "resolve_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(launch, "resolve_precision", lambda name, device: "bf16")
    monkeypatch.setattr(launch, "device_peak", lambda device, precision: (989.5e12, "table: NVIDIA H100"))
    estimate = launch.time_estimate(config, world=8)
    flops = launch.shape_of(config).flops_per_token
    assert estimate.per_token == pytest.approx(flops / (launch.DEFAULT_MFU * 989.5e12 * 8))
    line = estimate.describe(32 * 1024, 1000, 32 * 1024 * 1000)
    assert "assumed 40%" in line and "table: NVIDIA H100" in line and "8 processes" in line, line
