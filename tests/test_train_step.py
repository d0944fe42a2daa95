"""One optimizer step as a GPU sees it, on CPU: baseforge's own code reads a tensor's value on the host
(a host-device sync) never inside a micro-step and exactly once per step; and a compiled run builds every
graph in setup's warm-up, none after."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

import baseforge
from baseforge.model import loss
from baseforge.overrides import resolve_config
from baseforge.train.loop import Trainer
from baseforge.train.validate import Validator
from helpers import TINY

PACKAGE = Path(baseforge.__file__).resolve().parent  # the baseforge these tests import, wherever it lies
HOST_READS = ("__bool__", "item", "tolist", "__float__", "__int__")


@functools.lru_cache(maxsize=None)
def in_package(filename: str) -> bool:
    """Whether code compiled from `filename` is baseforge's own (not torch's, not a test's)."""
    return Path(filename).resolve().is_relative_to(PACKAGE)


def test_train_step_reads_the_device_once_per_step(shakespeare_dir, tmp_path, monkeypatch):
    """Host reads of tensor values from baseforge's code, as a GPU would see them: none inside a
    micro-step (accumulation 4 here), one per optimizer step (loss and grad norm together)."""
    config = resolve_config("cpu-tiny", None, [*TINY, "micro_batch=2", "global_batch=8", "dropout=0.1"])
    trainer = Trainer(config, shakespeare_dir, tmp_path / "run", log=lambda *_: None)
    trainer.setup()
    step = trainer.built.train_step
    reads, inside, current = [], [False], [None]  # (method, in a micro-step, step, caller's file)
    monkeypatch.setattr(loss, "host_reads_are_free", lambda device: False, raising=False)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if in_package(caller):
                reads.append((_name, inside[0], current[0], caller))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    forward_backward = step.forward_backward

    def micro_step(*args, **kwargs):
        inside[0] = True
        try:
            return forward_backward(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(step, "forward_backward", micro_step)
    results = []
    for s in range(3):
        current[0] = s
        results.append(step(s, trainer.data))
    assert all(r.applied and r.loss > 0 for r in results)
    assert not [r for r in reads if r[1]], reads  # nothing inside a micro-step
    assert [r[2] for r in reads] == [0, 1, 2], reads  # exactly one per optimizer step, after its micro-steps


@pytest.mark.slow  # ~45 s of compiling on a loaded 2-core CPU
@pytest.mark.parametrize(
    "extra",
    [[], ["batch_schedule=2@256"], ["pos_emb=rope", "attn_window_warmup=1.0", "max_steps=3"]],
    ids=["plain", "batch-schedule", "window-warmup"],
)
def test_compiled_run_does_not_recompile_after_warm_up(shakespeare_dir, tmp_path, monkeypatch, extra):
    """Training steps at micro-batch 4 (and 2, a batch schedule's first stage: steps 0-1) and
    evaluations whose last batch is partial (31 windows): every graph exists after setup's warm-up.
    (aot_eager: dynamo's guards and recompiles are the backend's concern no more than inductor's, and
    it compiles in seconds on CPU.)"""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    keys = [*TINY, "compile=true", "micro_batch=4", "global_batch=8", "eval_tokens=1984", *extra]
    logs = []
    trainer = Trainer(
        resolve_config("cpu-tiny", None, keys), shakespeare_dir, tmp_path / "run", log=logs.append
    )
    trainer.setup()
    assert not any("training eager" in line for line in logs), logs
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    trainer.built.views.plain.train()
    for step in range(3):
        assert trainer.built.train_step(step, trainer.data).applied
        assert Validator(trainer.built).loss() is not None
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled after the warm-up"
