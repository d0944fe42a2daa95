"""prepare's input checks: a single-document corpus gets its val split from the stream's tail, binary
files are skipped and named (and no text at all is an error), out paths are checked first and a failed
prepare leaves no folder, and --include globs turn a folder of any text files into a corpus."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from baseforge.cli import main
from baseforge.data.manifest import read_manifest
from baseforge.data.prepare import prepare
from baseforge.data.shards import split_shards
from baseforge.errors import UserError
from baseforge.tokenizer import load_tokenizer
from helpers import assert_clean_error, baseforge, popen


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
    assert m.held_out == "tail" and whole.held_out == "sample"
    assert m.splits["val"].tokens == int(m.tokens * 0.1) > 20_000  # reaches back into written shards
    stream = tokens(tmp_path / "all", "train")
    assert np.array_equal(
        np.concatenate([tokens(tmp_path / "d", "train"), tokens(tmp_path / "d", "val")]), stream
    )
    assert any("last" in line and "--val-fraction 0.1" in line for line in lines), lines
    assert read_manifest(tmp_path / "d").held_out == "tail"
    assert main(["data", "info", str(tmp_path / "d")]) == 0
    shown = capsys.readouterr().out
    assert "last tokens of the stream" in shown and f"sha256 {m.tokenizer['sha256'][:12]}" in shown


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
    assert m.documents == 2 and m.skipped == {"binary_files": 2, "first": str(corpus / "b.txt")}
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
    assert m.documents == 3 and m.args["include"] == ["*.py", "*.md"]
    tok = load_tokenizer(m.tokenizer, out)
    text = tok.decode(tokens(out, "train"))
    assert "def add(a, b)" in text and "HOME = os.environ" in text and "Adds numbers" in text
    assert_clean_error(
        baseforge("prepare", tmp_path / "site-packages", "--include", "*.rs", "--out", tmp_path / "e"), "*.rs"
    )
    assert_clean_error(baseforge("prepare", tmp_path / "site-packages", "--out", tmp_path / "e"), "no .txt")


# --- long documents, the data dir's lock, --overwrite, the val floor, the stream tail's resume --------
def shakespeare(shared_data):
    return shared_data / "corpora" / "tinyshakespeare.txt"


def test_a_long_document_is_tokenized_in_pieces_cut_at_whitespace_with_the_same_tokens(
    shared_data, tmp_path, monkeypatch
):
    from baseforge.data import workers
    from baseforge.tokenizer import TrainedBPETokenizer

    monkeypatch.setattr(workers, "MAX_PIECE_CHARS", 3000)
    longest = []
    encode = TrainedBPETokenizer.encode_arrays

    def spy(self, texts):
        longest.append(max(map(len, texts)))
        return encode(self, texts)

    monkeypatch.setattr(TrainedBPETokenizer, "encode_arrays", spy)
    text = shakespeare(shared_data).read_text()
    m = prepare(
        [str(shakespeare(shared_data))], tmp_path / "d", "bpe:300", val_fraction=0, workers=1, log=quiet
    )
    assert longest and max(longest) <= 3000  # no piece over the bound was encoded
    tok = load_tokenizer(m.tokenizer, tmp_path / "d")
    assert tokens(tmp_path / "d", "train").tolist() == tok.encode(text) + [tok.eot_id]  # the unsplit encoding
    # No whitespace for a long stretch: a hard cut at the bound.
    assert workers.cut_points("x" * 7000, 3000) == [3000, 6000]
    assert workers.cut_points("ab  cd\nef", 4) == [3, 6]  # before a run's last space, at a newline


def test_a_second_prepare_into_the_same_out_is_refused_and_a_dead_holder_never_blocks(shared_data, tmp_path):
    out = tmp_path / "d"
    args = [shakespeare(shared_data), "--out", out, "--tokenizer", "bpe:300", "--workers", "1"]
    first = popen("prepare", *args)
    deadline = time.monotonic() + 60
    while not (out / ".prepare.lock").is_file() or not (out / ".prepare.lock").read_text():
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # held mid-prepare, however fast this machine is
    try:
        assert_clean_error(baseforge("prepare", *args), "in use by pid", str(first.pid), "another --out")
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert read_manifest(out).documents == 1 and not (out / ".prepare.lock").exists()
    # A prepare killed while holding the lock: the next one runs.
    again = popen("prepare", *args, "--overwrite")
    while not (out / ".prepare.lock").is_file() and time.monotonic() < deadline + 60:
        time.sleep(0.01)
    again.send_signal(signal.SIGKILL)
    again.wait()
    result = baseforge("prepare", *args, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert "prepared 1 documents" in result.stdout


def test_overwrite_builds_beside_the_old_data_dir_and_a_failure_leaves_it_as_it_was(
    shared_data, tmp_path, monkeypatch, capsys
):
    import errno
    import hashlib
    import os

    from baseforge import fileio
    from baseforge.data.loader import TokenData

    out = tmp_path / "d"
    src = str(shakespeare(shared_data))
    assert main(["prepare", src, "--out", str(out), "--tokenizer", "bpe:300", "--workers", "1"]) == 0

    def digests():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}

    before = digests()
    calls = []

    def fills_up(path):
        calls.append(path)
        if len(calls) > 2:  # the tokenizer and a shard are written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "_fsync_file", fills_up)
    new = ["prepare", src, "--out", str(out), "--tokenizer", "bpe:400", "--workers", "1", "--overwrite"]
    assert main([*new, "--shard-tokens", "20000"]) == 1
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err.splitlines()[-1] and "Traceback" not in err
    assert digests() == before  # the old data dir, untouched
    assert TokenData(out, 64, 0).tokenizer.vocab_size == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no staging folder left
    monkeypatch.undo()
    assert main(new) == 0
    assert read_manifest(out).vocab_size == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def few_long_documents(shared_data, tmp_path, n=105):
    """n documents of ~10k characters each: the document rule of --val-fraction 0.01 holds out one."""
    import json

    text = shakespeare(shared_data).read_text()
    size = len(text) // n
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"text": text[i * size : (i + 1) * size]}) + "\n" for i in range(n)))
    return str(path)


def split_documents(ids: np.ndarray, eot: int) -> list[tuple[int, ...]]:
    """A concat-packed stream's documents, each with its end-of-text."""
    ends = np.flatnonzero(ids == eot) + 1
    return [tuple(d) for d in np.split(ids, ends) if len(d)]


