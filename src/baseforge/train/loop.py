"""The training loop: one code path for 1 CPU core, one GPU, or N processes under torchrun.

The run, read top to bottom in `Trainer.run`: for each step, train (`TrainStep`), maybe log and
evaluate, maybe checkpoint (`Cadence` says when). Its progress is one `RunState`. Each optimizer
step draws its global batch from `data.loader.TrainStream` by step number, so everything a resumed
run needs is the checkpoint: weights, optimizer, scaler, RNG states and the `RunState`.

Building a `Trainer` only stores its arguments. `setup()` builds the run in memory (device, model,
optimizers; it reads a checkpoint to resume from); `prepare_run_dir()` is the first write;
`run()` does both, then trains. The process group belongs to the caller (`distributed.process_group`).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from baseforge.config import RunConfig
from baseforge.data.loader import BatchLayout, TokenData
from baseforge.errors import UserError
from baseforge.eval.loss import loss_sum
from baseforge.model import GPT
from baseforge.progress import Progress
from baseforge.tokenizer import check_same_tokenizer
from baseforge.train import checkpoint as ckpt
from baseforge.train.cadence import Cadence, Due
from baseforge.train.device import Runtime, compile_for_training, warm_up_shapes
from baseforge.train.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    any_rank,
    barrier,
    seed_rank,
)
from baseforge.train.metrics import (
    MetricsLog,
    memory_gb,
    read_metrics,
    record_resume,
    truncate_metrics,
)
from baseforge.train.optim import build_optimizers
from baseforge.train.parallel import is_fsdp, wrap_model
from baseforge.train.schedule import Schedule
from baseforge.train.sharded import save_sharded
from baseforge.train.state import RunState
from baseforge.train.step import StepResult, TrainStep
from baseforge.train.stop import StopRequested
from baseforge.train.summary import announce_lines, build_summary, progress_fields, summary_line


@dataclass(frozen=True)
class RunResult:
    step: int
    stopped: bool = False  # by a signal, after a checkpoint
    signal: int | None = None
    summary: dict | None = None  # summary.json's content, when the run finished


def total_steps(cfg, n_params: int, tokens_per_step: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    budget = cfg.max_tokens or cfg.tokens_per_param * n_params
    return max(1, math.ceil(budget / tokens_per_step))


class Trainer:
    """Trains `config`'s model on `data` into `run_dir`.

    `data` is a data dir (pretraining) or any object with TokenData's interface (fine-tuning);
    `init_weights` starts from given tensors instead of a random initialisation; `evaluators` are
    extra evaluations on the main process at HellaSwag steps: {name: fn(model, tokenizer) -> dict}.
    """

    def __init__(
        self,
        config: RunConfig,
        data,
        run_dir: Path | str,
        *,
        resume: bool = False,
        log=print,
        init_weights: dict | None = None,
        evaluators: dict | None = None,
        dist: DistInfo | None = None,
    ):
        self.config = config
        self.data = data
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.log = log
        self.init_weights = init_weights
        self.evaluators = evaluators or {}
        self.dist = dist or DistInfo()
        self.step_fn: TrainStep | None = None  # set by setup()
        self._note = None  # while the progress bar runs: writes a message above it

    # --- building the run -----------------------------------------------------------------------
    def setup(self) -> None:
        """Build the run in memory: device, data, model, batch layout, optimizers; restore a checkpoint."""
        if self.step_fn is not None:
            return
        cfg = self.config.train
        self.runtime = Runtime.create(cfg, self.dist)
        if isinstance(self.data, (str, Path)):
            self.data = TokenData(self.data, self.config.model.context, cfg.seed)
        resume_from = self._checkpoint_to_resume()
        self.config = self.config.with_vocab(self.data.tokenizer.vocab_size)
        self._check_vocab()
        torch.manual_seed(cfg.seed)
        model = GPT(self.config.model)
        if self.init_weights is not None:
            ckpt.load_model_tensors(model, self.init_weights)
        model.to(self.runtime.device)
        layout = self._batch_layout(model)
        total = total_steps(cfg, model.num_params(), layout.global_batch * self.config.model.context)
        wrapped = self._wrap(model, layout)
        # After wrapping: FSDP replaces the parameters with sharded ones, which the optimizers must hold.
        optimizers = build_optimizers(model, cfg, self.runtime.device)
        self.step_fn = TrainStep(
            model, wrapped, optimizers, self.runtime, layout, Schedule.from_config(cfg, total), cfg.grad_clip
        )
        self.total = total
        self.state = RunState()
        if resume_from is not None:
            saved = ckpt.restore_training(
                resume_from, model, optimizers, self.step_fn.scaler, self.runtime.device, self.dist, cfg.seed
            )
            self.state = RunState.from_json(saved)
        self.last_row: dict = {}

    def _checkpoint_to_resume(self) -> Path | None:
        if not self.resume:
            if (self.run_dir / ckpt.CHECKPOINTS / "latest").exists():
                raise UserError(
                    f"{self.run_dir} already holds a run; continue it with --resume, or choose another --out"
                )
            return None
        path = ckpt.find_checkpoint(self.run_dir)
        _, state = ckpt.read_checkpoint_meta(path)
        note = check_same_tokenizer(
            state["tokenizer"], self.data.tokenizer.record(), f"the checkpoint {path}", str(self.data.source)
        )
        if note:
            self._say(f"note: {note}")
        return path

    def _check_vocab(self) -> None:
        tok = self.data.tokenizer
        if self.config.model.vocab_size < tok.vocab_size:
            raise UserError(
                f"model vocab_size {self.config.model.vocab_size} is smaller than the data's tokenizer "
                f"({tok.name}, {tok.vocab_size} tokens); set vocab_size={tok.vocab_size} or prepare the data "
                "with another tokenizer"
            )

    def _batch_layout(self, model: GPT) -> BatchLayout:
        cfg, world = self.config.train, self.dist.world
        micro = cfg.micro_batch
        if micro == "auto":
            from baseforge.train.autobatch import search_micro_batch

            # Search up to the whole per-process batch (no accumulation), or 64 without a global batch.
            per_rank = cfg.global_batch // world if cfg.global_batch else 64
            micro = search_micro_batch(model, self.data, cfg, self.runtime, per_rank)
        layout = BatchLayout.from_config(cfg, world=world, rank=self.dist.rank, micro_batch=micro)
        if cfg.micro_batch == "auto":
            self._say(f"micro_batch auto: {micro} fits; gradient accumulation {layout.grad_accum}")
        return layout

    def _wrap(self, model: GPT, layout: BatchLayout) -> torch.nn.Module:
        """What runs forward in training (parallel.wrap_model); first, each rank's own dropout stream."""
        seed_rank(self.config.train.seed, self.dist)  # after the model init, which is the same on every rank
        # Compile the shapes the run will use (its micro-batch, evaluation's) while eager is a fallback.
        warm_up = functools.partial(
            warm_up_shapes,
            data=self.data,
            layout=layout,
            runtime=self.runtime,
            eval_tokens=self.config.train.eval_tokens,
        )
        compile_fn = lambda m: compile_for_training(m, warm_up, self._say)  # noqa: E731
        return wrap_model(model, self.config.train, self.runtime, compile_fn)

    def prepare_run_dir(self) -> None:
        """The first writes: the run dir and its config; on resume, forget what came after the checkpoint."""
        if not self.runtime.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_run_config(self.run_dir, self.config)
        if isinstance(self.data.source, Path):
            ckpt.write_data_record(self.run_dir, self.data.source)
        if self.resume:
            truncate_metrics(self.run_dir, self.state.step)
            record_resume(self.run_dir, self.state.step)  # the report marks it
            ckpt.discard_after(self.run_dir, self.state.step)
        else:  # a run started again after dying before its first checkpoint: its rows are redone
            truncate_metrics(self.run_dir, -1)

    # --- the run --------------------------------------------------------------------------------
    def run(self) -> RunResult:
        self.setup()
        self.prepare_run_dir()
        self._announce()
        main = self.runtime.is_main
        metrics = MetricsLog(self.run_dir) if main else None
        trackers = self._open_trackers() if main else None
        cadence = Cadence.from_config(self.config.train)
        self.step_fn.model.train()
        try:
            if self.state.step == 0:
                self._initial_validation(metrics, trackers)
            with self._progress() as bar, StopRequested() as stop:
                self._note = bar.note  # messages mid-run go above the bar
                while self.state.step < self.total:
                    self._train_one_step()
                    last = self.state.step == self.total
                    due = cadence.due(self.state.step, last)
                    if due.log:
                        self._log_row(due, metrics, bar, trackers)
                    if self._should_stop_early(last):
                        last, self.total = True, self.state.step
                    stopping, on_time = any_rank(
                        [stop.signal is not None, cadence.checkpoint_time_due()],
                        self.dist,
                        self.runtime.device,
                    )
                    if due.checkpoint or last or stopping or on_time:
                        saved = self._save_if_healthy()
                        cadence.checkpointed()
                    if stopping:
                        return self._stopped(stop.signal, saved)
        finally:
            if trackers is not None:
                trackers.close()
        return self.finish()

    def _save_if_healthy(self) -> bool:
        """Checkpoint unless the model is producing non-finite values: then the last good one stays."""
        if self.state.bad_in_row:
            return False
        self.save()
        return True

    def _stopped(self, signum: int, saved: bool) -> RunResult:
        where = (
            f"checkpoint saved in {self.run_dir}"
            if saved
            else ("no checkpoint saved: the last steps were not finite, so the last good one stays latest")
        )
        self._say(
            f"stopped by signal at step {self.state.step}; {where}. "
            "To continue, run the same command again with --resume"
        )
        return RunResult(self.state.step, stopped=True, signal=signum)

    def _progress(self) -> Progress:
        """A bar on a terminal; elsewhere one plain line per logged step, through the run's log."""
        return Progress(
            self.total,
            "train",
            "step",
            initial=self.state.step,
            enabled=self.runtime.is_main,
            file=sys.stdout,
            every_s=0.0,
            write=self.log,
        )

    def _open_trackers(self):
        names = [n.strip() for n in self.config.train.trackers.split(",") if n.strip()]
        if not names:
            return None
        from baseforge.train.trackers import open_trackers

        return open_trackers(
            names,
            self.run_dir,
            self.config.to_dict(),
            resume=self.resume,
            log=self.log,
            start_step=self.state.step,
        )

    def train_step(self) -> StepResult:
        """One optimizer step at the current step number (the loop's; benchmarks call it directly)."""
        return self.step_fn(self.state.step, self.data)

    def _train_one_step(self) -> None:
        cfg = self.config.train
        t0 = time.perf_counter()
        result = self.train_step()
        self.state.record_step(result.loss, result.grad_norm, result.applied, cfg.grad_clip)
        if self.state.bad_in_row >= cfg.max_bad_steps:
            raise UserError(
                f"loss or gradients were not finite for {cfg.max_bad_steps} steps in a row "
                f"(step {self.state.step}); "
                "stopped. The last good checkpoint is kept: lower lr, check the data, or use precision=fp32"
            )
        self.state.record_time(self.tokens_per_step, time.perf_counter() - t0)

    def _should_stop_early(self, last: bool) -> bool:
        patience = self.config.train.early_stop_evals
        if not patience or self.state.evals_since_best < patience or last:
            return False
        self._say(
            f"early stop at step {self.state.step}: validation loss has not improved for {patience} "
            f"evaluations; best {self.state.best_val:.4f}"
        )
        return True

    def _initial_validation(self, metrics: MetricsLog | None, trackers) -> None:
        """Validation before the first step, so the curve shows how far training moved it."""
        self.state.initial_val = self.evaluate()
        if metrics is None:
            return
        if self.state.initial_val is None:
            self.log(
                f"warning: {self.data.source} has no validation split: training without a validation loss"
            )
            return
        row = {"step": 0, "tokens": 0, "loss": None, "val_loss": self.state.initial_val}
        metrics.write(row)
        if trackers is not None:
            trackers.log(row, 0)
        self.log(f"step 0 | val {self.state.initial_val:.4f}")

    # --- periodic actions -----------------------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        return self.step_fn.layout.global_batch * self.config.model.context

    def _solo_model(self) -> torch.nn.Module | None:
        """A model rank 0 can run alone (sampling, HellaSwag). Under FSDP a gathered copy, which is a
        collective: every rank calls this; ranks other than 0 get None."""
        if is_fsdp(self.step_fn.model):
            from baseforge.train.sharded import gathered_model

            return gathered_model(self.step_fn.model, self.runtime.device)
        return self._local_model

    @property
    def _local_model(self) -> torch.nn.Module:
        """The (possibly compiled) model without the DDP wrapper: for evaluations, which do not sync."""
        wrapped = self.step_fn.wrapped
        return wrapped.module if self.dist.enabled else wrapped

    def evaluate(self) -> float | None:
        """Held-out loss on the fixed validation slice (eval.loss's definition), averaged over ranks."""
        model, rt = self._local_model, self.runtime
        model.eval()
        batches = self.data.val_batches(
            self.config.train.eval_tokens, self.step_fn.layout.micro_batch, self.dist.rank, self.dist.world
        )
        total, count = loss_sum(model, batches, rt.device, rt.precision.autocast)
        model.train()
        total, count = all_reduce_sum([total, float(count)], self.dist, rt.device)
        return total / count if count else None

    def _log_row(self, due: Due, metrics: MetricsLog | None, bar: Progress, trackers) -> None:
        row = self._metrics_row()
        if due.evaluate:
            val = self.evaluate()
            if val is not None:
                row["val_loss"] = val
                self.state.record_val(val)
        if due.hellaswag and self.evaluators:
            model = self._solo_model()
            if self.runtime.is_main:
                for name, evaluate in self.evaluators.items():
                    for key, value in evaluate(model, self.data.tokenizer).items():
                        row[f"{name}_{key}"] = value
                model.train()
        if metrics is not None:
            metrics.write(row)
            if trackers is not None:
                trackers.log(row, row["step"])
        bar.update(row["step"] - bar.n, **progress_fields(row))
        self.state.window = type(self.state.window)()
        self.last_row = row

    def _metrics_row(self) -> dict:
        """The metrics row of the steps since the last one (metrics.py documents the fields)."""
        window, rt = self.state.window, self.runtime
        tokens_per_s = window.tokens / max(window.seconds, 1e-9)
        return {
            "step": self.state.step,
            "tokens": self.state.tokens,
            "loss": all_reduce_mean(window.mean_loss(), self.dist, rt.device),
            "lr": self.step_fn.optimizers.param_groups[0]["lr"],
            "grad_norm": window.mean_grad_norm(),
            "clip_frac": window.clipped / max(window.steps, 1),
            "skipped": self.state.skipped,
            "tokens_per_s": tokens_per_s,
            "mfu": self.step_fn.model.flops_per_token() * tokens_per_s / (rt.peak * self.dist.world),
            "mem_gb": memory_gb(rt.device),
            "elapsed_s": self.state.elapsed_s,
        }

    def save(self) -> None:
        """Write a checkpoint of the current step and the charts. Every rank takes part: each one's RNG
        state is gathered; FSDP runs also write their shards."""
        step = self.step_fn
        rng = ckpt.gather_rng_states(self.dist, self.runtime.device)
        args = dict(
            step=self.state.step,
            config=self.config,
            tokenizer=self.data.tokenizer,
            state=self.state.to_json(),
            keep_last=self.config.train.keep_last,
            is_best=self.state.best_step == self.state.step,
        )
        if is_fsdp(step.model):
            save_sharded(self.run_dir, step.model, step.optimizers, step.scaler, rng, self.dist, **args)
        elif self.runtime.is_main:
            trainer = ckpt.trainer_state(step.optimizers, step.scaler, rng)
            ckpt.save_checkpoint(self.run_dir, model=step.model, trainer=trainer, **args)
        if self.runtime.is_main:
            from baseforge.train.charts import write_charts

            write_charts(self.run_dir)
        barrier(self.dist)

    # --- words and the end ----------------------------------------------------------------------
    def _say(self, message: str) -> None:
        """Log on the main process only (above the progress bar while there is one)."""
        if self.dist.is_main:
            (self._note or self.log)(message)

    def _announce(self) -> None:
        for line in announce_lines(self):
            self._say(line)

    def finish(self) -> RunResult:
        row = self.last_row
        if not row:  # resumed at the end (killed after the last checkpoint): the last row is logged already
            row = next((r for r in reversed(read_metrics(self.run_dir)) if r["step"] == self.state.step), {})
        summary = build_summary(self, row)
        model = self._solo_model() if self.config.train.sample_tokens else None
        if self.runtime.is_main:
            self._write_summary(summary, model)
        return RunResult(self.state.step, summary=summary)

    def _write_summary(self, summary: dict, model: torch.nn.Module | None) -> None:
        from baseforge.fileio import atomic_write_json, atomic_write_text

        atomic_write_json(self.run_dir / "summary.json", summary)
        self.log(summary_line(summary))
        cfg = self.config.train
        if cfg.sample_tokens:
            text = self.sample(cfg.sample_prompt, cfg.sample_tokens, model)
            atomic_write_text(self.run_dir / "sample.txt", cfg.sample_prompt + text + "\n")
            self.log(f"sample:\n{cfg.sample_prompt}{text}")

    def sample(self, prompt: str, tokens: int, model: torch.nn.Module | None = None) -> str:
        from baseforge.generate import generate

        tok = self.data.tokenizer
        ids = generate(
            model or self.step_fn.model,
            tok.encode(prompt),
            max_new_tokens=tokens,
            temperature=0.8,
            top_k=50,
            seed=self.config.train.seed,
        )
        return tok.decode(ids)
