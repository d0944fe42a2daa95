"""Instruction fine-tuning, the instruction-following test's first step (`eval.instruct` answers after it).

Fine-tuning reuses the pretraining loop (train.loop.Trainer) with `data.instructions.InstructionData`
and the base model's weights, so precision, checkpoints, exact resume, early stopping and the
`best` pointer behave as in pretraining. The recipe follows the book: AdamW, lr 5e-5, weight decay
0.1, micro-batch 8, two epochs, here with an evaluation (and checkpoint) every half epoch and early
stopping after two evaluations without improvement; `answer` uses the best checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from baseforge.config import RunConfig, TrainConfig, load_run_config
from baseforge.data.batch_plan import BatchLayout
from baseforge.data.instructions import InstructionData
from baseforge.fileio import atomic_write_json
from baseforge.overrides import apply_overrides
from baseforge.train.checkpoint.format import load_model, model_tensors
from baseforge.train.distributed import process_group
from baseforge.train.loop import RunResult, Trainer

RECIPE: dict[str, Any] = dict(
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
) -> RunResult:
    """Fine-tune `base` on the instruction examples in `data_file` into run dir `out` (the book's recipe,
    changed by `overrides`); the steps, evaluations and checkpoints follow from the epoch's size."""
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
        _fit_to_epochs(config, len(data.train), overrides)
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


def _fit_to_epochs(config: RunConfig, examples: int, overrides) -> None:
    """EPOCHS epochs of `examples`, evaluated and checkpointed every half epoch, where `overrides` do
    not say otherwise."""
    steps_per_epoch = math.ceil(examples / BatchLayout.from_config(config.train).global_batch)
    defaults = {
        "max_steps": EPOCHS * steps_per_epoch,
        "eval_every": max(1, steps_per_epoch // 2),
        "checkpoint_every": max(1, steps_per_epoch // 2),
    }
    explicit = {item.split("=", 1)[0].strip() for item in overrides}
    apply_overrides(config, [f"{k}={v}" for k, v in defaults.items() if k not in explicit])
