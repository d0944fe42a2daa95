"""What a user types and what a run dir holds, taken as untrusted: every numeric argument is range-checked
by the parser in one line, `--save-to` never replaces kept results unasked, and `report` embeds only plain
files inside the run dir (a symlinked, torn or misshapen one is left out, with a note)."""

from __future__ import annotations

import argparse

import pytest

from baseforge.cli import VERBS, build_parser, verb_module
from helpers import assert_clean_error, baseforge


def parse_error(capsys, *argv: str) -> str:
    """The one line the parser prints for `baseforge ARGV` (exit status 2, nothing run)."""
    with pytest.raises(SystemExit) as exited:
        build_parser(argv[0]).parse_args(list(argv))
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


BAD_NUMBERS = [
    ("harness", "m", "--tasks", "t", "--limit", "-1"),
    ("harness", "m", "--tasks", "t", "--batch-size", "0"),
    ("harness", "m", "--tasks", "t", "--num-fewshot", "-2"),
    ("hellaswag", "m", "--limit", "0"),
    ("eval", "m", "--data", "d", "--tokens", "0"),
    ("eval", "m", "--data", "d", "--tokens", "1.5"),
    ("eval", "m", "--data", "d", "--context", "-64"),
    ("eval", "m", "--data", "d", "--batch-size", "0"),
    ("sample", "m", "--max-new-tokens", "0"),
    ("sample", "m", "--temperature", "-0.5"),
    ("sample", "m", "--temperature", "inf"),
    ("sample", "m", "--top-k", "-1"),
    ("sample", "m", "--num-samples", "0"),
    ("sample", "m", "--seed", "-1"),
    ("answer", "r", "--data", "d", "--out", "o", "--max-new-tokens", "0"),
    ("answer", "r", "--data", "d", "--out", "o", "--limit", "-3"),
    ("finetune", "m", "--data", "d", "--out", "o", "--limit", "0"),
    ("judge", "a", "--judge", "j", "--retries", "-1"),
    ("judge", "a", "--judge", "j", "--backoff", "nan"),
    ("judge", "a", "--judge", "j", "--timeout", "0"),
    ("judge", "a", "--judge", "j", "--max-retry-after", "-5"),
    ("judge", "a", "--judge", "j", "--seed", "x"),
    ("plan", "--preset", "p", "--gpus", "0"),
    ("plan", "--preset", "p", "--micro-batch", "-8"),
    ("plan", "--preset", "p", "--tokens", "0e9"),
    ("plan", "--preset", "p", "--price", "-1"),
    ("plan", "--preset", "p", "--mfu", "1.5"),
    ("prepare", "s", "--out", "o", "--workers", "0"),
    ("prepare", "s", "--out", "o", "--context", "0"),
    ("prepare", "s", "--out", "o", "--max-tokens", "0"),
    ("prepare", "s", "--out", "o", "--shard-tokens", "0"),
    ("prepare", "s", "--out", "o", "--val-fraction", "1"),
    ("prepare", "s", "--out", "o", "--min-val-tokens", "-1"),
    ("prepare", "s", "--out", "o", "--test-tokens", "2.5"),
]


@pytest.mark.parametrize("argv", BAD_NUMBERS, ids=lambda argv: " ".join(argv[:1] + argv[-2:]))
def test_an_out_of_range_number_is_one_parser_line(capsys, argv):
    line = parse_error(capsys, *argv)
    assert line.startswith(f"baseforge {argv[0]}: error: argument {argv[-2]}: "), line
    assert repr(argv[-1]) in line and f"baseforge {argv[0]} --help" in line


def test_token_counts_still_read_scientific_notation():
    args = build_parser("eval").parse_args(["eval", "m", "--data", "d", "--tokens", "10e6"])
    assert args.tokens == 10_000_000 and isinstance(args.tokens, int)
    args = build_parser("prepare").parse_args(["prepare", "s", "--out", "o", "--max-tokens", "1e9"])
    assert args.max_tokens == 10**9
    args = build_parser("plan").parse_args(["plan", "--tokens", "2.5e9", "--mfu", "1"])
    assert args.tokens == 2_500_000_000 and args.mfu == 1.0


def numeric_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from numeric_actions(sub)
        elif action.type in (int, float):
            yield action


@pytest.mark.parametrize("verb", list(VERBS))
def test_no_verb_takes_a_bare_int_or_float(verb):
    """A bare `type=int` takes -1 and 0; a bare `type=float` takes nan and inf: each numeric argument
    takes one of cli/options.py's range types instead."""
    sub = argparse.ArgumentParser().add_subparsers()
    verb_module(verb).register(sub)
    assert [a.option_strings for a in numeric_actions(sub.choices[verb])] == []


def test_harness_limit_and_batch_size_from_the_shell_are_one_line():
    assert_clean_error(baseforge("harness", "m", "--tasks", "t", "--limit", "-1"), "--limit", "'-1'")
    assert_clean_error(baseforge("harness", "m", "--tasks", "t", "--batch-size", "0"), "--batch-size")


def test_a_missing_argument_is_one_line_too(capsys):
    line = parse_error(capsys, "harness", "m")
    assert "--tasks" in line and "see baseforge harness --help" in line
