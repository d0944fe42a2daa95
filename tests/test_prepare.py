"""prepare's input checks: a single-document corpus gets its val split from the stream's tail, binary
files are skipped and named (and no text at all is an error), out paths are checked first and a failed
prepare leaves no folder, and --include globs turn a folder of any text files into a corpus."""

from __future__ import annotations

import numpy as np
import pytest

from baseforge.cli import main
from baseforge.data.prepare import prepare
from baseforge.data.shards import read_manifest, split_shards
from baseforge.errors import UserError
from baseforge.tokenizer import load_tokenizer
from helpers import assert_clean_error, baseforge


def quiet(*_):
    pass


def tokens(data_dir, split):
    return np.concatenate([np.asarray(s) for s in split_shards(data_dir, read_manifest(data_dir), split)])


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