def test_few_long_documents_get_the_val_floor_by_sampling_more_whole_documents(shared_data, tmp_path):
    from baseforge.data.docsample import held_out

    src = few_long_documents(shared_data, tmp_path)
    opts = dict(val_fraction=0.01, val_seed=3)
    plain = prepare([src], tmp_path / "p", "bpe:300", min_val_tokens=0, log=quiet, **opts)
    sampled = np.flatnonzero(held_out(np.arange(105), 0.01, 3))
    assert plain.splits["val"].documents == len(sampled) > 0 and plain.val_floor is None
    assert plain.held_out == "sample" and plain.val_seed == 3
    lines = []
    m = prepare([src], tmp_path / "f", "bpe:300", min_val_tokens=20_000, log=lines.append, **opts)
    val = m.splits["val"]
    assert 20_000 <= val.tokens < 40_000 and val.documents > len(sampled)
    assert m.val_floor["min_val_tokens"] == 20_000
    assert m.val_floor["moved_documents"] == val.documents - len(sampled)
    assert m.val_floor["from"] == "a seeded sample of the train documents"
    assert m.args["min_val_tokens"] == 20_000
    # The floor's documents are whole train documents from across the stream, not its end.
    eot = m.tokenizer["eot_id"]
    before, after = (split_documents(tokens(tmp_path / d, "train"), eot) for d in ("p", "f"))
    kept = set(after)
    moved = [i for i, doc in enumerate(before) if doc not in kept]
    assert len(moved) == m.val_floor["moved_documents"]
    assert [d for i, d in enumerate(before) if i not in moved] == after
    assert split_documents(tokens(tmp_path / "f", "val"), eot)[len(sampled) :] == [before[i] for i in moved]
    assert min(moved) < len(before) // 2, moved  # a sample spread over the stream
    assert m.splits["train"].documents == 105 - val.documents
    assert (
        lines[-1].startswith("prepared 105 documents")
        and f"validation {val.documents} documents" in lines[-1]
        and "a seeded sample of whole documents (seed 3)" in lines[-1]
    )
    warning = [line for line in lines if line.startswith("warning:")]  # the floor is met, but it is small
    assert len(warning) == 1 and "65,536" in warning[0] and "--min-val-tokens" not in warning[0], lines
    # The default floor (1,048,576) is capped at 10% of this corpus: val gets that, with no warning.
    lines = []
    d = prepare([src], tmp_path / "d", "bpe:300", val_fraction=0.01, log=lines.append)
    cap = int(d.tokens * 0.1)
    assert cap <= d.splits["val"].tokens < 2 * cap and "min_val_tokens" not in d.args
    assert not [line for line in lines if line.startswith("warning:")], lines
    assert lines[-1].startswith("prepared") and "validation" in lines[-1]
    # The run's opening lines warn when val holds fewer tokens than eval_tokens.
    from baseforge.data.loader import TokenData
    from baseforge.train.summary import val_warning

    data = TokenData(tmp_path / "d", 64, 0)
    assert val_warning(data, data.val.tokens) is None
    line = val_warning(data, 1_048_576)
    assert line.startswith("warning:") and f"{data.val.tokens:,} tokens" in line and "1,048,576" in line


