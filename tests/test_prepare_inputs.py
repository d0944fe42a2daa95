"""prepare's inputs are untrusted: a source folder's symlinks that lead out of it are skipped, named and
recorded (read only with --follow-symlinks), and every problem decoding a JSON line or a Parquet column is
one line naming the file and line (or column, or row), or a counted replacement, the same for any number
of workers. (Each test failed on the code before these checks.)"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from baseforge.data.prepare import prepare
from baseforge.data.shards import read_manifest, split_shards
from baseforge.errors import UserError
from baseforge.tokenizer import load_tokenizer
from helpers import assert_clean_error, baseforge

WORDS = "the quick brown fox jumps over the lazy dog while the cat sleeps in the sun. " * 40


def corpus_text(data_dir) -> str:
    m = read_manifest(data_dir)
    tok = load_tokenizer(m["tokenizer"], data_dir)
    ids = np.concatenate([np.asarray(s) for s in split_shards(data_dir, m, "train")])
    return tok.decode(ids.tolist())


def run(src, out, **options):
    lines: list[str] = []
    options = {"val_fraction": 0.0, "workers": 1, **options}
    m = prepare([str(src)], out, "bpe:300", log=lines.append, **options)
    return m, lines


@pytest.fixture
def linked(tmp_path):
    """A source folder with two files of its own, a symlink to one of them, and five symlinks out of it:
    to a file by absolute and by relative path, to a JSON lines file, to a folder, and one that dangles."""
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_text("SECRETWORD " * 50)
    (outside / "rows.jsonl").write_text(json.dumps({"text": "SECRETWORD in a row " * 20}) + "\n")
    (outside / "folder" / "more.txt").write_text("SECRETWORD " * 50)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text(WORDS)
    (src / "sub" / "b.txt").write_text(WORDS.upper())
    (src / "alias.txt").symlink_to("sub/b.txt")  # inside: read
    (src / "abs.txt").symlink_to(outside / "secret.txt")
    (src / "sub" / "rel.txt").symlink_to(os.path.join("..", "..", "outside", "secret.txt"))
    (src / "rows.jsonl").symlink_to(outside / "rows.jsonl")
    (src / "dir").symlink_to(outside / "folder", target_is_directory=True)
    (src / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    (src / "sub" / "up").symlink_to("..", target_is_directory=True)  # a folder inside: not walked
    return src


def test_symlinks_out_of_a_source_folder_are_skipped_named_and_recorded(linked, tmp_path):
    m, lines = run(linked, tmp_path / "d")
    assert "SECRETWORD" not in corpus_text(tmp_path / "d")
    assert m["documents"] == 3  # a.txt, sub/b.txt and alias.txt (a link inside the folder)
    out = [f"{linked}/{n}" for n in ("abs.txt", "dir", "gone.txt", "rows.jsonl", "sub/rel.txt")]
    assert m["skipped"]["symlinks"] == 5 and m["skipped"]["first_symlink"] == out[0]
    (line,) = [line for line in lines if "symlink" in line]
    assert line.startswith("skipped 5 symlink(s)") and all(name in line for name in out[:3]), line
    assert "and 2 more" in line and "--follow-symlinks" in line and "secret" not in line
    assert read_manifest(tmp_path / "d")["skipped"]["symlinks"] == 5
    assert "follow_symlinks" not in m["args"]


def test_follow_symlinks_reads_them_and_a_link_to_an_ancestor_ends(linked, tmp_path):
    m, lines = run(linked, tmp_path / "d", follow_symlinks=True)
    assert corpus_text(tmp_path / "d").count("SECRETWORD") == 50 + 20 + 50 + 50
    assert m["documents"] == 7 and "symlinks" not in m["skipped"] and m["args"]["follow_symlinks"] is True
    assert not [line for line in lines if "symlink" in line]


def test_a_folder_of_only_links_out_is_one_line_that_names_the_flag(linked, tmp_path):
    for path in (linked / "a.txt", linked / "sub" / "b.txt", linked / "alias.txt"):
        path.unlink()
    result = baseforge("prepare", linked, "--out", tmp_path / "d", "--tokenizer", "bpe:300")
    assert_clean_error(result, "holds no", "5 symlink(s)", "--follow-symlinks")
    assert not (tmp_path / "d").exists()
    # A file given on the command line is the user's own choice: read wherever it points.
    m, _ = run(linked / "abs.txt", tmp_path / "e")
    assert "SECRETWORD" in corpus_text(tmp_path / "e")


def test_a_local_hub_copy_is_a_source_folder_too(tmp_path):
    root = tmp_path / "mirror"
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": [WORDS] * 4}), root / "data" / "000.parquet")
    pq.write_table(pa.table({"text": ["SECRETWORD " * 50]}), tmp_path / "secret.parquet")
    (root / "data" / "001.parquet").symlink_to(tmp_path / "secret.parquet")
    lines: list[str] = []
    m = prepare(
        ["hf:org/name"],
        tmp_path / "d",
        "bpe:300",
        local=str(root),
        val_fraction=0,
        workers=1,
        log=lines.append,
    )
    assert m["documents"] == 4 and m["skipped"]["symlinks"] == 1
    assert "SECRETWORD" not in corpus_text(tmp_path / "d")
    assert any(str(root) in line and "001.parquet" in line for line in lines), lines
    (root / "only").mkdir()
    (root / "only" / "000.parquet").symlink_to(tmp_path / "secret.parquet")
    with pytest.raises(UserError, match="no parquet files .*1 symlink.*--follow-symlinks"):
        prepare(["hf:org/name"], tmp_path / "e", "bpe:300", local=str(root), sample="only", log=print)
    with pytest.raises(UserError, match="leads out of it .*--follow-symlinks"):
        prepare(
            ["hf:org/name"], tmp_path / "e", "bpe:300", local=str(root / "data"), sample="../../..", log=print
        )
