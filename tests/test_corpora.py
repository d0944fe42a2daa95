"""The open corpora `prepare` knows by name (data/corpora.py): each read offline from a local folder
laid out like its Hub repo (`--local`), files written here as the repo has them (parquet, or DCLM's
zstd JSON lines), and each refused in one line when the Hub is out of reach without `--local`. The
lazy download of a corpus's files, one at a time, is tested through a local Hub server in
tests/test_hub.py (FineWeb's parquet and DCLM's zstd shards)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from baseforge.cli.prepare import EPILOG
from baseforge.data.corpora import BY_NAME, CORPORA, hub_source
from baseforge.data.manifest import read_manifest
from baseforge.data.sources import open_source
from baseforge.errors import UserError
from helpers import ROOT, assert_clean_error, baseforge

# Each new corpus's repo as researched (not read from the table under test): its data files in the
# default folder, one data file elsewhere in the repo that a default prepare must not read, the
# column holding the text and the other columns a real file has.
LAYOUTS = {
    "climbmix": dict(
        files=["shard_00000.parquet", "shard_00001.parquet"],
        decoy=None,  # every shard is at the root: a default prepare reads them all
        column="text",
        others={},
    ),
    "dclm": dict(
        files=[
            "global-shard_01_of_10/local-shard_0_of_10/shard_00000000_processed.jsonl.zstd",
            "global-shard_01_of_10/local-shard_0_of_10/shard_00000001_processed.jsonl.zstd",
        ],
        decoy="global-shard_02_of_10/local-shard_0_of_10/shard_00000000_processed.jsonl.zstd",
        column="text",
        others={"url": "http://example.com/", "previous_word_count": 40},
    ),
    "starcoderdata": dict(
        files=["python/train-00000-of-00059.parquet", "python/train-00001-of-00059.parquet"],
        decoy="java/train-00000-of-00087.parquet",
        column="content",
        others={"id": "0", "max_stars_repo_path": "a.py", "max_stars_repo_name": "o/r", "max_stars_count": 3},
    ),
    "open-web-math": dict(
        files=[
            "data/train-00000-of-00114-5a023365406cb9c4.parquet",
            "data/train-00001-of-00114-e32fc2813a15f61c.parquet",
        ],
        decoy=None,
        column="text",
        others={"url": "http://example.com/", "date": "2023", "metadata": "{}"},
    ),
}
PER_FILE = 30  # documents in each data file; the decoy holds 7, so a count tells them apart


def write_file(path: Path, column: str, others: dict, docs: list[str]) -> None:
    """One data file as the repo has it: parquet (small row groups), or JSON lines under zstd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{column: d, **others} for d in docs]
    if path.name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=8)
        return
    with pa.output_stream(str(path), compression="zstd") as f:
        f.write(b"".join(json.dumps(r).encode() + b"\n" for r in rows))


def local_copy(root: Path, name: str) -> Path:
    layout = LAYOUTS[name]
    for k, rel in enumerate(layout["files"]):
        docs = [
            f"{name} document {k}-{i}: the tide rose {i} feet by the harbour." * 4 for i in range(PER_FILE)
        ]
        write_file(root / rel, layout["column"], layout["others"], docs)
    if layout["decoy"]:
        write_file(root / layout["decoy"], layout["column"], layout["others"], ["DECOY text " * 20] * 7)
    (root / "README.md").write_text("a dataset card, not data")
    return root


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_corpus_from_a_local_copy_laid_out_like_its_repo(name, tmp_path, gpt2_available):
    root = local_copy(tmp_path / "mirror", name)
    args = ["--tokenizer", "gpt2", "--val-fraction", "0", "--workers", "1"]
    result = baseforge("prepare", name, "--local", root, "--out", tmp_path / "d", *args, timeout=120)
    assert result.returncode == 0, result.stderr
    m = read_manifest(tmp_path / "d")
    assert m.sources == (name,) and m.documents == PER_FILE * len(LAYOUTS[name]["files"]), m.documents


def test_the_table_matches_the_layouts_researched():
    for name, layout in LAYOUTS.items():
        corpus = BY_NAME[name]
        assert corpus.example == layout["files"][0] and corpus.text_column == layout["column"]
        assert layout["files"][0].endswith(corpus.suffixes)
        assert all(Path(f).parent.as_posix() in (corpus.folder(), ".") for f in layout["files"])


def test_one_frozen_record_per_corpus_shown_in_help():
    assert len(BY_NAME) == len(CORPORA) >= 6
    for corpus in CORPORA:
        with pytest.raises(dataclasses.FrozenInstanceError):
            corpus.repo = "elsewhere"  # type: ignore[misc]
        for field in (corpus.name, corpus.repo, corpus.example, corpus.licence):
            assert field in EPILOG, field
    assert max(len(line) for line in EPILOG.splitlines() if "baseforge prepare" not in line) <= 100


def test_the_readme_table_has_every_corpus():
    readme = (ROOT / "README.md").read_text()
    for corpus in CORPORA:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{corpus.name}` |")), "")
        assert corpus.repo in row and f"`{corpus.text_column}`" in row, corpus.name


def test_a_corpus_reads_its_own_column_unless_told_another(tmp_path):
    root = local_copy(tmp_path / "mirror", "starcoderdata")
    assert open_source("starcoderdata", local=str(root)).text_column == "content"
    assert open_source("starcoderdata", local=str(root), text_column="body").text_column == "body"
    assert hub_source("hf:org/name").text_column == "text"  # type: ignore[union-attr]


def refusal(call) -> str:
    with pytest.raises(UserError) as caught:
        call()
    text = str(caught.value)
    shown_alone = caught.value.__context__ is None or caught.value.__suppress_context__  # no chained trace
    assert "\n" not in text and shown_alone, text
    return text


def test_bad_zstd_shards_and_missing_layouts_are_one_line(tmp_path):
    root = local_copy(tmp_path / "mirror", "dclm")
    shard = root / LAYOUTS["dclm"]["files"][1]
    shard.write_bytes(shard.read_bytes()[:-9])  # cut short, as an interrupted download leaves it
    cut = refusal(lambda: list(open_source("dclm", local=str(root)).documents()))
    assert cut.startswith(f"cannot read {shard}") and "Truncated" in cut, cut
    with pa.output_stream(str(shard), compression="zstd") as f:
        f.write(b'{"text": "fine"}\n{"text": 3}\n')
    wrong = refusal(lambda: list(open_source("dclm", local=str(root)).documents()))
    assert f"{shard}:2" in wrong and "--text-column" in wrong, wrong
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = refusal(lambda: open_source("dclm", local=str(empty)))
    assert "no jsonl.zstd or jsonl.zst files" in missing and LAYOUTS["dclm"]["files"][0] in missing, missing
    typo = refusal(lambda: open_source("climbmx"))
    assert "not found" in typo and "climbmix" in typo and "dclm" in typo, typo


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_offline_without_local_is_one_line_naming_the_layout(name, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    offline = refusal(lambda: open_source(name))
    assert "cannot reach the Hugging Face Hub" in offline and "--local DIR" in offline, offline
    assert f"DIR/{BY_NAME[name].example}" in offline, offline


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_offline_prepare_fails_in_one_line(name, tmp_path):
    result = baseforge("prepare", name, "--out", tmp_path / "d", env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert_clean_error(result, "Hugging Face Hub", "--local DIR")
