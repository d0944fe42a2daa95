"""The trainer: gradient accumulation, atomic checkpoints, non-finite steps, errors, the metrics/charts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from baseforge.overrides import resolve_config
from baseforge.train.checkpoint.format import find_checkpoint, load_model
from baseforge.train.loop import Trainer
from baseforge.train.metrics import read_metrics
from helpers import TINY, assert_clean_error, baseforge, cli_env, sets


def quiet(*_):
    pass


def run_in_process(data, run, *overrides):
    config = resolve_config("cpu-tiny", None, [*TINY, *overrides])
    trainer = Trainer(config, data, run, log=quiet)
    trainer.run()
    return trainer


def test_grad_accum_matches_one_big_batch(shakespeare_dir, tmp_path):
    common = ["dropout=0", "max_steps=6", "checkpoint_every=100", "eval_every=100"]
    a = run_in_process(shakespeare_dir, tmp_path / "a", *common, "micro_batch=2", "global_batch=8")
    b = run_in_process(shakespeare_dir, tmp_path / "b", *common, "micro_batch=8", "global_batch=8")
    assert a.built.layout.grad_accum == 4 and b.built.layout.grad_accum == 1
    la = [r.loss for r in read_metrics(tmp_path / "a")][1:]
    lb = [r.loss for r in read_metrics(tmp_path / "b")][1:]
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-5)
    for (name, pa), pb in zip(a.built.views.plain.named_parameters(), b.built.views.plain.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)


def test_run_dir_artifacts(shakespeare_dir, tmp_path):
    run = tmp_path / "run"
    run_in_process(shakespeare_dir, run, "max_steps=12", "checkpoint_every=4", "keep_last=2")
    rows = read_metrics(run)
    assert [r.step for r in rows] == list(range(0, 13))
    assert rows[0].loss is None and rows[0].val_loss > rows[-1].val_loss
    rows = rows[1:]
    for key in (
        "step",
        "tokens",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "mfu",
        "clip_frac",
        "peak_rss_gib",
    ):
        assert getattr(rows[0], key) is not None, key
    assert [r.step for r in rows if r.val_loss is not None] == [5, 10, 12]
    assert (run / "charts" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    best = (run / "checkpoints" / "best").read_text().strip()
    assert ckpts[-2:] == ["step_0000008", "step_0000012"] and len(set(ckpts) - {best}) <= 2
    saved = json.loads((find_checkpoint(run) / "config.json").read_text())
    assert saved["model"]["n_embd"] == 64 and saved["train"]["max_steps"] == 12
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["tokens"] == 12 * 8 * 64
    model, tokenizer, _ = load_model(run)
    assert model.config.vocab_size == tokenizer.vocab_size == 512


def test_kill_while_writing_checkpoint_keeps_latest_valid(shakespeare_dir, tmp_path):
    """A process SIGKILLed in the middle of writing a checkpoint leaves `latest` on a complete one."""
    run = tmp_path / "run"
    run_in_process(shakespeare_dir, run, "max_steps=4", "checkpoint_every=4")
    before = find_checkpoint(run)
    child = textwrap.dedent(f"""
        import os, signal, torch
        from baseforge.train.checkpoint import format as ckpt
        from baseforge.train.loop import Trainer
        from baseforge.overrides import resolve_config
        def dying_save(tensors, path, *a, **k):
            with open(path, "wb") as f:
                f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)  # die in the middle of the write
        ckpt.save_file = dying_save
        config = resolve_config("cpu-tiny", None, {[*TINY, "max_steps=8", "checkpoint_every=4"]!r})
        data, out = {str(shakespeare_dir)!r}, {str(run)!r}
        Trainer(config, data, out, resume=True, extend=True, log=lambda *a: None).run()
    """)
    proc = subprocess.run([sys.executable, "-c", child], env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert find_checkpoint(run) == before  # still the step-4 checkpoint, complete
    assert not (run / "checkpoints" / "step_0000008").exists()
    load_model(run)  # and it loads
    # The resumed run cleans up the half-written temp dir and finishes.
    result = baseforge(
        "train", "--data", shakespeare_dir, "--out", run, "--resume", "--extend", *sets("max_steps=8")
    )
    assert result.returncode == 0, result.stderr
    assert find_checkpoint(run).name == "step_0000008"
    assert not list((run / "checkpoints").glob(".step_*"))


def test_non_finite_steps_stop_clearly_and_keep_last_good_checkpoint(shakespeare_dir, tmp_path):
    run = tmp_path / "run"
    run_in_process(shakespeare_dir, run, "max_steps=2", "checkpoint_every=2")
    result = baseforge(
        "train",
        "--data",
        shakespeare_dir,
        "--out",
        run,
        "--resume",
        *sets("max_steps=40", "lr=1e30", "max_bad_steps=3", "grad_clip=0"),
    )
    assert_clean_error(result, "not finite for 3 steps in a row")
    assert find_checkpoint(run).name == "step_0000002"


def test_user_errors_are_one_line(shakespeare_dir, tmp_path):
    run = tmp_path / "run"
    data = ["--data", shakespeare_dir, "--out", run]
    assert_clean_error(baseforge("train", *data, *sets("lrr=1")), "unknown config key 'lrr'", "'lr'")
    assert_clean_error(baseforge("train", *data, *sets("lr=-1")), "lr", "positive")
    assert_clean_error(baseforge("train", *data, *sets("micro_batch=many")), "micro_batch")
    assert_clean_error(baseforge("train", *data, "--preset", "gpt3"), "unknown preset")
    assert_clean_error(baseforge("train", "--data", tmp_path / "nope", "--out", run), "does not exist")
    assert_clean_error(
        baseforge("train", *data, "--preset", "gpt2-124m", *sets("vocab_size=256")),
        "vocab_size 256 is smaller",
    )
    assert not run.exists() or not (run / "checkpoints").exists()
    # An existing run is never overwritten without --resume.
    run_in_process(shakespeare_dir, run, "max_steps=2", "checkpoint_every=2")
    weights = (find_checkpoint(run) / "model.safetensors").read_bytes()
    assert_clean_error(baseforge("train", *data, *sets(*TINY)), "already holds a run", "--resume")
    assert (find_checkpoint(run) / "model.safetensors").read_bytes() == weights


def test_resume_refuses_other_tokenizer(shakespeare_dir, tmp_path):
    from conftest import build_data_dir

    text = "\n\n".join(
        f"paragraph {i}: " + "the quick brown fox jumps over the lazy dog " * 20 for i in range(200)
    )
    other = build_data_dir(tmp_path / "other", text, vocab=300)
    run = tmp_path / "run"
    run_in_process(shakespeare_dir, run, "max_steps=2", "checkpoint_every=2")
    assert_clean_error(baseforge("train", "--data", other, "--out", run, "--resume"), "tokenizer")


def test_micro_batch_auto_tries_real_steps_and_keeps_the_run_reproducible(shakespeare_dir, tmp_path, capsys):
    # On a CPU nothing runs out of memory, so the search ends at the whole per-process batch; the
    # steps it tried must not change the run (the model and RNG are restored afterwards).
    logs = []
    config = resolve_config(
        "cpu-tiny", None, [*TINY, "micro_batch=auto", "global_batch=8", "max_steps=3", "checkpoint_every=3"]
    )
    auto = Trainer(config, shakespeare_dir, tmp_path / "auto", log=logs.append)
    assert not (tmp_path / "auto").exists()  # building a trainer writes nothing
    auto.setup()
    assert not (tmp_path / "auto").exists()
    layout = auto.built.layout
    assert (layout.micro_batch, layout.grad_accum) == (8, 1)
    assert any("micro_batch auto: 8 fits; gradient accumulation 1" in line for line in logs)
    auto.run()
    fixed = run_in_process(
        shakespeare_dir,
        tmp_path / "fixed",
        "micro_batch=8",
        "global_batch=8",
        "max_steps=3",
        "checkpoint_every=3",
    )
    assert [r.loss for r in read_metrics(tmp_path / "auto")] == [
        r.loss for r in read_metrics(tmp_path / "fixed")
    ]
    assert fixed.built.layout.micro_batch == 8
