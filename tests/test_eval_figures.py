"""Evaluation figures carry their uncertainty and their step: HellaSwag's binomial standard error (printed
and saved), and the training step of the checkpoint each saved result was made at (shown by the report)."""

from __future__ import annotations

import json
import math

import pytest

from helpers import TINY, baseforge

ROWS = [
    {
        "activity_label": "Cooking",
        "ctx_a": "A man cuts an onion.",
        "ctx_b": "he",
        "ctx": "A man cuts an onion. he",
        "endings": ["puts it in a pan.", "flies away.", "sings a song.", "reads a book."],
        "label": n % 4,
    }
    for n in range(6)
]


@pytest.fixture(scope="module")
def run(shakespeare_dir, tmp_path_factory):
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer

    out = tmp_path_factory.mktemp("figures") / "run"
    Trainer(
        resolve_config("cpu-tiny", None, [*TINY, "max_steps=3", "dropout=0.0"]),
        shakespeare_dir,
        out,
        log=lambda *a: None,
    ).run()
    return out


@pytest.fixture(scope="module")
def hellaswag_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hs") / "hellaswag.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def binomial_stderr(p: float, n: int) -> float:
    from baseforge.eval.hellaswag import binomial_stderr

    return binomial_stderr(p, n)


def test_binomial_stderr():
    assert binomial_stderr(0.25, 50) == pytest.approx(math.sqrt(0.25 * 0.75 / 50))
    assert 1.96 * binomial_stderr(0.3, 50) == pytest.approx(0.127, abs=1e-3)  # the ±0.12 of 50 items
    assert binomial_stderr(1.0, 10) == 0.0


def test_hellaswag_prints_and_saves_its_stderr_and_step(run, hellaswag_file):
    from baseforge.eval.report import build_report

    result = baseforge("hellaswag", run, "--data", hellaswag_file, "--save-to", run, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    head, row = result.stdout.splitlines()[:2]
    assert "step" in head and "standard error" in head
    assert row.split()[1] == "3" and row.count("±") == 3
    (saved,) = json.loads((run / "evals" / "hellaswag.json").read_text())
    assert saved["step"] == 3 and saved["items"] == 6
    for key in ("acc", "acc_norm", "acc_norm_tok"):
        assert saved["stderr"][key] == pytest.approx(binomial_stderr(saved[key], 6))
    md = build_report(run)[0].read_text()
    table = md.split("## HellaSwag")[1].split("##")[0]
    assert "| model | at step | acc |" in table
    assert f"| 3 | {saved['acc']:.4f} ± {saved['stderr']['acc']:.4f} |" in table


def test_eval_saves_the_step_and_a_model_without_one_shows_a_dash(run, shakespeare_dir, tmp_path):
    from baseforge.eval.report import build_report

    folder = tmp_path / "hf"
    assert baseforge("export", run, "--out", folder).returncode == 0
    result = baseforge(
        "eval",
        run,
        f"hf:{folder}",
        "--data",
        shakespeare_dir,
        "--tokens",
        "256",
        "--save-to",
        run,
        "--overwrite",
    )
    assert result.returncode == 0, result.stderr
    ours, theirs = json.loads((run / "evals" / "heldout-loss.json").read_text())
    assert ours["step"] == 3 and theirs["step"] is None
    assert result.stdout.splitlines()[2].split()[1] == "–"
    md = build_report(run)[0].read_text()
    table = md.split("## Held-out loss")[1].split("##")[0]
    assert "| model | at step | loss |" in table and " | – | " in table


def test_harness_rows_carry_the_step(run, monkeypatch, capsys, tmp_path):
    import baseforge.cli.harness as verb
    from baseforge.cli import main
    from baseforge.eval.harness import HarnessResult

    monkeypatch.setattr(verb, "require_lm_eval", lambda: None)
    monkeypatch.setattr(
        verb,
        "run_harness",
        lambda loaded, *a, **k: HarnessResult(loaded.name, {"hellaswag acc": 0.3}, {"hellaswag acc": 0.02}),
    )
    assert main(["harness", str(run), "--tasks", "hellaswag", "--device", "cpu", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["step"] == 3 and row["stderr"] == {"hellaswag acc": 0.02}
