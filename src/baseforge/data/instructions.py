"""The instruction-tuning set of "Build a Large Language Model (from Scratch)", ch. 7, as training data.

A JSON list of {"instruction", "input", "output"} examples, formatted as the book does (Alpaca):

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:            (only when input is not empty)
    {input}

    ### Response:
    {output}<|endoftext|>

Split: a shuffle seeded by `seed` (default 123), then 85% train, 5% validation, 10% test; test items
get stable ids test-0000, test-0001, ... With `mask_prompt` (default) only the response and its
end-of-text carry loss: prompt targets are IGNORE (-100). `InstructionData` has the trainer's data interface
(see data.loader.TokenData): a step's batch is a pure function of (seed, step), so fine-tuning
resumes exactly; batches are padded with end-of-text (inputs) and IGNORE (targets).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from baseforge.errors import UserError
from baseforge.model.loss import IGNORE

PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
RESPONSE_HEADER = "\n\n### Response:\n"


def format_prompt(example: dict) -> str:
    text = f"{PREAMBLE}\n\n### Instruction:\n{example['instruction']}"
    if example.get("input"):
        text += f"\n\n### Input:\n{example['input']}"
    return text + RESPONSE_HEADER


def load_examples(path: Path | str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"instruction data {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, list) or not data:
        raise UserError(f"{path} must hold a non-empty JSON list of examples")
    for i, ex in enumerate(data):
        if (
            not isinstance(ex, dict)
            or not all(isinstance(ex.get(k), str) for k in ("instruction", "output"))
            or not isinstance(ex.get("input", ""), str)
        ):
            raise UserError(
                f"{path}: example {i} needs string fields instruction, output (and optional input)"
            )
    return data


def split_examples(examples: list[dict], seed: int = 123) -> dict[str, list[dict]]:
    """{"train", "val", "test"}: a seeded shuffle, then 85/5/10. Test examples carry an "id"."""
    order = np.random.default_rng(seed).permutation(len(examples))
    shuffled = [examples[i] for i in order]
    n_train, n_test = int(len(shuffled) * 0.85), int(len(shuffled) * 0.10)
    n_val = len(shuffled) - n_train - n_test
    test = [{**ex, "id": f"test-{i:04d}"} for i, ex in enumerate(shuffled[n_train + n_val :])]
    return {"train": shuffled[:n_train], "val": shuffled[n_train : n_train + n_val], "test": test}


def encode_example(tokenizer, example: dict, context: int, mask_prompt: bool) -> tuple[list[int], list[int]]:
    """(inputs, targets) for one example, truncated to `context` positions."""
    prompt = tokenizer.encode(format_prompt(example))
    full = (prompt + tokenizer.encode(example["output"]) + [tokenizer.eot_id])[: context + 1]
    inputs, targets = full[:-1], list(full[1:])
    if mask_prompt:
        for i in range(min(len(prompt) - 1, len(targets))):
            targets[i] = IGNORE  # predicting a prompt token: no loss
    return inputs, targets


class InstructionData:
    """Instruction examples behind the trainer's data interface."""

    def __init__(
        self,
        path: Path | str,
        tokenizer,
        context: int,
        seed: int = 123,
        mask_prompt: bool = True,
        limit: int | None = None,
        split_seed: int = 123,
    ):
        self.source = Path(path)
        self.tokenizer = tokenizer
        self.seed = seed  # batch order; the split has its own seed so every model meets the same test items
        splits = split_examples(load_examples(path), split_seed)
        if limit:
            splits = {k: v[:limit] for k, v in splits.items()}
        self.splits = splits
        encode = lambda exs: [encode_example(tokenizer, ex, context, mask_prompt) for ex in exs]  # noqa: E731
        self.train, self.val = encode(splits["train"]), encode(splits["val"])
        if not self.train:
            raise UserError(f"{path}: no training examples after the split")
        self.train_tokens = sum(len(x) for x, _ in self.train)

    def _batch(self, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(x) for x, _ in pairs)
        x = torch.full((len(pairs), width), self.tokenizer.eot_id, dtype=torch.long)
        y = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
        for i, (inputs, targets) in enumerate(pairs):
            x[i, : len(inputs)] = torch.tensor(inputs)
            y[i, : len(targets)] = torch.tensor(targets)
        return x, y

    def example_index(self, j: int) -> int:
        """Stream position j -> train example; each epoch is a fresh permutation seeded by (seed, epoch)."""
        n = len(self.train)
        epoch, k = divmod(j, n)
        return int(np.random.default_rng([self.seed, epoch]).permutation(n)[k])

    def micro_batch(self, step: int, micro_step: int, layout):
        """Like data.loader.TokenData.micro_batch: examples addressed by position in the stream."""
        start = layout.start(step, micro_step)
        return self._batch(
            [self.train[self.example_index(j)] for j in range(start, start + layout.micro_batch)]
        )

    def val_batches(self, max_tokens: int, batch_size: int, rank: int = 0, world: int = 1):
        mine = self.val[rank::world]
        for i in range(0, len(mine), batch_size):
            yield self._batch(mine[i : i + batch_size])
