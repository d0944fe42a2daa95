"""The batch-size schedule: each step's layout, the stream windows it reads (contiguous, on any number
of processes), the run's length in tokens, the parse of batch_schedule, and a run that uses one."""

from __future__ import annotations

import pytest

from baseforge.data.batch_plan import BatchLayout, BatchPlan, parse_batch_schedule
from baseforge.errors import ConfigError, UserError
from baseforge.overrides import resolve_config
from baseforge.train.build import total_steps
from baseforge.train.metrics import read_metrics
from helpers import TINY, assert_clean_error, baseforge, sets

CONTEXT = 64


def plan(stages: str, global_batch=16, micro=4, world=1, rank=0) -> BatchPlan:
    layout = BatchLayout.resolve(
        global_batch=global_batch, micro_batch=micro, grad_accum=1, world=world, rank=rank
    )
    return BatchPlan.build(layout, parse_batch_schedule(stages), CONTEXT)


def windows_read(p: BatchPlan, step: int) -> list[int]:
    layout = p.at(step)
    return [
        w
        for micro in range(layout.grad_accum)
        for w in range(layout.start(step, micro), layout.start(step, micro) + layout.micro_batch)
    ]


def test_parse():
    assert parse_batch_schedule("") == ()
    assert parse_batch_schedule("2@1e5, 8@400000") == ((2, 100_000), (8, 400_000))
    for bad in ["2", "x@1e5", "0@1e5", "2@0", "2@1.5", "2@inf", "4@2e5,8@1e5", "2@1e5,4@1e5"]:
        with pytest.raises(ConfigError, match="batch_schedule"):
            parse_batch_schedule(bad)


def test_a_schedule_needs_the_global_batch_it_grows_to():
    with pytest.raises(ConfigError, match="batch_schedule.*global_batch"):
        resolve_config("cpu-tiny", None, ["batch_schedule=2@1e4", "global_batch=0"])


def test_stages_in_tokens_then_the_runs_own_batch():
    p = plan("2@256,8@1024")  # 2 x 64 = 128 tokens a step: 2 steps; 8 x 64 = 512: (1024 - 256) / 512 -> 2
    assert [p.at(s).global_batch for s in range(6)] == [2, 2, 8, 8, 16, 16]
    assert [p.tokens_before(s) for s in range(6)] == [0, 128, 256, 768, 1280, 2304]
    assert p.at(0).micro_batch == 2 and p.at(2).micro_batch == 4 and p.at(2).grad_accum == 2
    assert p.describe() == "batch schedule: 2 sequences for steps 0-1, 8 sequences for steps 2-3, then 16"
    assert not plan("").scheduled and plan("").describe() is None


@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_window_is_read_once_in_order_on_any_number_of_processes(world):
    """Step s reads stream windows [windows_before(s), windows_before(s + 1)), whoever reads them: so
    a batch is a pure function of the step, and N processes share one global batch."""
    ranks = [plan("4@512,8@2048", world=world, rank=r) for r in range(world)]
    read = []
    for step in range(12):
        got = sorted(w for p in ranks for w in windows_read(p, step))
        assert got == list(range(ranks[0].windows_before(step), ranks[0].windows_before(step + 1)))
        read += got
    assert read == list(range(len(read)))


def test_a_stage_takes_the_largest_micro_batch_that_divides_it():
    p = plan("12@768", global_batch=16, micro=8)
    assert (p.at(0).micro_batch, p.at(0).grad_accum) == (6, 2)


def test_stages_must_fit_the_global_batch_and_the_processes():
    with pytest.raises(UserError, match="at most the global batch"):
        plan("32@1e4", global_batch=16)
    with pytest.raises(UserError, match="divisible by the 2 processes"):
        plan("3@1e4", world=2)


@pytest.mark.parametrize("tokens", [1, 128, 129, 256, 1000, 1024, 1025, 10_000])
def test_the_fewest_steps_that_reach_a_token_budget(tokens):
    p = plan("2@256,8@1024")
    steps = p.steps_for(tokens)
    assert p.tokens_before(steps) >= tokens and (steps == 1 or p.tokens_before(steps - 1) < tokens)


def test_the_runs_length_counts_the_small_batches():
    cfg = resolve_config(
        "cpu-tiny", None, ["batch_schedule=2@256", "global_batch=16", "max_steps=0", "max_tokens=2304"]
    ).train
    # 2 steps of 2 sequences (256 tokens), then (2304 - 256) / (16 x 64) = 2 steps of the full batch
    assert total_steps(cfg, 1000, BatchPlan.from_config(cfg, CONTEXT)) == 4


def test_a_run_with_a_schedule_trains_and_says_so(shakespeare_dir, tmp_path):
    items = [*TINY, "batch_schedule=2@256,4@768", "max_steps=6", "log_every=1"]
    result = baseforge("train", "--data", shakespeare_dir, "--out", tmp_path / "run", *sets(*items))
    assert result.returncode == 0, result.stderr
    assert "batch schedule: 2 sequences for steps 0-1, 4 sequences for steps 2-3, then 8" in result.stdout
    rows = [r for r in read_metrics(tmp_path / "run") if r.step]
    assert [r.tokens for r in rows] == [128, 256, 512, 768, 1280, 1792]
    dry = baseforge("train", "--data", shakespeare_dir, "--out", tmp_path / "dry", "--dry-run", *sets(*items))
    assert "steps: 6; tokens: 1,792" in dry.stdout and "batch schedule: 2 sequences" in dry.stdout


def test_a_stage_the_processes_cannot_share_is_one_line(shakespeare_dir, tmp_path):
    items = [*TINY, "batch_schedule=16@1e4"]
    result = baseforge("train", "--data", shakespeare_dir, "--out", tmp_path / "run", *sets(*items))
    assert_clean_error(result, "batch_schedule stage 16@10000", "at most the global batch (8)")
