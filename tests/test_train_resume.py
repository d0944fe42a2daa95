"""Exact resume: an interrupted and resumed run equals an uninterrupted one, step by step, bit by bit."""

from __future__ import annotations

import signal
import time

import pytest
from safetensors.torch import load_file

from baseforge.train.checkpoint.format import find_checkpoint
from baseforge.train.metrics import read_metrics
from helpers import TINY, baseforge, popen, sets

# Gradient accumulation (micro 4 x accum 2) and dropout 0.1 are on in TINY.
STEPS = ["max_steps=40", "checkpoint_every=4", "n_embd=128", "context=64"]


def losses(run_dir):
    return [(r.step, r.loss, r.val_loss, r.lr, r.grad_norm) for r in read_metrics(run_dir)]


def final_weights(run_dir):
    return load_file(str(find_checkpoint(run_dir) / "model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(shakespeare_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    baseforge("train", "--data", shakespeare_dir, "--out", run, *sets(*TINY, *STEPS), check=True)
    return run


def interrupt_after_first_checkpoint(data, run, sig) -> None:
    proc = popen("train", "--data", data, "--out", run, *sets(*TINY, *STEPS))
    latest = run / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "checkpoint saved" in err + out
    step = int(latest.read_text().strip().split("_")[1])
    assert 4 <= step < 40, f"interrupt landed at step {step}: the run was too fast to interrupt"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_resume_is_exact(shakespeare_dir, reference_run, tmp_path, sig):
    run = tmp_path / "run"
    interrupt_after_first_checkpoint(shakespeare_dir, run, sig)
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming from step" in result.stdout + result.stderr
    assert losses(run) == losses(reference_run)  # every logged step, exactly
    ref, got = final_weights(reference_run), final_weights(run)
    assert ref.keys() == got.keys()
    for name in ref:
        assert (ref[name] == got[name]).all(), name


MODERN = [
    "pos_emb=rope",
    "norm=rmsnorm",
    "qk_norm=true",
    "mlp_act=relu2",
    "tie_weights=false",
    "zero_init_head=true",
    "logit_softcap=15",
    "bias=false",
    "optimizer=muon",
    "schedule=wsd",
]


@pytest.mark.slow  # 35 s; the round-2 resume test below carries the modern recipe and Muon too
def test_modern_recipe_with_muon_resumes_exactly(shakespeare_dir, tmp_path):
    """Muon's momentum buffers and the WSD schedule survive a resume bit for bit (accumulation on)."""
    args = ["--data", shakespeare_dir]
    ref = baseforge(
        "train", *args, "--out", tmp_path / "ref", *sets(*TINY, *MODERN, "max_steps=8", "checkpoint_every=4")
    )
    assert ref.returncode == 0, ref.stderr
    cut = tmp_path / "cut"
    first = baseforge(
        "train", *args, "--out", cut, *sets(*TINY, *MODERN, "max_steps=8", "checkpoint_every=4")
    )
    assert first.returncode == 0
    (cut / "checkpoints" / "latest").write_text("step_0000004\n")  # roll back to the middle
    again = baseforge("train", *args, "--out", cut, "--resume")
    assert again.returncode == 0, again.stderr
    assert losses(cut) == losses(tmp_path / "ref")
    ref_w, got_w = final_weights(tmp_path / "ref"), final_weights(cut)
    assert all((ref_w[k] == got_w[k]).all() for k in ref_w)


ROUND2 = [
    "packing=bestfit",
    "attn_doc_mask=true",
    "rope_doc_reset=true",
    "attn_window_warmup=0.5",  # windows 16, 32, 48, 64 over the first 4 steps (context 64)
    "value_embeds=1",
    "unet_skips=true",
]


def test_round2_recipe_with_bestfit_packing_resumes_exactly(shakespeare_dir, tmp_path):
    """Best-fit windows, document masking, value embeddings, U-net skips and a batch-size schedule (2
    sequences for steps 0-1, 4 for 2-4, then 8: the resume at step 4 lands inside a stage): bit for bit
    across a resume."""
    items = [*TINY, *MODERN, *ROUND2, "batch_schedule=2@256,4@1024", "max_steps=8", "checkpoint_every=4"]
    ref = baseforge("train", "--data", shakespeare_dir, "--out", tmp_path / "ref", *sets(*items))
    assert ref.returncode == 0, ref.stderr
    assert "packing bestfit:" in ref.stdout and "attention: causal, within documents" in ref.stdout
    assert "batch schedule: 2 sequences for steps 0-1, 4 sequences for steps 2-4, then 8" in ref.stdout
    cut = tmp_path / "cut"
    assert baseforge("train", "--data", shakespeare_dir, "--out", cut, *sets(*items)).returncode == 0
    (cut / "checkpoints" / "latest").write_text("step_0000004\n")
    again = baseforge("train", "--data", shakespeare_dir, "--out", cut, "--resume")
    assert again.returncode == 0, again.stderr
    assert losses(cut) == losses(tmp_path / "ref")
    ref_w, got_w = final_weights(tmp_path / "ref"), final_weights(cut)
    assert {k for k in ref_w if ".ve." in k or "skip" in k or "ve_mix" in k}  # the new weights are saved
    assert all((ref_w[k] == got_w[k]).all() for k in ref_w)
