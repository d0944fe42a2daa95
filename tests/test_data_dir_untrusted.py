"""A data dir is as untrusted as a run dir: its manifest is read through one checked reader (types,
ranges, depth, shard files as plain files inside the dir), its token ids are checked against the
vocabulary before they index an embedding, and a fresh run that fails on it leaves no run dir."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from baseforge.data.batch_plan import BatchLayout
from baseforge.data.loader import TokenData
from baseforge.data.manifest import read_manifest
from baseforge.data.shards import HEADER
from baseforge.errors import UserError
from helpers import TINY, assert_clean_error, baseforge, sets


@pytest.fixture
def data(shakespeare_dir, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(shakespeare_dir, out)
    return out


def edit(data, change) -> None:
    path = data / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))


def _set(manifest, keys, value):
    target = manifest
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return manifest


EDITS = {
    "splits is a string": lambda m: _set(m, ["splits"], "train"),
    "splits.val is a list": lambda m: _set(m, ["splits", "val"], [1, 2]),
    "shards is a string": lambda m: _set(m, ["splits", "train", "shards"], "train_000000.bin"),
    "a shard entry is an int": lambda m: _set(m, ["splits", "train", "shards"], [7]),
    "a shard's tokens are negative": lambda m: _set(m, ["splits", "train", "shards", 0, "tokens"], -1),
    "a split's total is not its shards'": lambda m: _set(m, ["splits", "val", "tokens"], 1),
    "the vocabulary is a string": lambda m: _set(m, ["tokenizer", "vocab_size"], "512"),
    "the whole file is a list": lambda m: [m],
    "an unknown split": lambda m: _set(m, ["splits", "extra"], m["splits"]["val"]),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_a_malformed_manifest_is_one_line(data, case):
    edit(data, EDITS[case])
    with pytest.raises(UserError) as caught:
        read_manifest(data)
    assert "manifest" in str(caught.value) and "\n" not in str(caught.value)


def test_deep_nesting_is_refused_not_a_recursion_error(data):
    (data / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nests too deeply"):
        read_manifest(data)


def test_a_shard_entry_that_is_a_folder_is_refused(data):
    (data / "folder.bin").mkdir()
    edit(data, lambda m: _set(m, ["splits", "val", "shards", 0, "file"], "folder.bin"))
    with pytest.raises(UserError, match="not a file"):
        read_manifest(data)


def _poison(shard) -> None:
    """0xff bytes over every 50th token of a shard: ids past a 512-token vocabulary in every window."""
    tokens = np.memmap(shard, dtype="<u2", mode="r+", offset=HEADER.size)
    tokens[::50] = 0xFFFF
    tokens.flush()


@pytest.mark.parametrize("split", ["train", "val"])
def test_token_ids_past_the_vocabulary_are_named_not_an_index_error(data, tmp_path, split):
    _poison(data / f"{split}_000000.bin")
    run = tmp_path / "run"
    settings = [*TINY, "max_steps=3", "checkpoint_every=3"]
    result = baseforge("train", "--data", data, "--out", run, "--preset", "cpu-tiny", *sets(*settings))
    assert_clean_error(result, f"the {split} split", "past the vocabulary")
    assert not run.exists()  # a fresh run that failed before its first checkpoint leaves nothing


def test_a_corpus_file_given_as_data_says_to_prepare_it_elsewhere(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"text": "hello"}\n')
    result = baseforge("train", "--data", corpus, "--out", tmp_path / "run", "--preset", "cpu-tiny")
    assert_clean_error(result, "is a file, not a data dir", "--out data/docs")
    assert corpus.read_text() == '{"text": "hello"}\n'


def test_the_loader_checks_each_batch_in_process(data):
    _poison(data / "train_000000.bin")
    stream = TokenData(data, 64, 0)
    with pytest.raises(UserError, match="past the vocabulary"):
        stream.micro_batch(0, 0, BatchLayout(micro_batch=4))


def test_a_tokenizer_record_renamed_gpt2_is_refused(data):
    edit(data, lambda m: _set(m, ["tokenizer", "name"], "gpt2"))
    with pytest.raises(UserError, match="records tokenizer gpt2"):
        TokenData(data, 64, 0)
