"""Making a run longer on resume: a length change that would move a decaying schedule's learning rate is
refused with the choice, `--extend` keeps the past and continues from the current rate, WSD before its
decay extends as it is, and an extended run resumes exactly (the metrics' lr column shows each)."""

from __future__ import annotations

import shutil

import pytest

from baseforge.train.metrics import read_metrics
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
