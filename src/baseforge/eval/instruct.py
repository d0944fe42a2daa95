"""The instruction-following test's answering step: greedy answers of a fine-tuned model to the test split.

Fine-tuning itself is training and lives in `train.finetune`; this module only reads a run.
"""

from __future__ import annotations

import json
from pathlib import Path

from baseforge.data.instructions import format_prompt, load_examples, split_examples
from baseforge.errors import UserError
from baseforge.fileio import atomic_write_text
from baseforge.generate import generate
from baseforge.progress import progress_bar
from baseforge.train.checkpoint.format import find_checkpoint, load_model


def clean_answer(text: str) -> str:
    """The response alone: cut at the next '###' header a base model may start, and trim."""
    return text.split("\n###")[0].split("###")[0].strip()


def answer(
    run: Path | str,
    data_file: Path | str,
    out_file: Path | str,
    *,
    name: str | None = None,
    max_new_tokens: int = 256,
    limit: int | None = None,
    which: str = "latest",
    device="cpu",
    seed: int = 123,
    show_progress: bool = True,
) -> list[dict]:
    """Greedy answers to the test split, written as the judge's answers JSONL (atomically).

    Progress (a bar, or plain lines when stderr is not a terminal) goes to stderr."""
    try:
        find_checkpoint(run, which)
    except UserError:
        which = "latest"  # asked for best: a run without evaluations has none
    model, tokenizer, _ = load_model(run, device, which)
    test = split_examples(load_examples(data_file), seed)["test"][:limit]
    name = name or Path(run).resolve().name
    rows = []
    bar = progress_bar(len(test), desc="answer", unit="item", enabled=show_progress)
    for ex in test:
        ids = generate(
            model,
            tokenizer.encode(format_prompt(ex)),
            max_new_tokens,
            temperature=0.0,
            eot_id=tokenizer.eot_id,
            stop_at_eot=True,
        )
        rows.append(
            {
                "id": ex["id"],
                "model": name,
                "instruction": ex["instruction"],
                "input": ex.get("input", ""),
                "reference": ex["output"],
                "answer": clean_answer(tokenizer.decode(ids)),
            }
        )
        bar.update(1)
    bar.close()
    atomic_write_text(out_file, "".join(json.dumps(r) + "\n" for r in rows))
    return rows
