"""Issue #34, items 2 and 8 (round 2): each figure a run reports says what it is over and what it rests on.

The progress line: the last interval's figures are labelled with the steps they cover, the ETA names the
rate it comes from. The learning-rate chart of a Muon run: one line per optimizer, each labelled. A run
started with --init-from records where its model came from. In-training HellaSwag: a standard error
beside every accuracy, shown as ± on the report."""

from __future__ import annotations

import io
import json
import re

import pytest

from baseforge.progress import Progress
from baseforge.rundir import RunDir
from baseforge.train.metrics import MetricsRow
from baseforge.train.reporter import Reporter
from baseforge.train.state import LogInterval, RunState
from helpers import Clock, Terminal

# --- 1. the progress line: one span per figure, and a stated rate for the ETA ---------------------


def test_the_eta_names_the_rate_it_is_computed_from():
    clock = Clock()
    bar = Progress(1000, "train", "step", initial=900, file=io.StringIO(), clock=clock)
    for _ in range(10):
        clock.t += 3.0
        bar.update(1)
    # 90 steps left at this process's mean of 1/3 step/s since the resume: 4m30s, and the line says so.
    assert "eta 4m30s at 0.333 step/s (mean since resume)" in bar.line()
    fresh = Progress(100, "answer", "item", file=io.StringIO(), clock=clock)
    clock.t += 2.0
    fresh.update(4)
    assert fresh.line().endswith("eta 0m48s at 2 item/s (mean since start)")


def test_the_terminal_bar_shows_the_same_rate_and_says_what_it_is():
    out = Terminal()
    with Progress(10, "train", "step", file=out) as bar:
        assert bar.bar is not None and bar.bar.smoothing == 0  # the mean since start, as the plain line
        bar.update(2, loss="3.5000")
    text = out.getvalue()
    assert "step/s (mean since start)" in text and "loss 3.5000" in text


def test_a_metrics_row_on_the_line_names_the_steps_its_figures_cover():
    lines: list[str] = []
    reporter = Reporter(RunDir("unused"), is_main=True, log=lines.append)
    first = MetricsRow(step=10, tokens=5120, loss=2.0, tokens_per_s=5000.0, mfu=0.031, val_loss=2.1)
    last = MetricsRow(step=11, tokens=5632, loss=1.9, tokens_per_s=4000.0, mfu=0.025)
    with reporter.progress(total=11, start=0):
        reporter.row(first, span=10)
        reporter.row(last, span=1)
    assert "last 10 steps: loss 2.0000, 5.0k tok/s, mfu 3.1%" in lines[0]
    assert "val 2.1000 at step 10" in lines[0]
    # The last row covers one step; the validation shown is still step 10's, and says so.
    assert "last step: loss 1.9000, 4.0k tok/s, mfu 2.5%" in lines[1] and "last 10 steps" not in lines[1]
    assert "val 2.1000 at step 10" in lines[1]
    assert re.search(r"eta \S+ at \S+ step/s \(mean since start\)", lines[0])


def test_the_interval_counts_its_steps_across_a_checkpoint():
    state = RunState()
    for applied in (True, False, True):  # a skipped step is in the span: its tokens and time are
        state.record_step(2.0, 1.0, applied, clip=0.0)
    assert state.interval.span == 3 and state.interval.steps == 2
    restored = RunState.from_json(json.loads(json.dumps(state.to_json())))
    assert restored.interval.span == 3
    older = state.to_json()
    del older["interval"]["span"]  # a checkpoint from before the span was kept: its applied steps
    assert RunState.from_json(older).interval == LogInterval(
        loss_sum=4.0, steps=2, gnorm_sum=2.0, clipped=0, span=2
    )


# --- 2. the learning-rate chart says whose rate each line is ----------------------------------------


def lr_legend(run_dir) -> list[str]:
    """The labels of the learning-rate panel of the run's chart, read off the figure as it is drawn."""
    from baseforge.train import charts

    seen: list[str] = []
    assert charts._render(
        run_dir, "t", [], lambda fig: seen.extend(fig.axes[1].get_legend_handles_labels()[1])
    )
    return seen


