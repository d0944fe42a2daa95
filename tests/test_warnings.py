"""What a user would regret, said before it happens: the dry run and the run print the same warnings
(many passes over the data, a model too big for the machine, a GPU-sized run on a CPU); a bad config
value leaves no run dir behind; the end-of-run sample is prompted from the run's own data."""

from __future__ import annotations

import signal

from helpers import TINY, assert_clean_error, baseforge, popen, sets


def test_dry_run_warns_of_many_passes_and_a_gpu_sized_run_on_a_cpu(shakespeare_dir, tmp_path):
    result = baseforge("train", "--data", shakespeare_dir, "--out", tmp_path / "r", "--preset", "gpt2-large",
                       "--dry-run", *sets("device=cpu"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert any("passes over the" in w for w in warnings), result.stdout
    assert any("GiB" in w and "lower micro_batch" in w for w in warnings), result.stdout
    assert any("one step takes about" in w and "wants a GPU" in w for w in warnings), result.stdout
    assert not (tmp_path / "r").exists()


def test_the_run_prints_the_dry_runs_warnings(shakespeare_dir, tmp_path):
    items = [*TINY, "max_steps=6000", "eval_every=1000", "checkpoint_every=1000"]  # 6 passes
    dry = baseforge("train", "--data", shakespeare_dir, "--out", tmp_path / "r", "--dry-run", *sets(*items))
    warned = [line for line in dry.stdout.splitlines() if line.startswith("warning:")]
    assert warned and "passes over the" in warned[0], dry.stdout
    real = popen("train", "--data", shakespeare_dir, "--out", tmp_path / "r", *sets(*items))
    try:
        first = real.stdout.readline()
    finally:
        real.send_signal(signal.SIGTERM)
        real.communicate(timeout=120)
    assert first.strip() == warned[0]  # the same check, before anything is built


def test_a_tracker_typo_leaves_no_run_dir(shakespeare_dir, tmp_path):
    result = baseforge(
        "train", "--data", shakespeare_dir, "--out", tmp_path / "r", *sets(*TINY, "trackers=tensorbord")
    )
    assert_clean_error(result, "unknown tracker tensorbord")
    assert not (tmp_path / "r").exists()


def test_the_sample_is_prompted_from_the_runs_own_data(shakespeare_dir, tmp_path):
    run = tmp_path / "r"
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, "--preset", "cpu-tiny",
                       *sets(*TINY, "max_steps=2", "sample_tokens=8"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    from baseforge.data.loader import TokenData

    data = TokenData(shakespeare_dir, 64, 0)
    start = data.tokenizer.decode(next(iter(data.val_batches(8, 1)))[0][0, :8].tolist())
    assert (run / "sample.txt").read_text().startswith(start.replace("<|endoftext|>", ""))
    assert not (run / "sample.txt").read_text().startswith("def ")
