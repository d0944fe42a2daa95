"""Tokenizers behind one small interface: tiktoken's GPT-2 BPE, or a byte-level BPE trained here.

A data dir records its tokenizer in its manifest (`{"name": ..., "vocab_size": ..., "eot_id": ...}`,
plus `tokenizer.json` beside it for trained BPEs), and checkpoints copy that record, so a run
always knows how to turn text into its token ids and back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from baseforge.errors import UserError

EOT = "<|endoftext|>"
GPT2_DIR_ENV = "BASEFORGE_GPT2_DIR"  # a folder with OpenAI's vocab.bpe + encoder.json


class Tokenizer:
    """encode / decode / end-of-text id / vocab size / name."""

    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's ids as a numpy array (no list of Python ints on the way, where the library allows)."""
        return [np.asarray(ids, dtype=np.uint32) for ids in self.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def record(self) -> dict:
        """What a manifest or checkpoint stores to find this tokenizer again."""
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}

    def save(self, directory: Path) -> None:
        """Write any files the record refers to into `directory` (nothing for GPT-2)."""


class GPT2Tokenizer(Tokenizer):
    """OpenAI's GPT-2 BPE through tiktoken (r50k_base). Special tokens in text are plain text."""

    name = "gpt2"

    def __init__(self):
        import tiktoken

        local = os.environ.get(GPT2_DIR_ENV)
        try:
            if local:
                import tiktoken.load

                ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
                    str(Path(local) / "vocab.bpe"), str(Path(local) / "encoder.json")
                )
                self.enc = tiktoken.Encoding(
                    "gpt2",
                    pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                    mergeable_ranks=ranks,
                    special_tokens={EOT: 50256},
                )
            else:
                self.enc = tiktoken.get_encoding("gpt2")
        except FileNotFoundError as exc:
            raise UserError(
                f"{GPT2_DIR_ENV}={local}: {exc.strerror}: {exc.filename}; "
                "that folder must hold OpenAI's vocab.bpe and encoder.json"
            ) from None
        except Exception as exc:  # tiktoken raises requests' errors when it cannot download
            raise UserError(
                "cannot load the GPT-2 tokenizer: tiktoken could not download it "
                f"({type(exc).__name__}). Offline, set TIKTOKEN_CACHE_DIR to a tiktoken cache, "
                f"or {GPT2_DIR_ENV} to a folder with OpenAI's vocab.bpe and encoder.json"
            ) from None
        self.vocab_size = self.enc.n_vocab
        self.eot_id = self.enc.eot_token

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Not encode_ordinary_batch: even with num_threads=1 it hands every text to a thread pool,
        # which halves the rate on short documents (benchmarks/results/prepare.md).
        return [self.enc.encode_ordinary(t) for t in texts]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        if not hasattr(self.enc, "encode_to_numpy"):  # tiktoken < 0.8
            return super().encode_arrays(texts)
        # disallowed_special=() and no allowed ones: "<|endoftext|>" in a text is plain text,
        # as in encode_ordinary
        return [self.enc.encode_to_numpy(t, disallowed_special=()) for t in texts]

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))


class TrainedBPETokenizer(Tokenizer):
    """A byte-level BPE (HF `tokenizers`) trained on the input text, stored as tokenizer.json."""

    FILE = "tokenizer.json"

    def __init__(self, hf_tokenizer, name: str):
        self.tok = hf_tokenizer
        self.name = name
        self.vocab_size = hf_tokenizer.get_vocab_size()
        eot = hf_tokenizer.token_to_id(EOT)
        if eot is None:
            raise UserError(f"tokenizer {name} has no {EOT} token")
        self.eot_id = eot

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "TrainedBPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257 + 1:
            raise UserError(
                f"bpe:{vocab_size}: a byte-level BPE needs at least 258 tokens (256 bytes + {EOT})"
            )
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, f"bpe:{vocab_size}")

    @classmethod
    def load(cls, path: Path, name: str) -> "TrainedBPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        if not path.is_file():
            raise UserError(f"tokenizer file {path} is missing; re-run `baseforge prepare`")
        return cls(HFTokenizer.from_file(str(path)), name)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # add_special_tokens=False and no special-token splitting: "<|endoftext|>" inside a
        # document stays text, as tiktoken's encode_ordinary does for GPT-2.
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def record(self) -> dict:
        return {**super().record(), "file": self.FILE}

    def save(self, directory: Path) -> None:
        from baseforge.fileio import atomic_write_text

        atomic_write_text(Path(directory) / self.FILE, self.tok.to_str())


def parse_spec(spec: str) -> tuple[str, int | None]:
    """'gpt2' -> ('gpt2', None); 'bpe:4096' -> ('bpe', 4096). Raises UserError otherwise."""
    if spec == "gpt2":
        return "gpt2", None
    if spec.startswith("bpe:"):
        try:
            return "bpe", int(spec[4:])
        except ValueError:
            pass
    raise UserError(f"unknown tokenizer {spec!r}; use 'gpt2' or 'bpe:N' (for example bpe:8192)")


def load_tokenizer(record: dict, directory: Path | None = None) -> Tokenizer:
    """The tokenizer a manifest or checkpoint recorded; `directory` holds its files."""
    name = record.get("name", "")
    kind, _ = parse_spec(name)
    if kind == "gpt2":
        return GPT2Tokenizer()
    if directory is None:
        raise UserError(f"tokenizer {name} needs its {TrainedBPETokenizer.FILE}")
    return TrainedBPETokenizer.load(Path(directory) / record.get("file", TrainedBPETokenizer.FILE), name)
