"""prepare's inputs are untrusted: a source folder's symlinks that lead out of it are skipped, named and
recorded (read only with --follow-symlinks), and every problem decoding a JSON line or a Parquet column is
one line naming the file and line (or column, or row), or a counted replacement, the same for any number
of workers. (Each test failed on the code before these checks.)"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from baseforge.data.manifest import read_manifest
from baseforge.data.prepare import prepare
from baseforge.data.shards import split_shards
from baseforge.data.sources import open_source
from baseforge.data.workers import encoded_pieces
from baseforge.errors import UserError
from baseforge.tokenizer import TrainedBPETokenizer, load_tokenizer
from helpers import assert_clean_error, baseforge

WORDS = "the quick brown fox jumps over the lazy dog while the cat sleeps in the sun. " * 40


def corpus_text(data_dir) -> str:
    m = read_manifest(data_dir)
    tok = load_tokenizer(m.tokenizer, data_dir)
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
    assert m.documents == 3  # a.txt, sub/b.txt and alias.txt (a link inside the folder)
    out = [f"{linked}/{n}" for n in ("abs.txt", "dir", "gone.txt", "rows.jsonl", "sub/rel.txt")]
    assert m.skipped["symlinks"] == 5 and m.skipped["first_symlink"] == out[0]
    (line,) = [line for line in lines if "symlink" in line]
    assert line.startswith("skipped 5 symlink(s)") and all(name in line for name in out[:3]), line
    assert "and 2 more" in line and "--follow-symlinks" in line and "secret" not in line
    assert read_manifest(tmp_path / "d").skipped["symlinks"] == 5
    assert "follow_symlinks" not in m.args


def test_follow_symlinks_reads_them_and_a_link_to_an_ancestor_ends(linked, tmp_path):
    m, lines = run(linked, tmp_path / "d", follow_symlinks=True)
    assert corpus_text(tmp_path / "d").count("SECRETWORD") == 50 + 20 + 50 + 50
    assert m.documents == 7 and "symlinks" not in m.skipped and m.args["follow_symlinks"] is True
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
    assert m.documents == 4 and m.skipped["symlinks"] == 1
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


def outcome(sources, out, workers: int, **options):
    """("ok", the manifest without its arguments, the log) or ("refused", the message)."""
    lines: list[str] = []
    try:
        m = prepare(
            [str(s) for s in sources],
            out,
            "bpe:300",
            val_fraction=0.0,
            workers=workers,
            log=lines.append,
            **options,
        )
    except UserError as exc:
        assert "\n" not in str(exc)
        return "refused", str(exc)
    return (
        "ok",
        {k: v for k, v in m.to_json().items() if k not in ("args", "args_key")},
        [line for line in lines if "prepared" not in line],
    )


def same_for_1_and_2_workers(tmp_path, sources, **options):
    one = outcome(sources, tmp_path / "w1", 1, **options)
    two = outcome(sources, tmp_path / "w2", 2, **options)
    assert one == two
    return one


def test_json_lines_that_are_not_utf8_are_one_line_naming_file_and_line(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 cr\xe8me"}\n')
    kind, message = same_for_1_and_2_workers(tmp_path, [src])
    assert kind == "refused" and message.startswith(f"{src}:2: not UTF-8 (byte 0xe9 at column 14)")
    assert "iconv" in message
    assert_clean_error(
        baseforge("prepare", src, "--out", tmp_path / "d", "--tokenizer", "bpe:300", "--workers", "2"),
        f"{src}:2: not UTF-8",
    )
    assert not (tmp_path / "d").exists()


def test_a_lone_surrogate_becomes_ufffd_counted_and_named(tmp_path):
    src = tmp_path / "rows.jsonl"
    rows = [WORDS, "half an emoji \ud83d here", WORDS, "and \udc00 another \ud800"]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))  # json.dumps writes \ud83d escapes
    kind, m, lines = same_for_1_and_2_workers(tmp_path, [src])
    assert kind == "ok" and m["documents"] == 4
    assert m["surrogates"] == {"documents": 2, "first": f"{src}:2"}
    assert any(line.startswith("replaced lone surrogate") and f"{src}:2" in line for line in lines), lines
    text = corpus_text(tmp_path / "w1")
    assert "half an emoji \ufffd here" in text and "and \ufffd another \ufffd" in text
    assert (tmp_path / "w1" / "train_000000.bin").read_bytes() == (
        tmp_path / "w2" / "train_000000.bin"
    ).read_bytes()


@pytest.mark.parametrize(
    "column, kind",
    [
        (pa.array([1, 2, 3]), "int64"),
        (pa.array([["a"], ["b"], []]), "list<element: string>"),
        (pa.array([b"caf\xc3\xa9", b"x", b"y"]), "binary"),
        (pa.array([1.5, None, 2.0]), "double"),
    ],
)
def test_a_parquet_text_column_of_another_type_is_one_line_naming_it(tmp_path, column, kind):
    src = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": column}), src)
    refused, message = same_for_1_and_2_workers(tmp_path, [src])
    assert message == (
        f"{src}: column 'text' holds {kind}, not text (a string column); "
        "name the column that holds the text with --text-column"
    )


def test_a_parquet_string_that_is_not_utf8_is_one_line_naming_its_row(tmp_path):
    src = tmp_path / "rows.parquet"
    texts = pa.array([WORDS.encode(), b"caf\xe9", b"ok"], type=pa.binary()).view(pa.string())  # unchecked
    pq.write_table(pa.table({"text": pa.chunked_array([texts, texts])}), src, row_group_size=3)
    refused, message = same_for_1_and_2_workers(tmp_path, [src])
    assert refused == "refused" and message.startswith(
        f"{src}: row 1 (from 0) of its text column is not UTF-8"
    )


def test_a_bad_later_file_stops_at_the_same_error_for_any_number_of_workers(tmp_path):
    """The parent finds a Parquet file's missing column while workers still read an earlier file: the
    earlier file's error comes first, as a single worker reading in order would report it. (prepare's
    own run with a bpe tokenizer reads every document for the BPE first, in the parent; GPT-2's does not.)"""
    (tmp_path / "src").mkdir()
    first, second = tmp_path / "src" / "a.jsonl", tmp_path / "src" / "b.parquet"
    first.write_text("".join(json.dumps({"text": WORDS}) + "\n" for _ in range(3)) + "{oops\n")
    pq.write_table(pa.table({"body": ["x"]}), second)
    tok = TrainedBPETokenizer.train([WORDS], 300)
    for workers in (1, 2):
        pieces = open_source(str(tmp_path / "src")).pieces()
        with pytest.raises(UserError, match=rf"^{re.escape(str(first))}:4: not valid JSON"):
            with encoded_pieces(tok, pieces, workers, tmp_path) as results:
                list(results)
    refused, message = same_for_1_and_2_workers(tmp_path, [tmp_path / "src"])
    assert message.startswith(f"{first}:4: not valid JSON at column 2")


