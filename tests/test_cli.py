"""The CLI as a user meets it: help that teaches, sample from a run, clean errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from baseforge.cli import VERBS, verb_module
from helpers import TINY, assert_clean_error, baseforge, cli_env, sets


def test_top_level_help_lists_verbs_and_quick_start():
    result = baseforge("--help")
    assert result.returncode == 0
    for verb in ("prepare", "train", "sample", "data"):
        assert verb in result.stdout
    assert "baseforge train" in result.stdout


def modules_loaded_by(*args: str) -> list[str]:
    """The verb modules (and torch) that `baseforge ARGS` imports, run in a fresh interpreter."""
    code = (
        "import json, sys\nfrom baseforge.cli import main\n"
        f"try:\n    main({list(args)!r})\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('baseforge.cli.'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    # Not the verbs' shared helpers (cli/options.py: argparse only; cli/results.py)
    return [m for m in loaded if m == "torch" or m.rpartition(".")[2].replace("_", "-") in VERBS]


def test_top_level_help_imports_no_verb_and_no_torch():
    assert modules_loaded_by("--help") == []
    assert modules_loaded_by("nosuchverb") == []


def test_a_verbs_help_imports_that_verb_only():
    assert "baseforge.cli.import_gpt2" in modules_loaded_by("import-gpt2", "--help")
    assert [m for m in modules_loaded_by("plan", "--help") if m != "torch"] == ["baseforge.cli.plan"]


@pytest.mark.parametrize("verb", list(VERBS))
def test_each_verb_registers_with_its_help_from_the_table(verb):
    """`baseforge --help` lists VERBS without importing the verbs: the verb's own parser says the same."""
    sub = argparse.ArgumentParser().add_subparsers()
    verb_module(verb).register(sub)
    assert [(a.dest, a.help) for a in sub._choices_actions] == [(verb, VERBS[verb])]


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
