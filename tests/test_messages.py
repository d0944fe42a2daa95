"""Messages that point the right way (#24): each case a user met, one clean line where it is an error."""

from __future__ import annotations

import json
import sys

import pytest

from helpers import TINY, assert_clean_error, baseforge, cli_env


def test_eval_of_a_missing_run_dir_says_it_does_not_exist(shakespeare_dir, tmp_path):
    (tmp_path / "runs" / "demo").mkdir(parents=True)  # runs/ is here: runs/nonexist is a path
    result = baseforge("eval", "runs/nonexist", "--data", shakespeare_dir, cwd=tmp_path)
    assert_clean_error(result, "runs/nonexist does not exist")
    assert "Hub" not in result.stderr


def test_a_jsonl_file_without_a_text_field_points_to_text_column(tmp_path):
    source = tmp_path / "articles.jsonl"
    source.write_text("".join(json.dumps({"title": f"t{i}", "body": "words " * 20}) + "\n" for i in range(5)))
    result = baseforge("prepare", source, "--out", tmp_path / "data", "--tokenizer", "bpe:300")
    assert_clean_error(result, "articles.jsonl:1", "'text'", "--text-column", "body")


def test_harness_outside_a_git_repository_prints_no_git_error(tmp_path, shakespeare_dir, shared_data):
    pytest.importorskip("lm_eval")
    import subprocess

    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer
    from test_harness import TASK_YAML

    run = tmp_path / "run"
    Trainer(
        resolve_config("cpu-tiny", None, [*TINY, "max_steps=1"]), shakespeare_dir, run, log=lambda *a: None
    ).run()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hellaswag.yaml").write_text(
        TASK_YAML.format(path=shared_data / "eval" / "hellaswag_val.jsonl.gz")
    )
    (tasks / "utils.py").write_text("from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401\n")
    outside = tmp_path / "elsewhere"  # not inside any git repository
    outside.mkdir()
    assert subprocess.run(["git", "rev-parse"], cwd=outside, capture_output=True).returncode != 0
    result = subprocess.run(
        [sys.executable, "-m", "baseforge", "harness", str(run), "--tasks", "hellaswag"]
        + ["--include-path", str(tasks), "--limit", "4", "--json"],
        capture_output=True,
        text=True,
        env={**cli_env(), "HF_DATASETS_OFFLINE": "1"},
        cwd=outside,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fatal" not in result.stderr and "not a git repository" not in result.stderr, result.stderr[-2000:]
