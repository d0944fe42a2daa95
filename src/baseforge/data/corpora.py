"""The open pretraining corpora `baseforge prepare` knows by name: one typed record each.

A record says where a corpus lives on the Hugging Face Hub and how it is laid out there: the
dataset repo, the folder read by default (`--sample` picks another), which of its files are data,
the column (or JSON field) holding the text, and the licence. hub.py lists and fetches a corpus's
files, one at a time as tokenization reaches them; `--local DIR` reads a copy laid out the same
way. The README's table says why each is here, with a published figure and where it is from.

`hf:OWNER/NAME` (any repo of parquet files with a `text` column) gets an ad-hoc record from
`hub_source`, so the Hub code has one shape to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

PARQUET = (".parquet",)


@dataclass(frozen=True)
class Corpus:
    """One corpus on the Hub, as `prepare NAME` reads it."""

    name: str  # the SOURCE name on the command line
    repo: str  # the Hub dataset repo
    sample: str  # --sample's default: a repo folder ('sample-10BT' is sample/10BT); '' = the root
    example: str  # one data file's path in the repo (the layout), for --help and messages
    text_column: str  # read unless --text-column names another
    licence: str
    about: str  # what it is, in a few words
    suffixes: tuple[str, ...] = PARQUET  # which files of the folder are data

    def folder(self, sample: str | None = None) -> str:
        """The repo folder read for `sample` (default: this corpus's own)."""
        return sample_folder(sample or self.sample)

    def example_in(self, folder: str) -> str:
        """A data file's path as it would be in `folder`: what a --local copy should hold."""
        name = PurePosixPath(self.example).name if self.example else "FILE" + self.suffixes[0]
        return f"{folder}/{name}" if folder else name

    @property
    def kinds(self) -> str:
        """The data files' kinds, for a message: 'parquet', 'jsonl.zstd or jsonl.zst'."""
        return " or ".join(s.lstrip(".") for s in self.suffixes)


def sample_folder(sample: str) -> str:
    """'sample-10BT' -> 'sample/10BT' (FineWeb's folder for that config); any other is a folder path."""
    if sample.startswith("sample-"):
        return "sample/" + sample[len("sample-") :]
    return sample.strip("/")


ZSTD_LINES = (".jsonl.zstd", ".jsonl.zst")  # DCLM's shards are .zstd; a recompressed copy, .zst

CORPORA: tuple[Corpus, ...] = (
    Corpus(
        "fineweb",
        "HuggingFaceFW/fineweb",
        "sample-10BT",
        "sample/10BT/000_00000.parquet",
        "text",
        "ODC-By 1.0",
        "Common Crawl web text, filtered and deduplicated",
    ),
    Corpus(
        "fineweb-edu",
        "HuggingFaceFW/fineweb-edu",
        "sample-10BT",
        "sample/10BT/000_00000.parquet",
        "text",
        "ODC-By 1.0",
        "FineWeb's pages a classifier scored educational",
    ),
    Corpus(
        "climbmix",
        "karpathy/climbmix-400b-shuffle",
        "",  # 6,543 shuffled shards at the root, shard_00000 to shard_06542
        "shard_00000.parquet",
        "text",
        "CC BY-NC 4.0 (NVIDIA's ClimbMix)",
        "NVIDIA's ClimbMix as text, shuffled (nanochat's)",
    ),
    Corpus(
        "dclm",
        "mlfoundations/dclm-baseline-1.0",
        "global-shard_01_of_10/local-shard_0_of_10",  # a hundredth of the 10 x 10 shard folders
        "global-shard_01_of_10/local-shard_0_of_10/shard_00000000_processed.jsonl.zstd",
        "text",
        "CC BY 4.0",
        "DCLM-Baseline, classifier-filtered web text",
        ZSTD_LINES,
    ),
    Corpus(
        "starcoderdata",
        "bigcode/starcoderdata",
        "python",  # one folder per language, plus GitHub issues, commits and notebooks
        "python/train-00000-of-00059.parquet",
        "content",
        "other: BigCode's terms of use",
        "StarCoder's training code, deduplicated",
    ),
    Corpus(
        "open-web-math",
        "open-web-math/open-web-math",
        "data",
        "data/train-00000-of-00114-5a023365406cb9c4.parquet",
        "text",
        "ODC-By 1.0",
        "mathematical web pages, LaTeX kept",
    ),
)

BY_NAME = {c.name: c for c in CORPORA}


def hub_source(spec: str) -> Corpus | None:
    """The corpus SOURCE `spec` names, a record for `hf:OWNER/NAME` (its root unless --sample, parquet
    files, a `text` column), or None for any other SOURCE (a local file or folder, builtin)."""
    if spec in BY_NAME:
        return BY_NAME[spec]
    if spec.startswith("hf:"):
        return Corpus(spec, spec[len("hf:") :], "", "", "text", "the repo's own", "a Hub dataset repo")
    return None


def names() -> str:
    """The corpus names, for a message: 'fineweb, fineweb-edu, ...'."""
    return ", ".join(BY_NAME)


def help_table() -> str:
    """The corpora for `prepare --help`, three lines each: the repo and what it is; a data file's path
    in the repo (the layout a --local copy keeps); the default --sample, the column and the licence."""
    lines = []
    for c in CORPORA:
        lines.append(f"  {c.name:<15} {c.repo}: {c.about}")
        lines.append(f"  {'':<15} {c.example}")
        sample = c.sample or "(the root)"
        lines.append(f"  {'':<15} default --sample {sample}; column {c.text_column}; {c.licence}")
    return "\n".join(lines)