def write_log(run_dir, rows: list[dict], optimizer: str | None) -> None:
    run_dir.mkdir(exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if optimizer:
        config = {"preset": "x", "model": {}, "train": {"optimizer": optimizer}}
        (run_dir / "config.json").write_text(json.dumps(config))


def test_a_muon_run_logs_and_charts_both_rates_each_named(shakespeare_dir, tmp_path):
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer
    from baseforge.train.metrics import read_metrics
    from helpers import TINY

    run = tmp_path / "muon"
    sets = [*TINY, "max_steps=4", "optimizer=muon", "lr=0.004", "muon_lr=0.03", "eval_every=100"]
    Trainer(resolve_config("cpu-tiny", None, sets), shakespeare_dir, run, log=lambda *a: None).run()
    rows = [r for r in read_metrics(run) if r.loss is not None]
    assert rows and all(r.muon_lr is not None and r.lr is not None for r in rows)
    for r in rows:  # one schedule, two peaks: each optimizer's own rate under its own name
        assert r.muon_lr / r.lr == pytest.approx(0.03 / 0.004)
    assert sorted(lr_legend(run)) == ["AdamW (embeddings, head, norms, biases)", "Muon (hidden matrices)"]


def test_the_chart_names_the_rate_of_an_adamw_run_and_of_a_muon_log_from_before(tmp_path):
    rows = [{"step": s, "tokens": 64 * s, "loss": 3.0, "lr": 0.02 * s, "grad_norm": 1.0} for s in (1, 2)]
    write_log(tmp_path / "adamw", rows, "adamw")
    assert lr_legend(tmp_path / "adamw") == ["AdamW (all parameters)"]
    # A Muon run's rows written before muon_lr was logged: lr was Muon's (the first param group).
    write_log(tmp_path / "old-muon", rows, "muon")
    assert lr_legend(tmp_path / "old-muon") == ["Muon (hidden matrices)"]
    # No readable config: the row says only that it is the first parameter group's rate.
    write_log(tmp_path / "unknown", rows, None)
    assert lr_legend(tmp_path / "unknown") == ["learning rate of the first parameter group"]


# --- 3. a run started with --init-from says where its model came from --------------------------------


@pytest.fixture(scope="module")
def source_run(shakespeare_dir, tmp_path_factory):
    """A cpu-tiny run of 3 layers (cpu-small has 6): the shape a run initialised from it takes."""
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer
    from helpers import TINY

    run = tmp_path_factory.mktemp("source") / "tiny3"
    config = resolve_config("cpu-tiny", None, [*TINY, "n_layer=3", "max_steps=2"])
    Trainer(config, shakespeare_dir, run, log=lambda *a: None).run()
    return run


def test_init_from_records_that_the_model_came_from_the_source_and_the_preset_gave_the_rest(
    shakespeare_dir, source_run, tmp_path
):
    from helpers import baseforge, sets

    more = tmp_path / "more"
    train_keys = ["micro_batch=4", "global_batch=8", "max_steps=1", "eval_tokens=2048", "sample_tokens=0"]
    result = baseforge(
        "train", "--data", shakespeare_dir, "--out", more, "--preset", "cpu-small",
        "--init-from", source_run, *sets(*train_keys, "precision=fp32", "warmup_steps=0"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    source = f"{source_run} (checkpoint at step 2, preset cpu-tiny)"
    opening = result.stdout.splitlines()[0]
    assert opening.startswith(f"training: model from {source}, training settings from preset cpu-small, "), (
        opening
    )
    assert "(3 layers, 64 wide" in opening  # the source's shape, not cpu-small's 6 x 384
    saved = json.loads((more / "config.json").read_text())
    assert saved["preset"] == "cpu-small" and saved["init_from"] == source
    assert saved["model"]["n_layer"] == 3
    report = baseforge("report", more)
    assert report.returncode == 0, report.stderr
    md = (more / "report.md").read_text()
    assert (
        f"Preset `cpu-small` (the training settings); the model's shape and first weights from `{source}`"
        in md
    )


def test_the_source_of_a_model_is_kept_and_checked_in_a_saved_config():
    from baseforge.config import RunConfig
    from baseforge.errors import ConfigError
    from baseforge.presets import preset_config

    config = preset_config("cpu-small")
    assert config.origin() == "cpu-small" and "init_from" not in config.to_dict()
    config.init_from = "runs/modern (checkpoint at step 400, preset cpu-small-modern)"
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))  # as --resume reads it back
    assert again.init_from == config.init_from
    assert again.origin() == (
        "model from runs/modern (checkpoint at step 400, preset cpu-small-modern), "
        "training settings from preset cpu-small"
    )
    with pytest.raises(ConfigError, match="init_from"):
        RunConfig.from_dict({**config.to_dict(), "init_from": 3})


def test_the_model_card_of_a_continued_model_does_not_say_from_scratch():
    from baseforge.eval.model_card import model_card
    from baseforge.presets import preset_config

    config = preset_config("cpu-small")
    state = {"tokenizer": {"name": "bpe:4096"}, "step": 10, "tokens": 5120}
    assert "trained from scratch" in model_card("m", {"config": config, "state": state}, None, [])
    config.init_from = "runs/modern (checkpoint at step 400, preset cpu-small-modern)"
    card = model_card("m", {"config": config, "state": state}, None, [])
    assert "from scratch" not in card
    assert f"trained from the weights of `{config.init_from}` with baseforge" in card
    assert "- preset: `cpu-small` (the training settings; the model's shape from the source)" in card


# --- 4. in-training HellaSwag carries its standard error, and the report shows it -------------------


def test_in_training_hellaswag_logs_a_standard_error_and_the_item_count(source_run, shared_data):
    from baseforge.config import TrainConfig
    from baseforge.eval.hellaswag import binomial_stderr
    from baseforge.launch import evaluators
    from baseforge.train.checkpoint.format import load_model

    hs = shared_data / "eval" / "hellaswag_val.jsonl.gz"
    cfg = TrainConfig(evaluators_every=2, hellaswag_limit=12, hellaswag_data=str(hs))
    model, tokenizer, _ = load_model(source_run)
    figures = evaluators(cfg)["hellaswag"](model, tokenizer)
    assert figures["items"] == 12
    for metric in ("acc", "acc_norm", "acc_norm_tok"):  # as `baseforge eval hellaswag` reports them
        assert figures[f"{metric}_stderr"] == pytest.approx(binomial_stderr(figures[metric], 12))


def test_the_report_shows_in_training_figures_with_their_standard_error(tmp_path):
    from baseforge.eval.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"preset": "cpu-tiny", "model": {}, "train": {}}))
    evaluated = {"hellaswag_acc_norm": 0.25, "hellaswag_acc_norm_stderr": 0.0625, "hellaswag_items": 48}
    rows = [
        {"step": 10, "tokens": 640, "loss": 3.0, "lr": 1e-3, "grad_norm": 1.0, **evaluated},
        {"step": 20, "tokens": 1280, "loss": 2.9, "lr": 1e-3, "grad_norm": 1.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md_path, html_path = build_report(run)
    md = md_path.read_text()
    assert (
        "| step | hellaswag_acc_norm | hellaswag_items |" in md
    )  # the stderr beside its figure, not a column
    assert "| 10 | 0.2500 ± 0.0625 | 48 |" in md
    assert "0.2500 ± 0.0625" in html_path.read_text()
