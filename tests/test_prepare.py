"""Hardening: the run-dir lock, write faults at the CLI, tokenizer identity, and prepare's input checks."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from baseforge import fileio
from baseforge.cli import main
from baseforge.data.prepare import prepare
from baseforge.data.shards import read_manifest, split_shards
from baseforge.errors import UserError
from baseforge.runlock import RunLock
from baseforge.tokenizer import TrainedBPETokenizer, check_same_tokenizer, load_tokenizer
from helpers import assert_clean_error, baseforge, cli_env


def quiet(*_):
    pass


def tokens(data_dir, split):
    return np.concatenate([np.asarray(s) for s in split_shards(data_dir, read_manifest(data_dir), split)])


# --- run-dir lock ------------------------------------------------------------------------------------
HOLD = """
import sys, time
from baseforge.runlock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_holder_is_refused_naming_the_first_and_a_dead_holder_never_blocks(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=cli_env()
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        host = re.escape(socket.gethostname())
        with pytest.raises(UserError, match=rf"in use by pid {holder.pid} on host {host}"):
            RunLock(run).acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the flock
        holder.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid  # its note is still there
    with RunLock(run) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=rf"pid {os.getpid()}"):  # a second holder in this process too
            RunLock(run).acquire()
    with RunLock(run):  # released on exit
        pass