def test_a_json_lines_file_that_opens_with_null_is_refused_not_a_crash(tmp_path):
    """pyarrow's JSON reader dereferences a null pointer on a `null` first row (apache/arrow#47409):
    the process died of SIGSEGV (and a worker's death left a pool waiting forever)."""
    src = tmp_path / "rows.jsonl"
    src.write_bytes(b"null\n" + json.dumps({"text": WORDS}).encode() + b"\n")
    result = baseforge(
        "prepare", src, "--out", tmp_path / "d", "--tokenizer", "bpe:300", "--workers", "1", timeout=300
    )
    assert_clean_error(result, f"{src}:1: null, not an object with a 'text' field")
    refused, message = same_for_1_and_2_workers(tmp_path, [src])
    assert message.startswith(f"{src}:1: null, not an object")


def test_a_parquet_file_written_again_at_the_same_path_is_read_again(tmp_path):
    """The open-file cache was keyed by the path alone: a second prepare in the same process read the
    new file's pages with the old file's footer."""
    src = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": [WORDS, WORDS]}), src)
    assert run(src, tmp_path / "a")[0].documents == 2
    pq.write_table(pa.table({"text": [WORDS.upper()] * 3, "id": [1, 2, 3]}), src)
    assert run(src, tmp_path / "b")[0].documents == 3


