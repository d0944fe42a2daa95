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

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from baseforge.config import RunConfig
from baseforge.data.loader import BatchLayout, TokenData
from baseforge.errors import UserError
from baseforge.eval.loss import loss_sum
from baseforge.model import GPT
from baseforge.train import checkpoint as ckpt
from baseforge.train.cadence import Cadence, Due
from baseforge.train.device import Runtime, compile_for_training
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
    Progress,
    format_count,
    format_duration,
    memory_gb,
    truncate_metrics,
)
from baseforge.train.optim import build_optimizers
from baseforge.train.parallel import is_fsdp, wrap_model
from baseforge.train.schedule import Schedule
from baseforge.train.sharded import save_sharded
from baseforge.train.state import RunState
from baseforge.train.step import StepResult, TrainStep
from baseforge.train.stop import StopRequested


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
        wrapped = self._wrap(model)
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
        theirs, ours = state["tokenizer"], self.data.tokenizer.record()
        if (theirs["name"], theirs["vocab_size"]) != (ours["name"], ours["vocab_size"]):
            raise UserError(
                f"the checkpoint was trained with tokenizer {theirs['name']} ({theirs['vocab_size']} tokens) "
                f"but {self.data.source} uses {ours['name']} ({ours['vocab_size']}); resume with its data"
            )
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
        layout = BatchLayout.resolve(
            global_batch=cfg.global_batch,
            micro_batch=micro,
            grad_accum=cfg.grad_accum,
            world=world,
            rank=self.dist.rank,
        )
        if cfg.micro_batch == "auto":
            self._say(f"micro_batch auto: {micro} fits; gradient accumulation {layout.grad_accum}")
        return layout

    def _wrap(self, model: GPT) -> torch.nn.Module:
        """What runs forward in training (parallel.wrap_model); first, each rank's own dropout stream."""
        seed_rank(self.config.train.seed, self.dist)  # after the model init, which is the same on every rank
        compile_fn = lambda m: compile_for_training(m, self._warm_up, self._say)  # noqa: E731
        return wrap_model(model, self.config.train, self.runtime, compile_fn)

    def _warm_up(self, compiled: torch.nn.Module) -> None:
        x, y = self.data.micro_batch(0, 0, BatchLayout(micro_batch=1))
        with self.runtime.precision.autocast():
            compiled(x.to(self.runtime.device), y.to(self.runtime.device))[1].backward()

    def prepare_run_dir(self) -> None:
        """The first writes: the run dir and its config; on resume, forget what came after the checkpoint."""
        if not self.runtime.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_run_config(self.run_dir, self.config)
        if self.resume:
            truncate_metrics(self.run_dir, self.state.step)
            ckpt.discard_after(self.run_dir, self.state.step)

    # --- the run --------------------------------------------------------------------------------
    def run(self) -> RunResult:
        self.setup()
        self.prepare_run_dir()
        self._announce()
        metrics = MetricsLog(self.run_dir) if self.runtime.is_main else None
        progress = Progress(self.total, self.log, self.state.step, self.state.elapsed_s)
        cadence = Cadence.from_config(self.config.train)
        self.step_fn.model.train()
        if self.state.step == 0:
            self._initial_validation(metrics)
        with StopRequested() as stop:
            while self.state.step < self.total:
                self._train_one_step()
                last = self.state.step == self.total
                due = cadence.due(self.state.step, last)
                if due.log:
                    self._log_row(due, metrics, progress)
                if self._should_stop_early(last):
                    last, self.total = True, self.state.step
                stopping, on_time = any_rank(
                    [stop.signal is not None, cadence.checkpoint_time_due()], self.dist, self.runtime.device
                )
                # Never checkpoint a model that is producing non-finite values: keep the last good one.
                if (due.checkpoint or last or stopping or on_time) and self.state.bad_in_row == 0:
                    self.save()
                    cadence.checkpointed()
                if stopping:
                    self._say(
                        f"stopped by signal at step {self.state.step}; checkpoint saved in {self.run_dir}. "
                        "To continue, run the same command again with --resume"
                    )
                    return RunResult(self.state.step, stopped=True, signal=stop.signal)
        return self.finish()

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

    def _initial_validation(self, metrics: MetricsLog | None) -> None:
        """Validation before the first step, so the curve shows how far training moved it."""
        self.state.initial_val = self.evaluate()
        if metrics is not None and self.state.initial_val is not None:
            metrics.write({"step": 0, "tokens": 0, "loss": None, "val_loss": self.state.initial_val})
            self.log(f"step 0 | val {self.state.initial_val:.4f}")

    # --- periodic actions -----------------------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        return self.step_fn.layout.global_batch * self.config.model.context

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

    def _log_row(self, due: Due, metrics: MetricsLog | None, progress: Progress) -> None:
        row = self._metrics_row()
        if due.evaluate:
            val = self.evaluate()
            if val is not None:
                row["val_loss"] = val
                self.state.record_val(val)
        if due.hellaswag and self.runtime.is_main:
            model = self._local_model
            for name, evaluate in self.evaluators.items():
                for key, value in evaluate(model, self.data.tokenizer).items():
                    row[f"{name}_{key}"] = value
            model.train()
        if metrics is not None:
            metrics.write(row)
            progress.update(row, self.state.elapsed_s)
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
        """Every rank takes part: each one's RNG state is gathered; FSDP runs also write their shards."""
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
        """Log on the main process only."""
        if self.dist.is_main:
            self.log(message)

    def _announce(self) -> None:
        c, rt, layout = self.config.model, self.runtime, self.step_fn.layout
        n_params = self.step_fn.model.num_params()
        verb = f"resuming from step {self.state.step}" if self.state.step else "training"
        self._say(
            f"{verb}: {self.config.preset}, {n_params / 1e6:.2f}M parameters ({c.n_layer} layers, "
            f"{c.n_embd} wide, {c.n_head} heads, context {c.context}, vocab {c.vocab_size}, "
            f"tokenizer {self.data.tokenizer.name})"
        )
        self._say(
            f"device {rt.device} x{self.dist.world}, {rt.precision.name}; peak {rt.peak / 1e12:.1f} TFLOP/s "
            f"({rt.peak_source}); batch {layout.global_batch} x {c.context} tokens = micro "
            f"{layout.micro_batch} x accum {layout.grad_accum} x {self.dist.world} processes"
        )
        tokens = self.total * self.tokens_per_step
        self._say(
            f"{self.total} steps, {format_count(tokens)} tokens ({tokens / n_params:.1f} per parameter); "
            f"train split {format_count(self.data.train_tokens)} tokens"
        )

    def finish(self) -> RunResult:
        state, row = self.state, self.last_row
        summary = {
            "data": str(self.data.source),
            "steps": state.step,
            "tokens": state.tokens,
            "params": self.step_fn.model.num_params(),
            "train_seconds": state.elapsed_s,
            "tokens_per_s": state.tokens / max(state.elapsed_s, 1e-9),
            "initial_val_loss": state.initial_val,
            "final_loss": row.get("loss"),
            "final_val_loss": row.get("val_loss"),
            "best_val_loss": state.best_val,
            "skipped_steps": state.skipped,
            "clip_frac": state.clipped / max(state.step, 1),
            "precision": self.runtime.precision.name,
            "device": str(self.runtime.device),
            "processes": self.dist.world,
            "mfu": row.get("mfu"),
            "peak_source": self.runtime.peak_source,
        }
        if self.runtime.is_main:
            self._write_summary(summary)
        return RunResult(state.step, summary=summary)

    def _write_summary(self, summary: dict) -> None:
        from baseforge.fileio import atomic_write_json, atomic_write_text

        atomic_write_json(self.run_dir / "summary.json", summary)
        val = f", val loss {summary['final_val_loss']:.4f}" if summary["final_val_loss"] else ""
        self.log(
            f"done: {summary['steps']} steps, {format_count(summary['tokens'])} tokens in "
            f"{format_duration(summary['train_seconds'])} ({format_count(summary['tokens_per_s'])} tok/s); "
            f"final train loss {summary['final_loss']:.4f}{val}"
        )
        cfg = self.config.train
        if cfg.sample_tokens:
            text = self.sample(cfg.sample_prompt, cfg.sample_tokens)
            atomic_write_text(self.run_dir / "sample.txt", cfg.sample_prompt + text + "\n")
            self.log(f"sample:\n{cfg.sample_prompt}{text}")

    def sample(self, prompt: str, tokens: int) -> str:
        from baseforge.generate import generate

        tok = self.data.tokenizer
        ids = generate(
            self.step_fn.model,
            tok.encode(prompt),
            max_new_tokens=tokens,
            temperature=0.8,
            top_k=50,
            seed=self.config.train.seed,
        )
        return tok.decode(ids)