def test_a_val_that_meets_the_floor_leaves_the_output_byte_identical(shared_data, tmp_path):
    src = [str(shared_data / "corpora" / "c4-sample")]
    for floor in (0, 1000):
        prepare(src, tmp_path / f"f{floor}", "bpe:300", val_fraction=0.25, min_val_tokens=floor, log=quiet)
    names = sorted(p.name for p in (tmp_path / "f0").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "f1000").iterdir())
    for name in names:
        if name != "manifest.json":  # its args record the non-default floor
            assert (tmp_path / "f0" / name).read_bytes() == (tmp_path / "f1000" / name).read_bytes(), name


@pytest.mark.parametrize("held_out", ["tail", "floor"])
def test_a_prepare_that_dies_after_the_stream_tail_split_resumes_to_the_same_splits(
    shared_data, tmp_path, monkeypatch, held_out
):
    """Both the stream-tail split and the val floor read the last train shards back and write them
    again; a prepare killed in those writes resumes to the splits a whole run gives."""
    from baseforge.data import packing

    opts = dict(shard_tokens=20_000, workers=1, log=quiet)
    if held_out == "tail":
        src = [str(shakespeare(shared_data))]
        opts.update(val_fraction=0.1)
    else:
        src = [few_long_documents(shared_data, tmp_path)]
        opts.update(val_fraction=0.01, min_val_tokens=50_000)
    ref = prepare(src, tmp_path / "ref", "bpe:300", **opts)
    assert ref.held_out == "tail" if held_out == "tail" else ref.val_floor["moved_tokens"] > 20_000
    write = packing.write_shard

    written = []

    def dies_at_val(path, tokens, vocab):  # the final flush: train shards written again, then val fails
        if path.name.startswith("val_") and len(set(written)) < len(written):
            raise OSError(28, "No space left on device", str(path))
        written.append(path.name)
        write(path, tokens, vocab)

    monkeypatch.setattr(packing, "write_shard", dies_at_val)
    with pytest.raises(OSError):
        prepare(src, tmp_path / "cut", "bpe:300", **opts)
    assert len(set(written)) < len(written)  # it died after writing a train shard again
    monkeypatch.undo()
    m = prepare(src, tmp_path / "cut", "bpe:300", **opts)
    assert m.splits == ref.splits
    for split in ("train", "val"):
        assert np.array_equal(tokens(tmp_path / "cut", split), tokens(tmp_path / "ref", split)), split


