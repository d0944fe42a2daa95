"""A run's data is part of its identity, and the command a run prints resumes it.

Resume checks the data dir's manifest sha256 whether or not --data is given, refuses other data in one
line naming both (continuing only with --new-data), and never rewrites the record of what the run
trained on: a change is appended. Passes over the data are counted from what the run reads (best-fit
windows, not the manifest's tokens)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from dataclasses import replace

import numpy as np
import pytest

from baseforge.data.manifest import SplitEntry, read_manifest, write_manifest
from baseforge.data.shards import read_shard, write_shard
from conftest import build_data_dir
from helpers import TINY, assert_clean_error, baseforge, popen, sets

SHORT = [*TINY, "max_steps=4", "checkpoint_every=2"]
TEXT_A = "\n\n".join(f"the cat sat on mat number {i} and looked at the dog." for i in range(300))
TEXT_B = "\n\n".join(f"a ship sailed past island {i} under a grey sky at noon." for i in range(300))


def half_of(data, out):
    """Other data with the same tokenizer: `data` with the first half of its train split only."""
    shutil.copytree(data, out)
    manifest = read_manifest(out)
    tokens = np.asarray(read_shard(out / "train_000000.bin"))[: manifest.splits["train"].tokens // 2]
    write_shard(out / "train_000000.bin", tokens, manifest.vocab_size)
    train = SplitEntry.of([("train_000000.bin", len(tokens))], 0)
    total = manifest.tokens - manifest.splits["train"].tokens + len(tokens)
    write_manifest(out, replace(manifest, splits={**manifest.splits, "train": train}, tokens=total))
    return out


def tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def trained(tmp_path):
    data, run = build_data_dir(tmp_path / "data", TEXT_A), tmp_path / "run"
    result = baseforge("train", "--data", data, "--out", run, "--preset", "cpu-tiny", *sets(*SHORT))
    assert result.returncode == 0, result.stderr
    return data, run


def test_a_data_dir_prepared_again_is_refused_on_resume_without_data(trained, tmp_path):
    data, run = trained
    before = tree(run)
    old = json.loads((run / "data.json").read_text())["manifest_sha256"]
    build_data_dir(
        tmp_path / "other", TEXT_B
    )  # the same tokenizer settings, other text, into the run's data dir
    for name in ("manifest.json", "train_000000.bin", "val_000000.bin", "tokenizer.json"):
        (data / name).write_bytes((tmp_path / "other" / name).read_bytes())
    result = baseforge("train", "--out", run, "--resume", "--extend", "--set", "max_steps=6")
    assert_clean_error(result, "now holds other data", old[:12], "--new-data")
    assert tree(run) == before  # refused before anything was written


def test_new_data_continues_and_appends_the_change(trained, tmp_path):
    data, run = trained
    first = json.loads((run / "data.json").read_text())
    other = half_of(data, tmp_path / "other")
    longer = ["--resume", "--extend", "--set", "max_steps=6"]
    refused = baseforge("train", "--out", run, "--data", other, *longer)
    assert_clean_error(refused, "was trained on", first["manifest_sha256"][:12], "--new-data")
    result = baseforge("train", "--out", run, "--data", other, "--new-data", *longer)
    assert result.returncode == 0, result.stderr
    record = json.loads((run / "data.json").read_text())
    assert record["path"] == first["path"] and record["manifest_sha256"] == first["manifest_sha256"]
    assert [c["step"] for c in record["changes"]] == [4]
    assert record["changes"][0]["path"] == str(other.resolve())


def test_bestfit_passes_are_counted_over_its_windows(tmp_path):
    # Three long documents: concatenated they are ~2,000 windows of 64, best-fit makes one window each.
    long = "\n\n".join(" ".join(f"word{i % 97} w{j}" for i in range(4000)) for j in range(4))
    data = build_data_dir(tmp_path / "long", long, vocab=300)
    steps = ["max_steps=40", "global_batch=8", "micro_batch=8"]
    concat = baseforge("train", "--data", data, "--out", tmp_path / "r", "--dry-run", *sets(*TINY, *steps))
    packed = baseforge(
        "train", "--data", data, "--out", tmp_path / "r", "--dry-run", *sets(*TINY, *steps, "packing=bestfit")
    )
    assert concat.returncode == packed.returncode == 0, concat.stderr + packed.stderr
    assert "passes over" not in concat.stdout
    assert "passes over" in packed.stdout and "packing bestfit" in packed.stdout, packed.stdout


@pytest.mark.parametrize("preset", ["cpu-tiny", "cpu-small-modern"])  # the seed and the modern family
def test_the_printed_resume_command_resumes(tmp_path, preset):
    data = build_data_dir(tmp_path / "data", TEXT_A)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--preset", preset]
    args += sets(*TINY, "max_steps=40", "checkpoint_every=2", "eval_every=100")
    child = popen(*args)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "latest").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "run the same command again with --resume" in out + err
    resumed = baseforge(*args, "--resume", timeout=300)  # the command as printed
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 40
