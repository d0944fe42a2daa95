"""Making a run longer on resume: a length change that would move a decaying schedule's learning rate is
refused with the choice, `--extend` keeps the past and continues from the current rate, WSD before its
decay extends as it is, and an extended run resumes exactly (the metrics' lr column shows each)."""

from __future__ import annotations

import shutil

import pytest

from baseforge.overrides import resolve_config
from baseforge.train.metrics import read_metrics
from baseforge.train.schedule import Schedule, Tail, continued
from helpers import TINY, assert_clean_error, baseforge, sets

RUN = [*TINY, "eval_every=100", "checkpoint_every=4"]


def train(data, run, *items, flags=()):
    return baseforge("train", "--data", data, "--out", run, "--preset", "cpu-tiny", *flags, *sets(*items))


def lrs(run) -> dict[int, float]:
    return {r.step: r.lr for r in read_metrics(run) if r.lr is not None}


@pytest.fixture(scope="module")
def cosine_run(shakespeare_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("extend") / "run"
    assert train(shakespeare_dir, run, *RUN, "max_steps=8").returncode == 0
    return run


def test_a_longer_cosine_run_is_refused_with_the_choice_and_extend_never_moves_the_rate_back(
    shakespeare_dir, cosine_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(cosine_run, run)
    (run / "checkpoints" / "latest").write_text("step_0000004\n")  # resume mid-way, at step 4
    before = lrs(run)
    refused = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume", *sets("max_steps=16"))
    assert_clean_error(refused, "--extend", "re-stretches the cosine schedule")
    extended = baseforge(
        "train", "--data", shakespeare_dir, "--out", run, "--resume", "--extend", *sets("max_steps=16")
    )
    assert extended.returncode == 0, extended.stderr
    after = lrs(run)
    assert all(after[s] == before[s] for s in range(1, 5))  # the past is kept
    tail = [after[s] for s in range(5, 17)]
    assert tail[0] == pytest.approx(before[5], rel=1e-6)  # continues from the rate it had
    assert all(b <= a + 1e-12 for a, b in zip(tail, tail[1:]))  # then never rises
    assert tail[-1] == min(tail) and tail[-1] < tail[0]  # and decays by the end
    # The extension is part of the run: resuming it again from step 12 replays the same rates.
    (run / "checkpoints" / "latest").write_text("step_0000012\n")
    again = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume")
    assert again.returncode == 0, again.stderr
    assert lrs(run) == after


def test_a_wsd_run_before_its_decay_extends_as_it_is(shakespeare_dir, tmp_path):
    run = tmp_path / "run"
    assert (
        train(shakespeare_dir, run, *RUN, "schedule=wsd", "decay_fraction=0.25", "max_steps=8").returncode
        == 0
    )
    (run / "checkpoints" / "latest").write_text("step_0000004\n")  # stable at 1.0 there, either length
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume", *sets("max_steps=16"))
    assert result.returncode == 0, result.stderr
    rates = lrs(run)
    assert rates[12] == rates[5] and rates[16] < rates[12]  # decays over the new last quarter only


def test_extend_needs_resume(shakespeare_dir, tmp_path):
    result = baseforge("train", "--data", shakespeare_dir, "--out", tmp_path / "x", "--extend")
    assert_clean_error(result, "--extend")


def test_extending_a_fully_decayed_run_is_refused_without_extend_lr_and_rewarms_with_it(
    shakespeare_dir, tmp_path
):
    """It trained the added steps at learning rate 0 (a finished WSD run decays to min_lr_ratio 0), the
    validation loss bit-identical before and after. Now: refused naming the choice; with extend_lr, a
    short re-warm to that fraction of the peak, then a decay again; and the extension resumes exactly."""
    run = tmp_path / "run"
    wsd = ("schedule=wsd", "min_lr_ratio=0", "decay_fraction=0.25", "lr=1e-3")
    assert train(shakespeare_dir, run, *RUN, *wsd, "max_steps=8").returncode == 0
    assert lrs(run)[8] == 0.0
    longer = ("train", "--data", shakespeare_dir, "--out", run, "--resume", "--extend")
    refused = baseforge(*longer, *sets("max_steps=16"))
    assert_clean_error(refused, "decayed to 0x the peak by step 8", "extend_lr", "before the decay")
    extended = baseforge(*longer, *sets("max_steps=16", "extend_lr=0.5"))
    assert extended.returncode == 0, extended.stderr
    rows = {r.step: r for r in read_metrics(run)}
    ratio = {s: r.lr / 1e-3 for s, r in rows.items() if r.lr is not None}
    # Re-warm over min(warmup_steps 3, a quarter of the 8 added steps) = 2 steps, hold, decay over 2.
    assert [ratio[s] for s in range(9, 17)] == pytest.approx([0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.0])
    vals = [r.val_loss for r in read_metrics(run) if r.val_loss is not None]
    assert vals[-1] != vals[-2]  # the added steps trained
    # The extension is part of the run: resumed from step 12, it replays the same rates and losses.
    (run / "checkpoints" / "latest").write_text("step_0000012\n")
    again = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume")
    assert again.returncode == 0, again.stderr
    replayed = {r.step: r for r in read_metrics(run)}
    assert [replayed[s].lr for s in range(9, 17)] == [rows[s].lr for s in range(9, 17)]
    assert [replayed[s].loss for s in range(13, 17)] == [rows[s].loss for s in range(13, 17)]


def test_extend_lr_only_rewarms_a_rate_below_it():
    cfg = resolve_config("cpu-tiny", None, ["schedule=cosine", "warmup_steps=4"]).train
    old, new = (Schedule.from_config(cfg, n) for n in (100, 200))
    assert continued(old, new, 50, True, 0.3) == Tail(50, old.multiplier(50), old.multiplier(50))
    finished = continued(old, new, 100, True)  # cosine's floor, min_lr_ratio 0.1, is above the 5% floor
    assert finished == Tail(100, pytest.approx(0.1), pytest.approx(0.1))
    rewarm = continued(old, new, 100, True, 0.6)
    assert rewarm.warmup == 4 and rewarm.to_lr == 0.6
    tail = Schedule.from_config(cfg, 200, rewarm)
    assert [round(tail.multiplier(s), 6) for s in (100, 103, 150)] == [0.225, 0.6, 0.6]
    assert tail.multiplier(199) == pytest.approx(0.1)
