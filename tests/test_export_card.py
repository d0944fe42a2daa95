"""`baseforge export` into a folder already there, and the model card it writes: no local path, no
placeholder, and every python snippet in it runs as printed, offline, without a remote-code prompt."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from baseforge.errors import UserError  # noqa: E402
from baseforge.eval import hf_export  # noqa: E402
from helpers import TINY, baseforge  # noqa: E402

# The modern preset, shrunk to a test's size (its rotary / RMSNorm / ... recipe kept).
SMALL = ["n_layer=2", "n_embd=64", "n_head=2", "context=64", "micro_batch=4", "global_batch=8"]
QUIET = ["eval_every=5", "eval_tokens=2048", "sample_tokens=0", "precision=fp32", "warmup_steps=1"]

# A snippet that makes transformers ask "run the custom code? [y/N]" stops here with exit code 3.
NO_PROMPT = """\
import builtins, os
def _asked(*args, **kwargs):
    print("asked whether to run the custom code", flush=True)
    os._exit(3)
builtins.input = _asked
"""


def _train(preset: str, overrides: list[str], run, data) -> None:
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer

    Trainer(resolve_config(preset, None, overrides), data, run, log=lambda *a: None).run()


@pytest.fixture(scope="module")
def runs(shakespeare_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("card-runs")
    _train("cpu-tiny", [*TINY, "max_steps=2", "dropout=0.0"], root / "plain", shakespeare_dir)
    _train("cpu-small-modern", [*SMALL, *QUIET, "max_steps=2"], root / "modern", shakespeare_dir)
    return {"plain": root / "plain", "modern": root / "modern"}


def python_snippets(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


@pytest.mark.parametrize("kind", ["plain", "modern"])
def test_the_cards_snippets_run_as_printed_and_name_no_local_path(runs, kind, shakespeare_dir, tmp_path):
    out = tmp_path / "export"
    result = baseforge("export", runs[kind], "--out", out)
    assert result.returncode == 0, result.stderr
    assert ("trust_remote_code=True" in result.stdout) == (kind == "modern")
    assert (out / "modeling_baseforge.py").is_file() == (kind == "modern")
    card = (out / "README.md").read_text()
    assert "https://github.com/)" not in card and "PATH" not in card
    assert str(shakespeare_dir) not in card and str(tmp_path.parent.parent) not in card
    assert "- data: `shakespeare`" in card
    snippets = python_snippets(card)
    assert snippets
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    for n, code in enumerate(snippets):
        script = tmp_path / f"snippet{n}.py"
        script.write_text(NO_PROMPT + code)
        ran = subprocess.run(
            [sys.executable, str(script)], cwd=out, env=env, capture_output=True, text=True, timeout=300
        )
        assert ran.returncode == 0, (code, ran.stdout, ran.stderr[-2000:])
        assert "To be, or not to be" in ran.stdout


def test_export_refuses_a_folder_with_files_and_overwrite_replaces_it_whole(runs, tmp_path):
    out = tmp_path / "export"
    assert baseforge("export", runs["modern"], "--out", out).returncode == 0
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = baseforge("export", runs["plain"], "--out", out)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "not empty" in refused.stderr and "--overwrite" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    # --overwrite: the plain GPT-2 replaces the modern one whole; none of its remote code stays behind
    result = baseforge("export", runs["plain"], "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert "GPT2LMHeadModel" in result.stdout and "trust_remote_code" not in result.stdout
    names = {p.name for p in out.iterdir()}
    assert not names & {"notes.txt", *hf_export.REMOTE_CODE_FILES}
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging folder left


def test_a_failed_overwrite_leaves_the_old_export(runs, tmp_path, monkeypatch):
    out = tmp_path / "export"
    hf_export.export_run(runs["modern"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "tokenizer.json"))

    monkeypatch.setattr(hf_export, "write_trained_tokenizer", disk_full)
    with pytest.raises(OSError):
        hf_export.export_run(runs["plain"], out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with pytest.raises(UserError, match="not empty"):
        hf_export.export_run(runs["plain"], out)


@pytest.mark.parametrize("bad", ["list", "symlink"])
def test_a_bad_summary_is_left_out_of_the_card_in_one_line(runs, tmp_path, bad):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["plain"], run, symlinks=True)
    summary = run / "summary.json"
    summary.unlink()
    if bad == "list":
        summary.write_text("[1, 2]")
    else:
        (tmp_path / "elsewhere.json").write_text(json.dumps({"data": "/home/someone/secret"}))
        summary.symlink_to(tmp_path / "elsewhere.json")
    result = baseforge("export", run, "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "summary" in notes[0]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "- data:" not in card and "secret" not in card and "final train loss" not in card
