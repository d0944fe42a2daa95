"""The run dir as a user meets it: resume rules, the data a run remembers, the lock, checks before work,
continued pretraining, dry runs and config discovery."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest

from baseforge.train.metrics import read_metrics
from conftest import SHARED, build_data_dir
from helpers import TINY, assert_clean_error, baseforge, sets

SHORT = [*TINY, "max_steps=4", "checkpoint_every=2"]


def train(data, run, *extra, items=SHORT, **kwargs):
    return baseforge(
        "train", "--data", data, "--out", run, "--preset", "cpu-tiny", *sets(*items), *extra, **kwargs
    )


@pytest.fixture(scope="module")
def finished_run(shakespeare_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    result = train(shakespeare_dir, run)
    assert result.returncode == 0, result.stderr
    return run


def copy_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_resume_accepts_the_original_flags_and_refuses_real_changes(shakespeare_dir, finished_run, tmp_path):  # noqa: E501
    run = copy_run(finished_run, tmp_path)
    more = [*SHORT[:-2], "max_steps=6", "checkpoint_every=2"]
    # The original command with --resume appended (and a larger max_steps, an explicit train key) runs.
    result = train(shakespeare_dir, run, "--resume", "--extend", items=more)
    assert result.returncode == 0, result.stderr
    assert read_metrics(run)[-1].step == 6
    # A preset that would change the model or the recipe is refused, naming each key.
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume", "--preset", "cpu-small")
    assert_clean_error(result, "would change", "n_layer 2 -> 6")
    assert_clean_error(
        baseforge("train", "--out", run, "--resume", *sets("n_embd=32")), "shape cannot change"
    )


def test_the_run_remembers_its_data(shakespeare_dir, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    record = json.loads((run / "data.json").read_text())
    assert record["path"] == str(shakespeare_dir.resolve()) and len(record["manifest_sha256"]) == 64
    # --resume without --data continues on the run's own data, not on the built-in demo corpus.
    result = baseforge("train", "--out", run, "--resume", "--extend", *sets("max_steps=6"))
    assert result.returncode == 0, result.stderr
    assert str(shakespeare_dir.resolve()) in json.loads((run / "summary.json").read_text())["data"]
    # Other data is refused without --new-data; with it, the tokenizer must still be the same.
    text = (SHARED / "corpora" / "tinyshakespeare.txt").read_text()[:40000]
    other = build_data_dir(tmp_path / "other", text, vocab=300)
    assert_clean_error(baseforge("train", "--data", other, "--out", run, "--resume"), "--new-data")
    result = baseforge(
        "train", "--data", other, "--out", run, "--resume", "--new-data", "--extend", *sets("max_steps=8")
    )
    assert_clean_error(result, "tokenizer", "sha256")


def test_a_planted_pickle_is_refused_and_never_run(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    (latest / "trainer.json").unlink()
    (latest / "trainer.safetensors").unlink()
    (latest / "trainer.pt").write_bytes(pickle.dumps({"optimizers": Payload()}))
    assert_clean_error(
        baseforge("train", "--out", run, "--resume", "--extend", *sets("max_steps=6")), "pickle"
    )
    assert not marker.exists()


def test_a_second_trainer_on_the_same_run_dir_stops_at_once(shakespeare_dir, tmp_path):
    from baseforge.runlock import RunLock

    run = tmp_path / "run"
    with RunLock(run):  # another process holds the run dir
        assert_clean_error(train(shakespeare_dir, run), "being trained by", f"pid {os.getpid()}")
    assert train(shakespeare_dir, run).returncode == 0  # the lock went with its holder


def test_paths_are_checked_and_failures_leave_no_folder(shakespeare_dir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_clean_error(train(shakespeare_dir, a_file), "is a file")
    assert_clean_error(baseforge("export", shakespeare_dir, "--out", a_file), "is a file")
    assert_clean_error(baseforge("import-gpt2", "gpt2", "--out", a_file), "is a file")
    # An unavailable device is one line too, whichever kind.
    assert_clean_error(train(shakespeare_dir, tmp_path / "m", *sets("device=mps")), "mps", "device=cpu")
    assert_clean_error(train(shakespeare_dir, tmp_path / "c", *sets("device=cuda")), "no CUDA GPU")
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()
    fresh = tmp_path / "fresh"
    # Fails inside the trainer (after the lock made the folder): the folder goes again.
    assert_clean_error(train(shakespeare_dir, fresh, *sets("vocab_size=10")), "vocab_size")
    assert not fresh.exists()


def test_no_validation_split_is_said(tmp_path):
    data = build_data_dir(tmp_path / "d", "a b c d e f g h\n\n" * 400, vocab=280, val_every=10**9)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"].pop("val")
    (data / "manifest.json").write_text(json.dumps(manifest))
    result = train(data, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "has no validation split" in result.stdout


def test_init_from_starts_where_the_run_ended(shakespeare_dir, finished_run, tmp_path):
    more = tmp_path / "more"
    result = baseforge(
        "train", "--data", shakespeare_dir, "--out", more, "--init-from", finished_run, *sets(*SHORT)
    )
    assert result.returncode == 0, result.stderr
    ended = read_metrics(finished_run)[-1].val_loss
    started = read_metrics(more)[0]
    assert started.step == 0 and started.val_loss == pytest.approx(ended, abs=1e-6)
    x = tmp_path / "x"
    result = baseforge(
        "train", "--data", shakespeare_dir, "--out", x, "--init-from", finished_run, *sets("n_layer=3")
    )
    assert_clean_error(result, "--init-from takes the model's shape")


def test_init_from_an_exported_folder_starts_where_the_run_ended(shakespeare_dir, finished_run, tmp_path):
    folder = tmp_path / "hf"
    assert baseforge("export", finished_run, "--out", folder).returncode == 0
    more = tmp_path / "more"
    result = baseforge(
        "train", "--data", shakespeare_dir, "--out", more, "--init-from", f"hf:{folder}", *sets(*SHORT)
    )
    assert result.returncode == 0, result.stderr
    ended = read_metrics(finished_run)[-1].val_loss
    assert read_metrics(more)[0].val_loss == pytest.approx(ended, abs=1e-5)


def test_dry_run_and_help_config(shakespeare_dir, tmp_path):
    result = train(shakespeare_dir, tmp_path / "run", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "parameters:" in result.stdout and "steps: 4;" in result.stdout
    assert "tokens per step: 512" in result.stdout
    assert not (tmp_path / "run").exists()
    keys = baseforge("train", "--help-config").stdout.splitlines()
    entries = [i for i, line in enumerate(keys) if line.startswith("  ") and not line.startswith("      ")]
    undocumented = [keys[i] for i in entries if i + 1 >= len(keys) or not keys[i + 1].startswith("      ")]
    assert len(entries) > 50 and not undocumented
    assert "  precision = 'auto'  (auto | bf16 | fp16 | fp32)" in keys
    presets = baseforge("presets")
    assert presets.returncode == 0 and "gpt2-small-seed       163.0M" in presets.stdout


def test_stop_message_says_when_nothing_was_saved(tmp_path):
    from baseforge.rundir import RunDir
    from baseforge.train.reporter import Reporter

    said = []
    Reporter(RunDir(tmp_path / "run"), is_main=True, log=said.append).stopped(7, saved=False)
    assert "no checkpoint saved" in said[0] and "step 7" in said[0]
    Reporter(RunDir(tmp_path / "run"), is_main=False, log=said.append).stopped(7, saved=True)
    assert len(said) == 1  # other ranks say nothing


def test_tensorboard_holds_every_metric_of_the_run(shakespeare_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = train(shakespeare_dir, run, items=[*SHORT, "trackers=tensorboard"])
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    checked = 0
    for row in read_metrics(run):
        for key, value in row.to_json().items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                logged = {e.step: e.value for e in events.Scalars(key)}
                assert logged[row.step] == pytest.approx(value, rel=1e-6), (key, row.step)
                checked += 1
    assert checked > 40  # loss, val_loss, lr, grad_norm, tokens_per_s, ... at every logged step


def test_wandb_offline_run_continues_after_resume(shakespeare_dir, tmp_path):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    assert train(shakespeare_dir, run, items=[*SHORT, "trackers=wandb"], env=env).returncode == 0
    first = json.loads((run / "trackers.json").read_text())["wandb"]["id"]
    result = baseforge("train", "--out", run, "--resume", "--extend", *sets("max_steps=6"), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "trackers.json").read_text())["wandb"]["id"] == first
    runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert runs and all(name.endswith(first) for name in runs)


def test_eval_refuses_data_whose_same_named_tokenizer_means_other_tokens(finished_run, tmp_path):
    text = (SHARED / "corpora" / "tinyshakespeare.txt").read_text()
    # Same name and size as the run's tokenizer (a 512-token BPE), trained on other text: other ids.
    other = build_data_dir(tmp_path / "other", text[len(text) // 2 :])
    assert json.loads((other / "manifest.json").read_text())["tokenizer"]["name"] == "bpe:512"
    assert_clean_error(baseforge("eval", finished_run, "--data", other), "sha256")


def test_prepare_budget_is_the_presets_token_budget():
    from baseforge.cli.prepare import budget_tokens

    assert budget_tokens("gpt2-small-seed") == 20 * 163_009_536  # the write-up's 3.26B tokens
    assert budget_tokens("gpt2-speedrun") == 1_000_000_000  # a budget in tokens (it was 20 x params)


def test_run_dir_names_every_path_and_checkpoint_names_round_trip(tmp_path):
    from baseforge.rundir import RunDir, step_name, step_of

    run = RunDir(tmp_path / "run")
    assert run.checkpoint(1000) == tmp_path / "run" / "checkpoints" / "step_0001000"
    assert step_of(step_name(12_345_678)) == 12_345_678 and step_of("step_0001000") == 1000
    assert step_of(".step_0001000.tmp") is None and step_of("step_12") is None and step_of("notes") is None
    assert {p.name for p in (run.config, run.metrics, run.summary, run.sample, run.data_record)} == {
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "sample.txt",
        "data.json",
    }
    with pytest.raises(ValueError):
        run.pointer("../elsewhere")
    assert not run.has_checkpoint() and not (tmp_path / "run").exists()  # naming touches nothing
