"""Averaged weights (ema_decay): the EMA's arithmetic, its evaluation, and that it is state: a resumed run's
average is the uninterrupted one's bit for bit, and two processes average as one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from baseforge.config import TrainConfig
from baseforge.errors import ConfigError, UserError
from baseforge.model import GPT, ModelConfig
from baseforge.train.average import WeightAverage
from baseforge.train.charts import _read_series
from baseforge.train.checkpoint.format import EMA_FILE, find_checkpoint
from baseforge.train.metrics import read_metrics
from helpers import TINY, baseforge, sets, torchrun

RUN = [*TINY, "dropout=0", "max_steps=8", "checkpoint_every=4", "eval_every=2", "ema_decay=0.8"]


def small_model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=64, context=16, n_layer=1, n_head=2, n_embd=16, tie_weights=True))


def test_the_average_starts_at_its_step_and_moves_by_the_decay():
    model = small_model()
    average = WeightAverage(decay=0.75, start=2)
    first = next(model.parameters())
    average.update(model, 1)
    assert not average.started  # before its start: nothing kept
    average.update(model, 2)
    assert average.weights is not None
    start = first.detach().clone()
    assert torch.equal(average.weights[0], start)  # starts as a copy of the weights
    with torch.no_grad():
        first.add_(1.0)
    average.update(model, 3)
    torch.testing.assert_close(average.weights[0], 0.75 * start + 0.25 * (start + 1.0))


def test_swapped_in_evaluates_the_average_and_puts_the_weights_back():
    model = small_model()
    average = WeightAverage(decay=0.5, start=0)
    average.update(model, 0)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with average.swapped_in(model):
        for k, v in model.state_dict().items():
            assert torch.equal(v, raw[k]), k  # the average (of one point: the first weights)
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_the_average_round_trips_through_its_tensors_with_a_tied_head():
    model = small_model()
    average = WeightAverage(decay=0.9, start=0)
    average.update(model, 0)
    tensors = average.tensors(model)
    assert set(tensors) == set(model.state_dict())
    again = WeightAverage(decay=0.9, start=0)
    again.load(model, {k: v for k, v in tensors.items() if k != "lm_head.weight"})  # stored once, as wte
    assert all(torch.equal(a, b) for a, b in zip(average.weights or [], again.weights or []))


@pytest.mark.parametrize("key,value", [("ema_decay", 1.0), ("ema_decay", -0.1), ("ema_start", 1.0)])
def test_out_of_range_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**{key: value})


def test_fsdp_is_refused_in_one_line():
    with pytest.raises(UserError, match="ema_decay is not supported with FSDP"):
        WeightAverage.from_config(TrainConfig(ema_decay=0.9, parallel="fsdp"), 100)


def ema_rows(run) -> list[tuple[int, float]]:
    return [(r.step, r.evals["ema_val_loss"]) for r in read_metrics(run) if "ema_val_loss" in r.evals]


def averaged(run) -> dict[str, torch.Tensor]:
    return load_file(str(find_checkpoint(run) / EMA_FILE))


@pytest.mark.parametrize("start", ["0.25", "0.75"], ids=["started-before-the-checkpoint", "started-after-it"])
def test_a_resumed_run_averages_as_the_uninterrupted_one(shakespeare_dir, tmp_path, start):
    items = [*RUN, f"ema_start={start}"]
    ref = tmp_path / "ref"
    result = baseforge("train", "--data", shakespeare_dir, "--out", ref, *sets(*items))
    assert result.returncode == 0, result.stderr
    assert "averaged weights: an EMA with decay 0.8 (about the last 5 steps) from step" in result.stdout
    assert "(averaged weights " in result.stdout  # the last line gives both losses
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["final_ema_val_loss"] == ema_rows(ref)[-1][1]
    series = _read_series(ref, "adamw")
    assert series is not None and "validation, averaged weights" in series[1]  # a line of its own
    first = 2 if start == "0.25" else 6  # evaluated from the step the average starts at
    assert [s for s, _ in ema_rows(ref)] == list(range(first, 9, 2))
    middle = ref / "checkpoints" / "step_0000004"
    assert (middle / EMA_FILE).is_file() == (start == "0.25")
    cut = tmp_path / "cut"
    assert baseforge("train", "--data", shakespeare_dir, "--out", cut, *sets(*items)).returncode == 0
    (cut / "checkpoints" / "latest").write_text("step_0000004\n")  # roll back to the middle
    again = baseforge("train", "--data", shakespeare_dir, "--out", cut, "--resume")
    assert again.returncode == 0, again.stderr
    assert ema_rows(cut) == ema_rows(ref)
    want, got = averaged(ref), averaged(cut)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_a_damaged_average_is_refused_on_resume(shakespeare_dir, tmp_path):
    run = tmp_path / "run"
    items = [*RUN, "ema_start=0"]
    assert baseforge("train", "--data", shakespeare_dir, "--out", run, *sets(*items)).returncode == 0
    (run / "checkpoints" / "latest").write_text("step_0000004\n")
    path = run / "checkpoints" / "step_0000004" / EMA_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    again = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume")
    assert again.returncode != 0
    assert "ema.safetensors fails its checksum" in again.stderr
    assert "Traceback" not in again.stderr


def test_two_processes_average_as_one(shakespeare_dir, tmp_path):
    items = [*RUN, "ema_start=0.25", "micro_batch=2", "dist_timeout_s=60"]
    one = tmp_path / "one"
    assert baseforge("train", "--data", shakespeare_dir, "--out", one, *sets(*items)).returncode == 0
    two = tmp_path / "two"
    result = torchrun(2, "train", "--data", shakespeare_dir, "--out", two, *sets(*items))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [s for s, _ in ema_rows(two)] == [s for s, _ in ema_rows(one)]
    assert [v for _, v in ema_rows(two)] == pytest.approx([v for _, v in ema_rows(one)], rel=1e-4)
    want, got = averaged(one), averaged(two)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_eval_sample_and_export_read_the_averaged_weights(shakespeare_dir, tmp_path):
    run = tmp_path / "run"
    trained = baseforge("train", "--data", shakespeare_dir, "--out", run, *sets(*RUN, "ema_start=0"))
    assert trained.returncode == 0, trained.stderr
    raw = baseforge("eval", run, "--data", shakespeare_dir, "--json")
    ema = baseforge("eval", run, "--which", "ema", "--data", shakespeare_dir, "--json")
    assert raw.returncode == 0 and ema.returncode == 0, raw.stderr + ema.stderr
    assert json.loads(raw.stdout) != json.loads(ema.stdout)  # other weights, another loss
    out = tmp_path / "hf"
    export = baseforge("export", run, "--which", "ema", "--out", out)
    assert export.returncode == 0, export.stderr
    assert "average of the last steps' weights" in (out / "README.md").read_text()
    plain = tmp_path / "plain"
    trained = baseforge("train", "--data", shakespeare_dir, "--out", plain, *sets(*TINY, "max_steps=2"))
    assert trained.returncode == 0, trained.stderr
    refused = baseforge("sample", plain, "--which", "ema")
    assert refused.returncode != 0
    assert "has no averaged weights" in refused.stderr and "Traceback" not in refused.stderr
