"""What a user types and what a run dir holds, taken as untrusted: every numeric argument is range-checked
by the parser in one line, `--save-to` never replaces kept results unasked, and `report` embeds only plain
files inside the run dir (a symlinked, torn or misshapen one is left out, with a note)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from baseforge.cli import VERBS, build_parser, main, verb_module
from helpers import assert_clean_error, baseforge
from test_report import fake_run


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


def one_line(capsys, argv: list[str]) -> str:
    """The one line `baseforge ARGV` (run in this process) prints on stderr, failing."""
    assert main([str(a) for a in argv]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_save_to_never_replaces_kept_results_unasked(tmp_path, capsys):
    run = fake_run(tmp_path)  # holds evals/heldout-loss.json and evals/hellaswag.json
    kept = (run / "evals" / "heldout-loss.json").read_text()
    line = one_line(capsys, ["eval", tmp_path / "no-model", "--data", tmp_path, "--save-to", run])
    assert "heldout-loss.json already holds results" in line and "--overwrite" in line, line
    assert (run / "evals" / "heldout-loss.json").read_text() == kept
    # --overwrite passes the check: what fails next is the missing model, not the kept results.
    line = one_line(
        capsys, ["eval", tmp_path / "no-model", "--data", tmp_path, "--save-to", run, "--overwrite"]
    )
    assert "already holds" not in line
    assert_clean_error(baseforge("hellaswag", tmp_path / "no-model", "--save-to", run), "already holds")


def test_save_to_a_file_or_not_a_run_dir_is_one_line_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "results.json"
    a_file.write_text("[]")
    for target in (a_file, tmp_path / "missing", tmp_path):
        line = one_line(capsys, ["hellaswag", tmp_path / "no-model", "--save-to", target])
        assert "is not a run dir" in line, line
    assert a_file.read_text() == "[]"
    line = one_line(capsys, ["hellaswag", tmp_path / "no-model", "--overwrite"])
    assert "use it with --save-to" in line


def test_save_to_through_a_symlinked_evals_folder_is_refused(tmp_path, capsys):
    run = fake_run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (run / "evals").rename(elsewhere)
    (run / "evals").symlink_to(elsewhere)
    line = one_line(capsys, ["hellaswag", tmp_path / "no-model", "--save-to", run, "--overwrite"])
    assert "symlink" in line


SECRET = "TOP-SECRET-0123"


def plant_outside(tmp_path: Path, run: Path) -> None:
    """sample.txt, summary.json, config.json and one evaluation as symlinks to files outside the run."""
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = {
        "sample.txt": SECRET,
        "summary.json": json.dumps({"steps": SECRET}),
        "config.json": json.dumps({"preset": SECRET, "model": {}}),
        "evals/harness.json": json.dumps([{"model": SECRET, "acc": 0.5}]),
    }
    for name, content in planted.items():
        target = outside / name.replace("/", "-")
        target.write_text(content)
        (run / name).unlink()
        (run / name).symlink_to(target)


def report_notes(capsys, run: Path) -> list[str]:
    """Run `baseforge report RUN` (it must succeed): the note lines it printed."""
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def test_report_follows_no_symlink_out_of_the_run_and_names_what_it_left_out(tmp_path, capsys):
    run = fake_run(tmp_path)
    plant_outside(tmp_path, run)
    notes = report_notes(capsys, run)
    assert len(notes) == 4, notes
    for name in ("config.json", "summary.json", "evals/harness.json", "sample.txt"):
        assert any(line.startswith(f"baseforge report: note: left out {name}: a symlink") for line in notes)
    page, md = (run / "report.html").read_text(), (run / "report.md").read_text()
    assert SECRET not in page and SECRET not in md
    assert "<h2>Left out</h2>" in page and "| evals/harness.json | a symlink;" in md
    assert "<h2>HellaSwag</h2>\n<table>" in page and "## Losses" in md  # the plain files are all there


def test_report_reads_nothing_through_a_symlinked_evals_folder(tmp_path, capsys):
    run = fake_run(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hellaswag.json").write_text(json.dumps([{"model": SECRET, "acc": 0.5}]))
    for path in (run / "evals").iterdir():
        path.unlink()
    (run / "evals").rmdir()
    (run / "evals").symlink_to(outside)
    (run / "resumes.jsonl").symlink_to(outside / "hellaswag.json")
    notes = report_notes(capsys, run)
    assert [line.split(":")[2].strip() for line in notes] == ["left out evals", "left out resumes.jsonl"]
    assert SECRET not in (run / "report.html").read_text()


def test_report_on_torn_or_misshapen_files_is_a_page_with_notes(tmp_path, capsys):
    run = fake_run(tmp_path)
    (run / "evals" / "x.json").write_text('[{"model": "a", "acc": 0.2')  # torn
    (run / "summary.json").write_text("[1, 2]")  # a JSON list, not an object
    (run / "config.json").write_text('{"a":' * 100_000)  # nested past Python's recursion limit
    (run / "sample.txt").write_bytes(b"caf\xe9 \xff\xfe sample")  # not UTF-8
    notes = report_notes(capsys, run)
    why = dict(line.removeprefix("baseforge report: note: left out ").split(": ", 1) for line in notes)
    assert list(why) == ["config.json", "summary.json", "evals/x.json"], notes
    assert "nests too deeply" in why["config.json"]
    assert "holds list, not a JSON object" in why["summary.json"]
    assert "not readable JSON" in why["evals/x.json"]
    page = (run / "report.html").read_text()
    assert "<h2>HellaSwag</h2>" in page and "caf\ufffd" in page


def test_report_leaves_out_a_sample_too_large_to_be_one(tmp_path, capsys):
    from baseforge.eval.run_files import MAX_SAMPLE_BYTES

    run = fake_run(tmp_path)
    with open(run / "sample.txt", "wb") as f:
        f.truncate(MAX_SAMPLE_BYTES + 1)
    (notes,) = report_notes(capsys, run)
    assert "left out sample.txt" in notes and "more than a sample" in notes
    assert "<h2>Sample</h2>" not in (run / "report.html").read_text()


def test_report_still_needs_a_config_json_to_be_a_run_dir(tmp_path):
    run = fake_run(tmp_path)
    os.unlink(run / "config.json")
    assert_clean_error(baseforge("report", run), "not a run dir")