# --- write faults at the CLI -------------------------------------------------------------------------
def test_a_full_disk_is_one_line_exit_1_and_leaves_nothing_half_written(
    shared_data, tmp_path, monkeypatch, capsys
):
    src = str(shared_data / "corpora" / "tinyshakespeare.txt")
    args = ["prepare", src, "--tokenizer", "bpe:300", "--workers", "1", "--shard-tokens", "20000"]

    def full_disk(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "_fsync_file", full_disk)
    assert main([*args, "--out", str(tmp_path / "new" / "d")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "No space left on device" in err and "tokenizer.json" in err and "keep_last" in err
    assert not (tmp_path / "new").exists()  # the folders it made are gone again
    # Into an existing folder, failing on a later shard: no temp files, no manifest.
    (tmp_path / "d").mkdir()
    calls = []

    def fills_up(path):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "_fsync_file", fills_up)
    assert main([*args, "--out", str(tmp_path / "d")]) == 1
    assert "No space left" in capsys.readouterr().err
    names = [p.name for p in (tmp_path / "d").iterdir()]
    assert "manifest.json" not in names and not [n for n in names if n.endswith(".tmp")], names


def test_other_os_errors_keep_their_traceback(monkeypatch):
    import baseforge.cli.data as data_verb

    def broken(args):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(data_verb, "run", broken)
    with pytest.raises(OSError):
        main(["data", "info", "x"])


# --- tokenizer identity --------------------------------------------------------------------------------
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
    # A record from before hashes: names and sizes compared, and the caller is told so.
    old = {k: v for k, v in a.record().items() if k != "sha256"}
    assert "predates tokenizer hashes" in check_same_tokenizer(old, b.record(), "data/old", "the run")
    with pytest.raises(UserError, match="predates tokenizer hashes"):
        check_same_tokenizer(
            {**old, "name": "bpe:8192", "vocab_size": 8192}, b.record(), "data/old", "the run"
        )
    # A tokenizer.json replaced under its record is refused.
    b.save(tmp_path)
    with pytest.raises(UserError, match="not the tokenizer recorded beside it"):
        load_tokenizer(a.record(), tmp_path)


def test_gpt2_hash_is_the_same_from_tiktoken_and_from_openais_files(shared_data, gpt2_available, monkeypatch):
    from baseforge.tokenizer import GPT2_DIR_ENV, GPT2Tokenizer

    downloaded = GPT2Tokenizer().sha256
    monkeypatch.setenv(GPT2_DIR_ENV, str(shared_data / "gpt2"))
    assert GPT2Tokenizer().sha256 == downloaded


# --- prepare: corpora that do not fit, binary input, paths ---------------------------------------------
def test_a_single_document_corpus_gets_its_val_split_from_the_stream_tail(shared_data, tmp_path, capsys):
    src = [str(shared_data / "corpora" / "tinyshakespeare.txt")]
    lines = []
    m = prepare(
        src, tmp_path / "d", "bpe:300", val_fraction=0.1, shard_tokens=20_000, workers=1, log=lines.append
    )
    whole = prepare(src, tmp_path / "all", "bpe:300", val_fraction=0.0, workers=1, log=quiet)
    assert m["held_out"] == "tail" and whole["held_out"] == "documents"
    assert m["splits"]["val"]["tokens"] == int(m["tokens"] * 0.1) > 20_000  # reaches back into written shards
    stream = tokens(tmp_path / "all", "train")
    assert np.array_equal(
        np.concatenate([tokens(tmp_path / "d", "train"), tokens(tmp_path / "d", "val")]), stream
    )
    assert any("last" in line and "--val-fraction 0.1" in line for line in lines), lines
    assert read_manifest(tmp_path / "d")["held_out"] == "tail"
    assert main(["data", "info", str(tmp_path / "d")]) == 0
    shown = capsys.readouterr().out
    assert "last tokens of the stream" in shown and f"sha256 {m['tokenizer']['sha256'][:12]}" in shown


def test_binary_files_are_skipped_and_named_and_no_text_is_an_error(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("To be, or not to be, that is the question. " * 30)
    (corpus / "b.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)  # NUL bytes
    noise = np.random.default_rng(0).integers(1, 256, 4000, dtype=np.uint8).tobytes()
    (corpus / "c.txt").write_bytes(noise)  # no NUL, but mostly not UTF-8
    (corpus / "d.txt").write_bytes(
        "Caf\xe9 cr\xe8me, na\xefve fa\xe7ade. ".encode("latin-1") * 30
    )  # a few bad bytes: text
    lines = []
    m = prepare([str(corpus)], tmp_path / "d", "bpe:300", val_fraction=0.0, workers=1, log=lines.append)
    assert m["documents"] == 2 and m["skipped"] == {"binary_files": 2, "first": str(corpus / "b.txt")}
    assert any("skipped 2 binary file(s)" in line and "b.txt" in line for line in lines), lines
    for name in ("a.txt", "d.txt"):
        (corpus / name).unlink()
    with pytest.raises(UserError, match=r"no documents .*2 binary file\(s\) skipped, first .*b.txt"):
        prepare([str(corpus)], tmp_path / "e", "bpe:300", workers=1, log=quiet)
    assert not (tmp_path / "e").exists()
    (corpus / "b.txt").unlink()
    (corpus / "c.txt").unlink()
    (corpus / "x.txt").write_text("")
    (corpus / "y.txt").write_text("")
    with pytest.raises(UserError, match="only empty documents"):
        prepare([str(corpus)], tmp_path / "e", "bpe:300", workers=1, log=quiet)


def test_out_paths_are_checked_first_and_a_failed_prepare_leaves_no_folder(shared_data, tmp_path):
    src = shared_data / "corpora" / "tinyshakespeare.txt"
    (tmp_path / "file").write_text("x")
    assert_clean_error(baseforge("prepare", src, "--out", tmp_path / "file"), "is a file, not a folder")
    assert_clean_error(baseforge("prepare", src, "--out", tmp_path / "file" / "d"), "is a file, so no folder")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    out = tmp_path / "new" / "d"
    assert_clean_error(
        baseforge("prepare", tmp_path / "bad.jsonl", "--out", out, "--tokenizer", "bpe:300"), "bad.jsonl:2"
    )
    assert not (tmp_path / "new").exists()


def test_include_globs_turn_a_folder_of_any_text_files_into_a_corpus(tmp_path):
    pkg = tmp_path / "site-packages" / "pkg"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "core.py").write_text("def add(a, b):\n    return a + b\n" * 20)
    (pkg / "util.py").write_text("import os\n\nHOME = os.environ.get('HOME')\n" * 20)
    (pkg / "README.md").write_text("# pkg\n\nAdds numbers.\n" * 20)
    (pkg / "__pycache__" / "core.cpython-312.pyc").write_bytes(b"\x00\x01" * 100)
    out = tmp_path / "d"
    result = baseforge(
        "prepare", tmp_path / "site-packages", "--include", "*.py", "--include", "*.md",
        "--out", out, "--tokenizer", "bpe:300", "--val-fraction", "0", "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    m = read_manifest(out)
    assert m["documents"] == 3 and m["args"]["include"] == ["*.py", "*.md"]
    tok = load_tokenizer(m["tokenizer"], out)
    text = tok.decode(tokens(out, "train"))
    assert "def add(a, b)" in text and "HOME = os.environ" in text and "Adds numbers" in text
    assert_clean_error(
        baseforge("prepare", tmp_path / "site-packages", "--include", "*.rs", "--out", tmp_path / "e"), "*.rs"
    )
    assert_clean_error(baseforge("prepare", tmp_path / "site-packages", "--out", tmp_path / "e"), "no .txt")
