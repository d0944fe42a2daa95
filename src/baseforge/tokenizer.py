"""Tokenizers behind one small interface: tiktoken's GPT-2 BPE, or a byte-level BPE trained here.

A data dir records its tokenizer in its manifest (`{"name": ..., "vocab_size": ..., "eot_id": ...,
"sha256": ...}`, plus `tokenizer.json` beside it for trained BPEs), and checkpoints copy that record,
so a run always knows how to turn text into its token ids and back.

`sha256` identifies the tokenizer by content, not name: two `bpe:4096` trained on different text
share a name and a size but not their ids' meaning. It hashes what fixes each id's meaning: the
vocabulary and merges (for GPT-2, tiktoken's mergeable ranks) and the special tokens, in a
canonical JSON form that does not depend on the library version that wrote the file. A record
without a hash (written before hashes existed, or edited) is refused by `check_same_tokenizer`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from baseforge.errors import UserError
from baseforge.fileio import atomic_write_text
from baseforge.records import excerpt, inside

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
        """What a manifest or checkpoint stores to find this tokenizer again (and to tell it apart)."""
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "sha256": self.sha256,
        }

    @property
    def sha256(self) -> str:
        """Hex sha256 of the definition (see the module docstring); computed once."""
        if getattr(self, "_sha256", None) is None:
            text = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            self._sha256 = hashlib.sha256(text.encode()).hexdigest()
        return self._sha256

    def definition(self) -> dict:
        """What fixes the meaning of every id, as plain JSON values."""
        raise NotImplementedError

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

    def definition(self) -> dict:
        # The mergeable ranks are the bytes of each non-special id, in id order (hex: JSON has no bytes).
        special = {name: self.enc.encode_single_token(name) for name in self.enc.special_tokens_set}
        ids = sorted(set(range(self.enc.n_vocab)) - set(special.values()))
        ranks = [self.enc.decode_single_token_bytes(i).hex() for i in ids]
        return {"kind": "tiktoken-bpe", "ranks": ranks, "special": sorted(special.items())}


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
        try:
            return cls(HFTokenizer.from_file(str(path)), name)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for any bad file
            reason = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
            raise UserError(
                f"tokenizer file {path} is not readable ({reason}); it is torn or corrupt"
            ) from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # add_special_tokens=False and no special-token splitting: "<|endoftext|>" inside a
        # document stays text, as tiktoken's encode_ordinary does for GPT-2.
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def definition(self) -> dict:
        spec = json.loads(self.tok.to_str())
        vocab = spec["model"]["vocab"]
        # merges are "a b" strings in older `tokenizers` files and [a, b] pairs in newer ones
        merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in spec["model"]["merges"]]
        special = sorted((t["content"], t["id"]) for t in spec.get("added_tokens", []))
        return {
            "kind": "byte-level-bpe",
            "vocab": sorted(vocab, key=vocab.__getitem__),
            "ids": sorted(vocab.values()),
            "merges": merges,
            "special": special,
        }

    def record(self) -> dict:
        return {**super().record(), "file": self.FILE}

    def save(self, directory: Path) -> None:
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
    """The tokenizer a manifest or checkpoint recorded; `directory` holds its files.

    A trained BPE whose file no longer matches the record's hash (replaced by another prepare)
    is refused: its ids would mean other tokens than the ones the data or weights were made with.
    """
    name = record.get("name", "")
    kind, _ = parse_spec(name)
    if kind == "gpt2":
        return GPT2Tokenizer()
    if directory is None:
        raise UserError(f"tokenizer {name} needs its {TrainedBPETokenizer.FILE}")
    path = inside(
        Path(directory), record.get("file", TrainedBPETokenizer.FILE), f"{directory} tokenizer file"
    )
    tok = TrainedBPETokenizer.load(path, name)
    if record.get("sha256") and tok.sha256 != record["sha256"]:
        raise UserError(
            f"{path} is not the tokenizer recorded beside it ({name}, sha256 {record['sha256'][:12]}, "
            f"file has {tok.sha256[:12]}); it was replaced: re-run `baseforge prepare` for {directory}"
        )
    return tok


def check_built(tok: Tokenizer, record: dict, where: str, model_vocab: int) -> None:
    """Refuse (one line) a tokenizer that is not the one `record` (at `where`) describes, by content hash and
    size, or that has ids a model of `model_vocab` rows lacks. A record's name picks what is built, so an
    edited name (a trained BPE's record renamed gpt2) would otherwise build another tokenizer."""
    if tok.sha256 != record.get("sha256") or tok.vocab_size != record.get("vocab_size"):
        raise UserError(
            f"{where} records tokenizer {_label(record)}, but it builds {_label(tok.record())}: the record "
            "was edited; use another checkpoint (--which, or a step_N dir)"
        )
    if tok.vocab_size > model_vocab:
        raise UserError(
            f"{where}: tokenizer {_label(record)} has more ids than the model's {model_vocab} embeddings; "
            "the config was edited; use another checkpoint (--which, or a step_N dir)"
        )


def _label(r: dict) -> str:
    """A tokenizer record in a line, its name as written when it is a short printable one."""
    name, size = r.get("name"), r.get("vocab_size")
    plain = isinstance(name, str) and name.isprintable() and len(name) <= 40
    digest = f", sha256 {str(r['sha256'])[:12]}" if r.get("sha256") else ""
    count = size if isinstance(size, int) else excerpt(size)
    return f"{name if plain else excerpt(name)} ({count} tokens{digest})"


def check_same_tokenizer(a: dict, b: dict, what_a: str, what_b: str) -> None:
    """Refuse (UserError, one line) two tokenizer records whose ids mean different tokens.

    Compared by content hash; a record without one (edited, or written before hashes existed) is refused
    too, since its identity cannot be checked.
    """

    for record, what in ((a, what_a), (b, what_b)):
        if not isinstance(record.get("sha256"), str) or not record["sha256"]:
            raise UserError(
                f"{what} records tokenizer {_label(record)} without its content hash, so its identity "
                "cannot be checked; re-run `baseforge prepare` for data, or use a checkpoint that has it"
            )
    if a["sha256"] != b["sha256"]:
        raise UserError(
            f"{what_a} uses tokenizer {_label(a)} but {what_b} uses {_label(b)}: the same ids mean different "
            "tokens; use data prepared with the same tokenizer"
        )