def test_a_floor_no_whole_document_can_meet_leaves_val_and_warns(shared_data, tmp_path):
    """The sample holds out one short document; every other one is longer than the floor may add
    (twice the floor, less what val holds): val stays as sampled, with a warning."""
    import json

    from baseforge.data.docsample import held_out

    text = shakespeare(shared_data).read_text()
    docs = [text[i * 60_000 : (i + 1) * 60_000] for i in range(5)]  # ~20% of the corpus each
    docs.insert(2, text[300_000:306_000])  # the short one, ~2%
    seed = next(s for s in range(1000) if list(np.flatnonzero(held_out(np.arange(6), 0.2, s))) == [2])
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    lines = []
    m = prepare(
        [str(path)], tmp_path / "d", "bpe:300", val_fraction=0.2, val_seed=seed, log=lines.append
    )  # the default floor, capped at 10% of the corpus
    assert m.splits["val"].documents == 1 and m.val_floor is None and m.held_out == "sample"
    warning = [line for line in lines if line.startswith("warning:")]
    assert len(warning) == 1 and "no more whole documents fit" in warning[0], lines
    assert "validation 1 documents" in lines[-1]


def test_a_topic_ordered_corpus_is_held_out_from_every_topic(tmp_path):
    """Documents ordered by topic (a site's pages, a book's chapters): the held-out sample reaches
    each topic, where the end of the stream would be the last one."""
    import json

    topics = ["alpha", "beta", "gamma", "delta"]
    docs = [f"{t} page {i}: " + " ".join([t] * 30) for t in topics for i in range(100)]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    m = prepare([str(path)], tmp_path / "d", "bpe:300", val_fraction=0.05, min_val_tokens=0, log=quiet)
    from baseforge.data.docsample import held_out

    held = np.flatnonzero(held_out(np.arange(400), 0.05, 0))
    assert m.splits["val"].documents == len(held) and {i // 100 for i in held} == {0, 1, 2, 3}
    tail = prepare(
        [str(path)],
        tmp_path / "t",
        "bpe:300",
        val_fraction=0.05,
        held_out="tail",
        min_val_tokens=0,
        log=quiet,
    )
    assert tail.held_out == "tail" and tail.val_seed is None and tail.args["held_out"] == "tail"
    # The tail is the end of the stream: the last topic's tokens only.
    assert tail.splits["val"].tokens == int(tail.tokens * 0.05)


def test_a_run_opens_with_a_warning_when_val_is_smaller_than_eval_tokens(shakespeare_dir, tmp_path, capsys):
    from helpers import TINY, sets

    args = ["train", "--data", str(shakespeare_dir), "--out", str(tmp_path / "run")]
    assert main([*args, *sets(*TINY, "max_steps=1", "eval_tokens=100000000")]) == 0
    out = capsys.readouterr()
    warning = [
        line for line in (out.out + out.err).splitlines() if line.startswith("warning: the validation")
    ]
    assert len(warning) == 1 and "eval_tokens=100,000,000" in warning[0], out
    assert main([*args[:-1], str(tmp_path / "run2"), *sets(*TINY, "max_steps=1")]) == 0  # eval_tokens=2048
    out = capsys.readouterr()
    assert "warning: the validation" not in out.out + out.err


def test_the_floor_fills_val_not_the_test_slice(shared_data, tmp_path):
    """Documents the floor moves go to val alone: routed as held-out ones, they filled the test slice
    first and val ended under its floor (with a warning blaming the documents' size)."""
    import json

    text = shakespeare(shared_data).read_text()
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": text[i * 300 : (i + 1) * 300]}) + "\n" for i in range(400)))
    lines = []
    m = prepare(
        [str(path)], tmp_path / "d", "bpe:300", val_fraction=0.01, test_tokens=1000, min_val_tokens=2000,
        log=lines.append,
    )  # fmt: skip
    assert m.splits["val"].tokens >= 2000 and m.val_floor is not None
    assert not [line for line in lines if "no more whole documents fit" in line], lines
