"""The training loop: one code path for 1 CPU core, one GPU, or N processes under torchrun.

`Trainer.run`, top to bottom: for each step, train (`TrainStep`), maybe log and evaluate, maybe
checkpoint (`Cadence` says when); progress is one `RunState`. A step draws its global batch by step
number, so a checkpoint is all a resumed run needs. Hand-offs: `build_run` makes the run,
`Checkpointer` saves and restores it, `Validator` evaluates, `Reporter` writes what it says.
A new `Trainer` only stores its arguments; `setup()` builds in memory (reading the checkpoint to
resume); `run()` makes the first writes, then trains. The process group belongs to the caller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from baseforge.config import RunConfig
from baseforge.data.loader import TokenData
from baseforge.errors import UserError
from baseforge.rundir import RunDir
from baseforge.train.build import Run, TrainData, build_run
from baseforge.train.cadence import Cadence, Due
from baseforge.train.checkpoint.checkpointer import Checkpointer
from baseforge.train.device import Runtime
from baseforge.train.distributed import DistInfo, any_rank
from baseforge.train.metrics import MetricsRow, read_metrics
from baseforge.train.reporter import Reporter
from baseforge.train.state import LogInterval, RunState
from baseforge.train.step import StepResult
from baseforge.train.stop import StopRequested
from baseforge.train.summary import announce_lines, build_summary, end_sample, metrics_row, progress_counts
from baseforge.train.trackers import tracker_names
from baseforge.train.validate import Validator


@dataclass(frozen=True)
class RunResult:
    step: int
    stopped: bool = False  # by a signal, after a checkpoint
    signal: int | None = None
    summary: dict | None = None  # summary.json's content, when the run finished


class Trainer:
    """Trains `config`'s model on `data` into `run_dir`.

    `data` is a data dir (pretraining) or any object with TokenData's interface (fine-tuning);
    `init_weights` starts from given tensors instead of a random initialisation; `evaluators` are
    extra evaluations on the main process every `evaluators_every` steps (validate.Evaluator).
    """

    def __init__(
        self,
        config: RunConfig,
        data: TrainData | Path | str,
        run_dir: Path | str,
        *,
        resume: bool = False,
        extend: bool = False,
        log=print,
        init_weights: dict | None = None,
        evaluators: dict | None = None,
        dist: DistInfo | None = None,
    ):
        self.config, self.data, self.resume, self.init_weights = config, data, resume, init_weights
        self.extend = extend  # on resume: a longer run keeps its schedule so far (schedule.continued)
        self.run_dir = RunDir(run_dir)
        self.evaluators = evaluators or {}
        self.dist = dist or DistInfo()
        self.reporter = Reporter(self.run_dir, is_main=self.dist.is_main, log=log)
        self.checkpointer = Checkpointer(self.run_dir, self.dist, self.reporter.say)
        self._built: Run | None = None  # set by setup(): what the run is
        self.state = RunState()  # where it is
        self.last_row: MetricsRow | None = None

    def setup(self) -> None:
        """Build the run in memory: device, data, model, batch layout, optimizers; restore a checkpoint."""
        if self._built is not None:
            return
        cfg, point = self.config.train, self.checkpointer.resume_point
        tracker_names(cfg.trackers)  # a typo fails before anything is built or written
        runtime = Runtime.create(cfg, self.dist)
        if isinstance(self.data, (str, Path)):
            self.data = TokenData(self.data, self.config.model.context, cfg.seed, cfg.packing)
        resume_from, tail = point(self.resume, self.data, self.config, self.extend)
        say, init = self.reporter.say, self.init_weights
        self._built = build_run(self.config, self.data, runtime, init_weights=init, tail=tail, say=say)
        self.config = self._built.config
        if resume_from is not None:
            self.state = self.checkpointer.restore(resume_from, self._built)

    @property
    def built(self) -> Run:
        """The run `setup()` built: the one way to reach it."""
        assert self._built is not None, "Trainer.setup() first"
        return self._built

    @property
    def tokens_per_step(self) -> int:
        return self.built.tokens_per_step

    # --- the run --------------------------------------------------------------------------------
    def run(self) -> RunResult:
        self.setup()
        built, state, cfg = self.built, self.state, self.config.train
        self.checkpointer.prepare_run_dir(self.config, built.data, resume=self.resume, step=state.step)
        for line in announce_lines(built, state.step):
            self.reporter.say(line)
        cadence, validator = Cadence.from_config(cfg), Validator(built, self.evaluators)
        built.views.plain.train()
        recording = self.reporter.recording(
            built.config.to_dict(), cfg.trackers, resume=self.resume, start_step=state.step
        )
        with recording:
            if state.step == 0:
                state.initial_val = validator.loss()
                self.reporter.initial_validation(state.initial_val, built.data, validator.source_losses)
            progress = self.reporter.progress(*progress_counts(built, state))
            with progress, StopRequested() as stop:
                end = built.total
                while state.step < end:
                    self._train_one_step()
                    last = state.step == end
                    due = cadence.due(state.step, last)
                    if due.log:
                        self._log(due, validator)
                    if self._should_stop_early(last):
                        last, end = True, state.step
                    flags = [stop.signal is not None, cadence.checkpoint_time_due()]
                    stopping, on_time = any_rank(flags, self.dist, built.runtime.device)
                    if due.checkpoint or last or stopping or on_time:
                        saved = self._save_if_healthy()
                        cadence.checkpointed()
                    if stopping:
                        self.reporter.stopped(state.step, saved)
                        return RunResult(state.step, stopped=True, signal=stop.signal)
        return self.finish()

    def train_step(self) -> StepResult:
        """One optimizer step at the current step number (the loop's; benchmarks call it directly)."""
        built = self.built
        return built.train_step(self.state.step, built.data)

    def _train_one_step(self) -> None:
        cfg, state, built = self.config.train, self.state, self.built
        tokens = built.batches.tokens_of(state.step)
        flops = tokens * built.views.plain.flops_per_token(built.train_step.window(state.step))
        t0 = time.perf_counter()
        result = self.train_step()
        state.record_step(result.loss, result.grad_norm, result.applied, cfg.grad_clip)
        if state.bad_in_row >= cfg.max_bad_steps:
            raise UserError(
                f"loss or gradients were not finite for {cfg.max_bad_steps} steps in a row "
                f"(step {state.step}); "
                "stopped. The last good checkpoint is kept: lower lr, check the data, or use precision=fp32"
            )
        state.record_time(tokens, time.perf_counter() - t0, flops)

    def _log(self, due: Due, validator: Validator) -> None:
        """A metrics row of the steps since the last one, with the evaluations that are due."""
        row = metrics_row(self.built, self.state)
        if due.evaluate:
            val = validator.loss()
            if val is not None:
                row.val_loss = val
                self.state.record_val(val)
            row.evals.update({**validator.source_losses, **validator.averaged()})  # averaged: ema_decay's
        if due.evaluators:
            row.evals.update(validator.extras())
        self.reporter.row(row, self.state.interval.span)
        self.state.interval = LogInterval()
        self.last_row = row

    def _should_stop_early(self, last: bool) -> bool:
        patience, state = self.config.train.early_stop_evals, self.state
        if not patience or state.evals_since_best < patience or last:
            return False
        self.reporter.say(
            f"early stop at step {state.step}: validation loss has not improved for {patience} "
            f"evaluations; best {state.best_val:.4f}"
        )
        return True

    def _save_if_healthy(self) -> bool:
        """Checkpoint (and chart) unless the model is producing non-finite values: the last good one stays."""
        if self.state.bad_in_row:
            return False
        self.checkpointer.save(self.built, self.state)  # every rank takes part
        self.reporter.charts()
        return True

    def finish(self) -> RunResult:
        row, state = self.last_row, self.state
        if row is None:  # resumed at the end (killed after the last checkpoint): its last row is logged
            row = next((r for r in reversed(read_metrics(self.run_dir.path)) if r.step == state.step), None)
        sample = end_sample(self.built)  # a collective
        summary = build_summary(self.built, state, row)
        self.reporter.finish(summary, sample)
        return RunResult(state.step, summary=summary)
