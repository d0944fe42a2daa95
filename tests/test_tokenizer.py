"""Tokenizer identity: tokenizers are told apart by their content's hash, not their name (records from
before hashes compared by name and size, with a warning); a tokenizer.json swapped under its record is
refused; GPT-2's hash is the same from tiktoken and from OpenAI's files."""

from __future__ import annotations

import pytest

from baseforge.errors import UserError
from baseforge.tokenizer import (
    GPT2_DIR_ENV,
    GPT2Tokenizer,
    TrainedBPETokenizer,
    check_same_tokenizer,
    load_tokenizer,
)


def test_tokenizers_are_told_apart_by_content_not_name(shared_data, tmp_path):
    text = (shared_data / "corpora" / "tinyshakespeare.txt").read_text()
    half = len(text) // 2
    a = TrainedBPETokenizer.train([text[:half]], 4096)  # the same name and size, other text
    b = TrainedBPETokenizer.train([text[half:]], 4096)
    assert a.vocab_size == b.vocab_size == 4096
    assert a.name == b.name and a.record()["sha256"] != b.record()["sha256"]
    with pytest.raises(
        UserError, match=r"^the run uses tokenizer bpe:4096 .* but data/x uses bpe:4096 .*different"
    ):
        check_same_tokenizer(a.record(), b.record(), "the run", "data/x")
    a.save(tmp_path)
    again = load_tokenizer(a.record(), tmp_path)
    assert again.sha256 == a.sha256 and check_same_tokenizer(a.record(), again.record(), "x", "y") is None
    # A record without its hash (edited, or from before hashes) cannot be checked: refused, not skipped.
    old = {k: v for k, v in a.record().items() if k != "sha256"}
    for pair in ((old, a.record()), (a.record(), old)):
        with pytest.raises(UserError, match="without its content hash"):
            check_same_tokenizer(*pair, "data/old", "the run")
    # Its file must stay beside the record: no path out of the folder.
    with pytest.raises(UserError, match="outside its folder"):
        load_tokenizer({**a.record(), "file": "../elsewhere/tokenizer.json"}, tmp_path)
    # A tokenizer.json replaced under its record is refused.
    b.save(tmp_path)
    with pytest.raises(UserError, match="not the tokenizer recorded beside it"):
        load_tokenizer(a.record(), tmp_path)


def test_gpt2_hash_is_the_same_from_tiktoken_and_from_openais_files(shared_data, gpt2_available, monkeypatch):
    downloaded = GPT2Tokenizer().sha256
    monkeypatch.setenv(GPT2_DIR_ENV, str(shared_data / "gpt2"))
    assert GPT2Tokenizer().sha256 == downloaded