def test_prepare_help_says_what_is_read_and_what_bad_input_gets():
    result = baseforge("prepare", "--help")
    assert result.returncode == 0, result.stderr
    flat = " ".join(result.stdout.split())
    assert "--follow-symlinks" in flat and "What is read: nothing outside a folder SOURCE" in flat
    assert 'A lone surrogate escape in a JSON string ("\\ud800"' in flat and "Bad input:" in flat


@pytest.mark.parametrize(
    "bad, error",
    [
        (b'{"text":"a"}{"text":"b"}', ":2: not valid JSON at column 13 (Extra data)"),
        (b'{"text":"a"\n}{"text":"b"}', ":2: not valid JSON at column 12 (Expecting ',' delimiter)"),
        (b'{"text":"a","x":' + b"[" * 300 + b"]" * 300 + b"}", ":2: JSON nested deeper than 200 levels"),
        (b'{"text":"a","x":"caf\xe9"}', ":2: not UTF-8 (byte 0xe9 at column 21)"),
    ],
    ids=["two objects", "over two lines", "deep", "bad byte elsewhere"],
)
def test_a_line_that_is_not_one_json_object_is_refused_whatever_its_neighbours(tmp_path, bad, error):
    """pyarrow's reader, tried first on a whole piece, took an object over two lines, two objects on
    one, deep nesting and bad bytes outside the text field; the line-by-line reader refuses them, so
    which one answered depended on the lines around."""
    src = tmp_path / "rows.jsonl"
    good = json.dumps({"text": WORDS}).encode()
    src.write_bytes(b"\n".join([good, bad, good, good]) + b"\n")
    with pytest.raises(UserError) as refused:
        list(open_source(str(src)).documents())
    assert str(refused.value).startswith(f"{src}{error}")


WORKER_DIES = """
import os
from baseforge.data.workers import encoded_pieces
from baseforge.errors import UserError
from baseforge.tokenizer import TrainedBPETokenizer

class Dies:
    def read(self):
        os._exit(3)  # as a crash in a reading library, or the kernel's out-of-memory killer, would

tok = TrainedBPETokenizer.train(["some words to learn from"], 300)
try:
    with encoded_pieces(tok, [Dies(), Dies(), Dies()], 2, ".") as results:
        list(results)
except UserError as exc:
    print("refused:", exc)
"""


def test_a_worker_that_dies_is_an_error_not_a_wait_forever(tmp_path):
    """multiprocessing.Pool waited forever on a dead worker's task, and its terminate() could hang for
    good when a worker was stopped mid-reply (python/cpython#96995)."""
    import subprocess
    import sys

    from helpers import cli_env

    result = subprocess.run(
        [sys.executable, "-c", WORKER_DIES],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "refused: a tokenizer worker process died" in result.stdout, result.stdout + result.stderr


def test_a_local_zstd_json_lines_file_and_folder_are_read(tmp_path):
    """DCLM's shard format (.jsonl.zstd, or .jsonl.zst) as a local file or in a folder, not only through
    the corpus name."""
    import json

    import pyarrow as pa

    from baseforge.data.prepare import prepare

    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("a.jsonl.zst", "b.jsonl.zstd"):
        with pa.output_stream(str(folder / name), compression="zstd") as out:
            out.write(
                "".join(json.dumps({"text": f"{name} document {i} " * 20}) + "\n" for i in range(30)).encode()
            )
    m = prepare([str(folder / "a.jsonl.zst")], tmp_path / "one", "bpe:300", log=lambda *_: None)
    assert m.documents == 30
    m = prepare([str(folder)], tmp_path / "both", "bpe:300", log=lambda *_: None)
    assert m.documents == 60
