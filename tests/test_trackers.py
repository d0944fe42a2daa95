"""Experiment trackers: every metrics row reaches TensorBoard / W&B; failures never stop training."""

from __future__ import annotations

import json
import sys

import pytest

from baseforge.errors import UserError
from baseforge.train import trackers as tr

# Rows shaped like metrics.jsonl: validation and HellaSwag points only on some steps.
ROWS = [
    {"step": 0, "tokens": 0, "loss": None, "val_loss": 8.3},
    {
        "step": 1,
        "tokens": 512,
        "loss": 8.1,
        "lr": 1e-4,
        "grad_norm": 2.5,
        "tokens_per_s": 900.0,
        "skipped": 0,
    },
    {
        "step": 2,
        "tokens": 1024,
        "loss": 7.7,
        "lr": 2e-4,
        "grad_norm": 1.5,
        "tokens_per_s": 950.5,
        "val_loss": 7.9,
    },
    {"step": 3, "tokens": 1536, "loss": 7.2, "lr": 3e-4, "grad_norm": 1.1, "hellaswag_acc_norm": 0.25},
]


def read_scalars(run_dir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / tr.TENSORBOARD_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def expected(rows) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                out.setdefault(key, {})[row["step"]] = value
    return out


def test_tensorboard_gets_every_numeric_key_at_its_step(tmp_path):
    pytest.importorskip("tensorboard")
    warnings = []
    trackers = tr.open_trackers(["tensorboard"], tmp_path, {"model": {"n_layer": 2}}, log=warnings.append)
    assert trackers.names == ["tensorboard"] and warnings == []
    for row in ROWS:
        trackers.log(row, row["step"])
    trackers.close()
    got = read_scalars(tmp_path)
    want = expected(ROWS)
    assert set(got) == set(want)  # loss=None on step 0 is left out, nothing else
    for key, points in want.items():
        assert got[key] == pytest.approx(points, rel=1e-6), key


def test_tensorboard_resume_shows_redone_steps_once(tmp_path):
    pytest.importorskip("tensorboard")
    first = tr.open_trackers(["tensorboard"], tmp_path, {}, log=print)
    for row in ROWS:
        first.log(row, row["step"])
    first.close()
    # Killed after step 3, resumed from the checkpoint at step 2: steps 2 and 3 are logged again.
    second = tr.open_trackers(["tensorboard"], tmp_path, {}, resume=True, log=print, start_step=2)
    for row in ROWS[2:]:
        second.log({**row, "loss": row["loss"] + 1}, row["step"])
    second.close()
    loss = read_scalars(tmp_path)["loss"]
    assert loss == pytest.approx({1: 8.1, 2: 8.7, 3: 8.2})


def test_wandb_offline_writes_run_dir_and_resume_reuses_the_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "baseforge-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    warnings = []
    first = tr.open_trackers(["wandb"], tmp_path, {"train": {"lr": 1e-3}}, log=warnings.append)
    assert first.names == ["wandb"], warnings
    run_id = first.trackers[0].id
    for row in ROWS:
        first.log(row, row["step"])
    first.close()
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}")), list((tmp_path / "wandb").iterdir())
    saved = json.loads((tmp_path / tr.STATE_FILE).read_text())["wandb"]
    assert saved == {"id": run_id, "project": "baseforge-test"}

    resumed = tr.open_trackers(["wandb"], tmp_path, {}, resume=True, log=warnings.append)
    assert resumed.trackers[0].id == run_id
    resumed.close()
    fresh = tr.open_trackers(["wandb"], tmp_path / "other", {}, log=warnings.append)
    assert fresh.trackers[0].id != run_id
    fresh.close()
    assert warnings == []


def test_missing_package_is_one_warning_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    monkeypatch.setattr(tr.importlib.util, "find_spec", lambda name: None)
    warnings = []
    trackers = tr.open_trackers(["wandb"], tmp_path, {}, log=warnings.append)
    assert trackers.names == []
    assert len(warnings) == 1 and 'pip install "baseforge[wandb]"' in warnings[0]
    trackers.log(ROWS[1], 1)  # nothing to send to, no error
    trackers.close()


def test_wandb_without_key_online_is_one_warning(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    warnings = []
    trackers = tr.open_trackers(["tensorboard", "wandb"], tmp_path / "run", {}, log=warnings.append)
    assert len(warnings) == 1 and "tracker wandb off" in warnings[0] and "API key" in warnings[0], warnings
    assert trackers.names == ["tensorboard"]  # the other tracker carries on
    trackers.close()


class Broken:
    name = "broken"

    def log(self, row, step):
        raise ConnectionError("network gone")

    def log_config(self, config):
        pass

    def close(self):
        pass


class Recorder:
    name = "recorder"

    def __init__(self):
        self.rows = []

    def log(self, row, step):
        self.rows.append(step)

    def log_config(self, config):
        pass

    def close(self):
        pass


def test_a_tracker_failing_later_is_dropped_with_one_warning():
    warnings = []
    recorder = Recorder()
    trackers = tr.Trackers([Broken(), recorder], log=warnings.append)
    for row in ROWS:
        trackers.log(row, row["step"])
    assert recorder.rows == [0, 1, 2, 3]
    assert len(warnings) == 1 and "broken" in warnings[0] and "network gone" in warnings[0]
    assert trackers.names == ["recorder"]


def test_unknown_tracker_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="tensorboard, wandb"):
        tr.open_trackers(["tensorbord"], tmp_path, {})


def test_only_numbers_are_sent():
    assert tr.numeric(
        {"step": 5, "loss": 2.0, "skipped": 0, "flag": True, "name": "x", "val_loss": None}
    ) == {
        "loss": 2.0,
        "skipped": 0.0,
    }
