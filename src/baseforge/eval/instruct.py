"""The instruction-following test's first two steps: fine-tune a base model, then answer the test split.

Fine-tuning reuses the pretraining loop (train.loop.Trainer) with `data.instructions.InstructionData`
and the base model's weights, so precision, checkpoints, exact resume, early stopping and the
`best` pointer behave as in pretraining. The recipe follows the book: AdamW, lr 5e-5, weight decay
0.1, micro-batch 8, two epochs, here with an evaluation (and checkpoint) every half epoch and early
stopping after two evaluations without improvement; `answer` uses the best checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from baseforge.config import RunConfig, TrainConfig, apply_overrides, load_run_config
from baseforge.data.instructions import InstructionData, format_prompt, load_examples, split_examples
from baseforge.errors import UserError
from baseforge.fileio import atomic_write_json, atomic_write_text

RECIPE = dict(
    lr=5e-5,
    weight_decay=0.1,
    schedule="constant",
    warmup_steps=0,
    micro_batch=8,
    global_batch=8,
    grad_clip=1.0,
    log_every=10,
    early_stop_evals=2,
    eval_tokens=0,
    sample_tokens=0,
    keep_last=2,
)
EPOCHS = 2


def finetune(
    base: str,
    data_file: Path | str,
    out: Path | str,
    overrides=(),
    *,
    mask_prompt: bool = True,
    resume: bool = False,
    limit: int | None = None,
    log=print,
) -> dict:
    from baseforge.train.checkpoint import load_model, model_tensors
    from baseforge.train.distributed import process_group
    from baseforge.train.loop import Trainer

    out = Path(out)
    model, tokenizer, _ = load_model(base, "cpu", which="latest")
    if resume:
        config = load_run_config(out)
        apply_overrides(config, overrides, model_keys=False)
    else:
        config = RunConfig("finetune", model.config, TrainConfig(**RECIPE))  # keeps the base's dropout
        apply_overrides(config, overrides)
    cfg = config.train
    data = InstructionData(
        data_file,
        tokenizer,
        config.model.context,
        seed=cfg.seed,
        mask_prompt=mask_prompt,
        limit=limit,
    )
    if not resume:
        steps_per_epoch = math.ceil(len(data.train) / (cfg.global_batch or cfg.micro_batch * cfg.grad_accum))
        defaults = {
            "max_steps": EPOCHS * steps_per_epoch,
            "eval_every": max(1, steps_per_epoch // 2),
            "checkpoint_every": max(1, steps_per_epoch // 2),
        }
        explicit = {item.split("=", 1)[0].strip() for item in overrides}
        apply_overrides(config, [f"{k}={v}" for k, v in defaults.items() if k not in explicit])
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            out / "finetune.json",
            {
                "base": str(base),
                "data": str(data_file),
                "mask_prompt": mask_prompt,
                "limit": limit,
                "examples": {k: len(v) for k, v in data.splits.items()},
            },
        )
    init = None if resume else model_tensors(model)
    with process_group(config.train.dist_timeout_s, config.train.device) as dist:
        return Trainer(config, data, out, resume=resume, log=log, init_weights=init, dist=dist).run()


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
    which: str = "best",
    device="cpu",
    seed: int = 123,
    show_progress: bool = True,
) -> list[dict]:
    """Greedy answers to the test split, written as the judge's answers JSONL (atomically).

    Progress (a bar, or plain lines when stderr is not a terminal) goes to stderr."""
    from baseforge.generate import generate
    from baseforge.progress import progress_bar
    from baseforge.train.checkpoint import find_checkpoint, load_model

    try:
        find_checkpoint(run, which)
    except UserError:
        which = "latest"  # a run without evaluations has no best checkpoint
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
