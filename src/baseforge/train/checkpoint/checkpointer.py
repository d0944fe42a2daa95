"""Checkpoints of a live run: where to resume from, the run dir's first writes, save and restore.

The one place that picks a checkpoint's backend, for saving and loading alike: a sharded (FSDP) run
writes and reads DCP shards (sharded.py); any other run the plain files of format.py. A checkpoint
with shards loads into a sharded model or a plain one, at any world size; a sharded model needs one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from baseforge.config import RunConfig
from baseforge.data.batch_plan import BatchLayout, BatchPlan
from baseforge.errors import UserError
from baseforge.model import GPT
from baseforge.records import count
from baseforge.rundir import RunDir
from baseforge.tokenizer import check_same_tokenizer
from baseforge.train.build import Run, total_steps
from baseforge.train.checkpoint import format as ckpt
from baseforge.train.checkpoint import sharded
from baseforge.train.checkpoint.data_record import record_data
from baseforge.train.distributed import DistInfo, barrier
from baseforge.train.metrics import record_resume, truncate_metrics
from baseforge.train.rng import gather_rng_states, restore_rng
from baseforge.train.schedule import Schedule, Tail, continued
from baseforge.train.state import RunState


def counted_batches(config: RunConfig, tokens: int, step: int) -> BatchPlan:
    """The batches a run's length is counted in: its config's, when global_batch fixes them whatever the
    number of processes; else the checkpoint's own tokens per step (its world size is not recorded)."""
    context = config.model.context
    if config.train.global_batch:
        return BatchPlan.from_config(config.train, context)
    return BatchPlan.constant(BatchLayout(max(1, tokens // step // context)), context)


class Checkpointer:
    def __init__(self, run_dir: RunDir, dist: DistInfo, say=print):
        self.run_dir, self.dist, self.say = run_dir, dist, say

    def resume_point(self, resume: bool, data, config: RunConfig, extend: bool = False):
        """(checkpoint to resume from, its schedule tail) or (None, no tail) for a fresh run, checked
        against the data's tokenizer and the config's schedule; a fresh run refuses a run dir that
        holds one already."""
        if not resume:
            if self.run_dir.has_checkpoint():
                raise UserError(
                    f"{self.run_dir.path} already holds a run; continue it with --resume, "
                    "or choose another --out"
                )
            return None, Tail()
        path = ckpt.find_checkpoint(self.run_dir.path)
        saved, state = ckpt.read_checkpoint_meta(path)
        check_same_tokenizer(
            state["tokenizer"], data.tokenizer.record(), f"the checkpoint {path}", str(data.source)
        )
        return path, self.schedule_tail(path, saved, state, config, extend)

    def schedule_tail(
        self, path: Path, saved: RunConfig, state: dict, config: RunConfig, extend: bool
    ) -> Tail:
        """The schedule tail a run resumed from checkpoint `path` (its config `saved` and state.json
        `state`, as read_checkpoint_meta checked them) continues with (schedule.continued): the
        checkpoint's own unless `config` changes the rate at its step, which needs `extend`."""
        step, where = state["step"], path / ckpt.STATE_FILE
        tail = Tail.from_state(state, where)
        tokens = count(state, "tokens", where, optional=True)
        if not step or not tokens:
            return tail
        n_params = GPT.count_params(config.with_vocab(state["tokenizer"]["vocab_size"]).model)
        old, new = (
            Schedule.from_config(
                c.train, total_steps(c.train, n_params, counted_batches(c, tokens, step)), tail
            )
            for c in (saved, config)
        )
        return continued(old, new, step, extend, config.train.extend_lr)

    def restore(self, path: Path, run: Run) -> RunState:
        """Weights, optimizer, scaler and RNG states from checkpoint `path` into the live run; its RunState.

        The run's config wins over the checkpoint for base_lr and weight_decay (Optimizers.load_state_dict,
        sharded.load_sharded)."""
        _, state = ckpt.read_checkpoint_meta(path)
        trainer = ckpt.read_trainer_state(path)
        plain, device = run.views.plain, run.runtime.device
        if (path / sharded.DCP).is_dir():
            sharded.load_sharded(path / sharded.DCP, plain, run.optimizers)
        elif run.views.kind == "fsdp":
            raise UserError(
                f"{path} was written by a DDP run (no dcp/ folder); resume it with parallel=ddp, "
                "or start the FSDP run from its weights with `baseforge finetune`"
            )
        else:
            expected = ckpt.expected_shapes(plain)
            weights = ckpt.read_model_tensors(path, expected, device, by="this run's config")
            ckpt.load_checked(plain, weights, path)
            run.optimizers.load_state_dict(trainer["optimizers"], path)
            self._restore_average(path, run, expected)
        if run.train_step.scaler is not None and trainer["scaler"] is not None:
            run.train_step.scaler.load_state_dict(trainer["scaler"])
        restore_rng(trainer["rng"], self.dist, device, run.config.train.seed, state["step"])
        restored = RunState.from_json(state, path / ckpt.STATE_FILE)
        tail = run.schedule.tail
        restored.tail_from, restored.tail_lr = tail.start, tail.from_lr
        restored.tail_peak, restored.tail_warmup = tail.to_lr, tail.warmup
        return restored

    @staticmethod
    def _restore_average(path: Path, run: Run, expected: dict) -> None:
        """The averaged weights, where the run keeps an average and the checkpoint has one (a run that
        turns ema_decay on at --resume starts its average afresh; one that turns it off ignores it)."""
        if run.average is None or not (path / ckpt.EMA_FILE).exists():
            return
        device = run.runtime.device
        tensors = ckpt.read_model_tensors(path, expected, device, by="this run's config", file=ckpt.EMA_FILE)
        run.average.load(run.views.plain, tensors)

    def prepare_run_dir(self, config: RunConfig, data, *, resume: bool, step: int) -> None:
        """The first writes: the run dir and its config; on resume, forget what came after the checkpoint."""
        if not self.dist.is_main:
            return
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        ckpt.write_run_config(self.run_dir, config)
        source = getattr(data, "sources", None) or getattr(data, "source", data)  # fine-tuning: its file
        if isinstance(source, (Path, list)):  # a fresh start writes the record; a resume appends a change
            record_data(self.run_dir, source, step)
        if resume:  # the checkpoint is loaded and checked by now: only then is anything set aside
            rows = truncate_metrics(self.run_dir.path, step, set_aside=True)
            record_resume(self.run_dir.path, step)  # the report marks it
            moved = ckpt.discard_after(self.run_dir, step)
            if rows or moved:
                names = ", ".join(p.name for p in moved) or "no checkpoints"
                self.say(
                    f"resuming from step {step}: set aside what came after it in {self.run_dir.discarded} "
                    f"({names}; {rows} metrics rows)"
                )
        else:  # a run started again after dying before its first checkpoint: its rows are redone
            truncate_metrics(self.run_dir.path, -1)

    def save(self, run: Run, state: RunState) -> None:
        """A checkpoint of the current step. Every rank takes part: each one's RNG state is gathered;
        a sharded run's ranks each write their shards."""
        rng = gather_rng_states(self.dist, run.runtime.device)
        args: dict[str, Any] = dict(
            step=state.step,
            config=run.config,
            tokenizer=run.data.tokenizer,
            state=state.to_json(),
            keep_last=run.config.train.keep_last,
            is_best=state.best_step == state.step,
        )
        scaler = run.train_step.scaler
        if run.views.kind == "fsdp":
            sharded.save_sharded(
                self.run_dir, run.views.plain, run.optimizers, scaler, rng, self.dist, **args
            )
        elif self.dist.is_main:
            trainer = ckpt.trainer_state(run.optimizers, scaler, rng)
            average = run.average.tensors(run.views.plain) if run.average and run.average.started else None
            ckpt.save_checkpoint(
                self.run_dir, model=run.views.plain, trainer=trainer, average=average, **args
            )
        barrier(self.dist)
