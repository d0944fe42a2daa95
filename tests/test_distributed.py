"""torchrun + DDP on CPU (gloo): two processes are the reference's twin, resume crosses world sizes,
and a dead rank takes the whole job down; the process group's backend follows the run's device."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from baseforge.train.checkpoint import find_checkpoint
from baseforge.train.distributed import backend_for
from baseforge.train.metrics import read_metrics
from helpers import TINY, assert_a_dead_rank_ends_the_job, baseforge, sets, torchrun

COMMON = [*TINY, "dropout=0", "micro_batch=2", "global_batch=8", "checkpoint_every=4", "dist_timeout_s=60"]


def curve(run):
    return [r["loss"] for r in read_metrics(run) if r["loss"] is not None]


@pytest.fixture(scope="module")
def one_process(shakespeare_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    # 1 process, micro 2: accumulation 4 to reach the global batch of 8.
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, *sets(*COMMON, "max_steps=8"))
    assert result.returncode == 0, result.stderr
    return run


def test_two_processes_match_one(shakespeare_dir, one_process, tmp_path):
    run = tmp_path / "run"
    # 2 processes, micro 2: accumulation 2 each, the same 8 sequences per step.
    result = torchrun(2, "train", "--data", shakespeare_dir, "--out", run, *sets(*COMMON, "max_steps=8"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "micro 2 x accum 2 x 2 processes" in result.stdout
    assert curve(run) == pytest.approx(curve(one_process), rel=1e-4, abs=1e-4)
    ref, got = (load_file(str(find_checkpoint(r) / "model.safetensors")) for r in (one_process, run))
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)


def test_checkpoint_from_two_processes_resumes_on_one(shakespeare_dir, one_process, tmp_path):
    run = tmp_path / "run"
    result = torchrun(
        2,
        "train",
        "--data",
        shakespeare_dir,
        "--out",
        run,
        *sets(*COMMON, "max_steps=8"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Roll the run back to its step-4 checkpoint, then continue it with one process.
    (run / "checkpoints" / "latest").write_text("step_0000004\n")
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume")
    assert result.returncode == 0, result.stderr
    assert "micro 2 x accum 4 x 1 processes" in result.stdout
    assert curve(run) == pytest.approx(curve(one_process), rel=1e-4, abs=1e-4)


def test_a_dead_rank_stops_the_job(shakespeare_dir, tmp_path):
    assert_a_dead_rank_ends_the_job(
        shakespeare_dir, tmp_path / "run", [*COMMON, "max_steps=100000", "dist_timeout_s=20"]
    )


def test_the_process_group_backend_follows_the_runs_device_not_the_host(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a host with a GPU
    assert backend_for("cpu") == "gloo"  # a CPU run there must not hand CPU tensors to NCCL
    assert backend_for("auto") == "nccl" and backend_for("cuda:1") == "nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend_for("auto") == "gloo"
