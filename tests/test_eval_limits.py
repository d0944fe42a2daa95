"""Evaluation inputs refused in one line: a HellaSwag label out of range or an empty HellaSwag file,
an `eval --context` past the model's context, a `sample --temperature` that is not a number."""

from __future__ import annotations

import json

import pytest

from baseforge.errors import UserError
from baseforge.eval.hellaswag import load_items
from helpers import TINY, assert_clean_error, baseforge, sets


@pytest.fixture(scope="module")
def run32(shakespeare_dir, tmp_path_factory):
    """A one-step run of a context-32 model."""
    run = tmp_path_factory.mktemp("evlim") / "run"
    settings = [s for s in TINY if not s.startswith("context=")] + ["context=32", "max_steps=1"]
    trained = baseforge("train", "--data", shakespeare_dir, "--out", run, *sets(*settings))
    assert trained.returncode == 0, trained.stderr
    return run


def hellaswag_row(label) -> dict:
    return {"activity_label": "Cooking", "ctx_a": "A man cracks an egg.", "ctx_b": "he", "ctx": "A man",
            "endings": ["stirs it.", "eats a shoe.", "flies.", "sings."], "label": label}  # fmt: skip


@pytest.mark.parametrize("label", [7, -1, 1.5, True, "x"])
def test_a_hellaswag_label_out_of_range_names_file_and_row(tmp_path, label):
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps(hellaswag_row(0)) + "\n" + json.dumps(hellaswag_row(label)) + "\n")
    with pytest.raises(UserError, match=rf"{path}:2:"):
        load_items(path)


def test_hellaswag_cli_refuses_label_7_of_4_and_an_empty_file(run32, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(hellaswag_row(7)) + "\n")
    assert_clean_error(baseforge("hellaswag", run32, "--data", bad), f"{bad}:1", "label")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_clean_error(baseforge("hellaswag", run32, "--data", empty), str(empty), "no rows")


def test_eval_context_past_the_models_is_refused(run32, shakespeare_dir):
    result = baseforge("eval", run32, "--data", shakespeare_dir, "--context", "4096", "--tokens", "256")
    assert "context 4096" not in result.stdout
    assert_clean_error(result, "--context 4096", "32")
    ok = baseforge("eval", run32, "--data", shakespeare_dir, "--context", "16", "--tokens", "256")
    assert ok.returncode == 0 and "context 16" in ok.stdout, ok.stderr


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_sample_temperature_not_a_number_is_one_line(run32, value):
    result = baseforge("sample", run32, "--prompt", "A", "--max-new-tokens", "3", "--temperature", value)
    assert_clean_error(result, "temperature")
