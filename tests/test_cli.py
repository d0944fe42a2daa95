"""The CLI as a user meets it: help that teaches, sample from a run, clean errors."""

from __future__ import annotations

import pytest

from helpers import TINY, assert_clean_error, baseforge, sets


def test_top_level_help_lists_verbs_and_quick_start():
    result = baseforge("--help")
    assert result.returncode == 0
    for verb in ("prepare", "train", "sample", "data"):
        assert verb in result.stdout
    assert "baseforge train" in result.stdout


@pytest.mark.parametrize("verb", ["prepare", "train", "sample", "data"])
def test_each_verb_help_has_examples(verb):
    result = baseforge(verb, "--help")
    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout


def test_sample_from_a_run(shakespeare_dir, tmp_path):
    run = tmp_path / "run"
    trained = baseforge("train", "--data", shakespeare_dir, "--out", run, *sets(*TINY, "max_steps=3"))
    assert trained.returncode == 0, trained.stderr
    args = ["sample", run, "--prompt", "ROMEO:", "--max-new-tokens", "20", "--temperature", "0"]
    first, second = baseforge(*args), baseforge(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ROMEO:") and first.stdout == second.stdout  # greedy is deterministic
    seeded = [
        baseforge("sample", run, "--prompt", "A", "--max-new-tokens", "10", "--seed", "3").stdout
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]
    assert_clean_error(baseforge("sample", tmp_path / "nope", "--prompt", "x"), "does not exist")
    assert_clean_error(baseforge("sample", run, "--max-new-tokens", "0"), "--max-new-tokens")
