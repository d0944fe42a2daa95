"""The training loop: one code path for 1 CPU core, one GPU, or N processes under torchrun.

Each optimizer step draws its global batch from `data.loader.TrainStream` by step number, so
everything a resumed run needs is the checkpoint: weights, optimizer, scaler, RNG states, the
step, and the running sums of the metrics row in progress.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path

import torch

from baseforge.config import RunConfig
from baseforge.data.loader import TokenData
from baseforge.errors import UserError
from baseforge.model import GPT
from baseforge.train import checkpoint as ckpt
from baseforge.train.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    any_rank,
    barrier,
    batch_geometry,
    device_for,
    init_distributed,
    shutdown,
)
from baseforge.train.host import keep_freed_memory
from baseforge.train.metrics import (
    MetricsLog,
    Progress,
    format_count,
    format_duration,
    memory_gb,
    truncate_metrics,
)
from baseforge.train.mfu import device_peak
from baseforge.train.optim import build_optimizers
from baseforge.train.precision import resolve_device, setup_precision
from baseforge.train.schedule import lr_multiplier


class StopRequested:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and exits."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def total_steps(cfg, n_params: int, tokens_per_step: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    budget = cfg.max_tokens or cfg.tokens_per_param * n_params
    return max(1, math.ceil(budget / tokens_per_step))


class Trainer:
    """Trains `config`'s model on `data` into `run_dir`.

    `data` is a data dir (pretraining) or any object with TokenData's interface (fine-tuning);
    `init_weights` starts from given tensors instead of a random initialisation.
    """

    def __init__(
        self,
        config: RunConfig,
        data,
        run_dir: Path | str,
        resume: bool = False,
        log=print,
        init_weights: dict | None = None,
        evaluators: dict | None = None,
    ):
        self.config, self.cfg = config, config.train
        self.run_dir = Path(run_dir)
        # Extra evaluations on the main process, every hellaswag_every steps: {name: fn(model, tokenizer) -> dict}.
        self.evaluators = evaluators or {}
        self.log = log
        self.dist: DistInfo = init_distributed(self.cfg.dist_timeout_s)
        self.device = device_for(self.dist, resolve_device(self.cfg.device))
        self.precision = setup_precision(self.cfg.precision, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.main = self.dist.is_main

        if isinstance(data, (str, Path)):
            data = TokenData(data, config.get("context"), self.cfg.seed)
        self.data = data
        self.tokenizer = data.tokenizer
        self.resume_from = self._find_resume() if resume else None
        if not resume and (self.run_dir / ckpt.CHECKPOINTS / "latest").exists():
            raise UserError(
                f"{self.run_dir} already holds a run; continue it with --resume, or choose another --out"
            )
        self.model_config = config.model_config(self.tokenizer.vocab_size)
        if self.model_config.vocab_size < self.tokenizer.vocab_size:
            raise UserError(
                f"model vocab_size {self.model_config.vocab_size} is smaller than the data's "
                f"tokenizer ({self.tokenizer.name}, {self.tokenizer.vocab_size} tokens); "
                f"set vocab_size={self.tokenizer.vocab_size} or prepare the data with another tokenizer"
            )
        # Measure the device peak before seeding: the measurement draws random numbers.
        self.peak, self.peak_source = device_peak(self.device, self.precision.name)
        torch.manual_seed(self.cfg.seed)
        self.model = GPT(self.model_config)
        if init_weights is not None:
            ckpt.load_model_tensors(self.model, init_weights)
        self.model.to(self.device)
        self.n_params = self.model.num_params()
        self.flops_per_token = self.model.flops_per_token()
        self._set_geometry()
        self.optimizers = build_optimizers(self.model, self.cfg, self.device)
        self.scaler = self.precision.grad_scaler()
        self.fwd_model = self._maybe_compile(self.model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.fwd_model = DDP(self.fwd_model, device_ids=ids)
        self.state = {
            "tokens": 0,
            "best_val": None,
            "skipped": 0,
            "bad_in_row": 0,
            "clipped": 0,
            "elapsed_s": 0.0,
            "evals_since_best": 0,
            "row": self._empty_row(),
        }
        self.step = 0
        if self.resume_from is not None:
            saved = ckpt.restore_training(
                self.resume_from, self.model, self.optimizers, self.scaler, self.device
            )
            self.step = saved["step"]
            self.state.update({k: saved[k] for k in self.state if k in saved})
            if self.main:
                truncate_metrics(self.run_dir, self.step)
                ckpt.discard_after(self.run_dir, self.step)
        self._start_step = self.step
        self.total = total_steps(self.cfg, self.n_params, self.tokens_per_step)
        if self.cfg.warmup_steps:
            self.warmup = self.cfg.warmup_steps
        else:
            self.warmup = round(self.cfg.warmup_fraction * self.total)

    # --- set-up helpers ---------------------------------------------------------------------------
    def _find_resume(self) -> Path:
        path = ckpt.find_checkpoint(self.run_dir)
        _, state = ckpt.read_checkpoint_meta(path)
        theirs, ours = state["tokenizer"], self.tokenizer.record()
        if (theirs["name"], theirs["vocab_size"]) != (ours["name"], ours["vocab_size"]):
            raise UserError(
                f"the checkpoint was trained with tokenizer {theirs['name']} ({theirs['vocab_size']} "
                f"tokens) but {self.data.source} uses {ours['name']} ({ours['vocab_size']}); "
                "resume with the run's own data"
            )
        return path

    def _set_geometry(self) -> None:
        cfg, world = self.cfg, self.dist.world
        micro = cfg.micro_batch
        if micro == "auto":
            # Search up to the whole per-process batch (no accumulation), or 64 without a global batch.
            micro = self._find_micro_batch(cfg.global_batch // world if cfg.global_batch else 64)
        self.global_batch, self.micro_batch, self.grad_accum = batch_geometry(
            cfg.global_batch, micro, cfg.grad_accum, world
        )
        if cfg.micro_batch == "auto" and self.main:
            self.log(f"micro_batch auto: {micro} fits; gradient accumulation {self.grad_accum}")
        self.tokens_per_step = self.global_batch * self.model_config.context

    def _find_micro_batch(self, per_rank: int) -> int:
        from baseforge.train.autobatch import largest_fitting, step_fits

        initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        rng = torch.get_rng_state()

        def run_steps(b: int) -> None:
            opt = build_optimizers(self.model, self.cfg, self.device)
            x, y = self.data.micro_batch(0, 0, 0, 1, b, 1)
            for _ in range(2):
                with self.precision.autocast():
                    _, loss = self.model(x.to(self.device), y.to(self.device))
                loss.backward()
                opt.step()
                opt.zero_grad()

        micro = largest_fitting(per_rank, step_fits(run_steps, self.device))
        self.model.load_state_dict(initial)
        torch.set_rng_state(rng)
        return micro

    def _maybe_compile(self, model):
        if not self.cfg.compile:
            return model
        try:
            compiled = torch.compile(model)
            x, y = self.data.micro_batch(0, 0, 0, 1, 1, 1)
            with self.precision.autocast():
                compiled(x.to(self.device), y.to(self.device))[1].backward()
            model.zero_grad(set_to_none=True)
            return compiled
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eager
            model.zero_grad(set_to_none=True)
            if self.main:
                self.log(
                    f"torch.compile unavailable here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                    "training eager"
                )
            return model

    @staticmethod
    def _empty_row() -> dict:
        return {"loss_sum": 0.0, "steps": 0, "gnorm_sum": 0.0, "clipped": 0, "tokens": 0, "seconds": 0.0}

    # --- the loop -----------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float, bool]:
        """One optimizer step over the global batch: (mean loss, pre-clip grad norm, applied)."""
        self.optimizers.set_lr_multiplier(
            lr_multiplier(
                self.step,
                self.total,
                self.cfg.schedule,
                self.warmup,
                self.cfg.min_lr_ratio,
                self.cfg.decay_fraction,
            )
        )
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            x, y = self.data.micro_batch(
                self.step, micro, self.dist.rank, self.dist.world, self.micro_batch, self.grad_accum
            )
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = micro == self.grad_accum - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.fwd_model.no_sync()
            with sync:
                with self.precision.autocast():
                    _, loss = self.fwd_model(x, y)
                loss = loss / self.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += loss.detach()
        if self.scaler:
            self.optimizers.unscale_(self.scaler)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item()
        applied = math.isfinite(grad_norm)  # identical on every rank: gradients are all-reduced
        if applied:
            self.optimizers.step(self.scaler)
        if self.scaler:
            self.scaler.update()
        self.optimizers.zero_grad()
        return loss_sum.item(), grad_norm, applied

    @property
    def _local_model(self):
        """The (possibly compiled) model without the DDP wrapper: for evaluations, which do not sync."""
        return self.fwd_model.module if self.dist.enabled else self.fwd_model

    @torch.no_grad()
    def evaluate(self) -> float | None:
        model = self._local_model
        model.eval()
        total, count = 0.0, 0
        for x, y in self.data.val_batches(
            self.cfg.eval_tokens, self.micro_batch, self.dist.rank, self.dist.world
        ):
            with self.precision.autocast():
                _, loss = model(x.to(self.device), y.to(self.device))
            n = int((y != -100).sum())
            total += loss.item() * n
            count += n
        model.train()
        total, count = all_reduce_sum([total, float(count)], self.dist, self.device)
        return total / count if count else None

    def run(self) -> dict:
        cfg, main = self.cfg, self.main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.write_run_config(self.run_dir, self.config)
            self._announce()
        metrics = MetricsLog(self.run_dir) if main else None
        progress = Progress(self.total, self.log)
        self.model.train()
        last_ckpt_time = time.monotonic()
        row = self.state["row"]
        if self.step == 0:  # where validation starts, so the curve shows how far training moved it
            self.state["initial_val"] = self.evaluate()
            if main and self.state["initial_val"] is not None:
                metrics.write({"step": 0, "tokens": 0, "loss": None, "val_loss": self.state["initial_val"]})
                self.log(f"step 0 | val {self.state['initial_val']:.4f}")
        with StopRequested() as stop:
            while self.step < self.total:
                t0 = time.perf_counter()
                loss, gnorm, applied = self.train_step()
                self.step += 1
                self.state["tokens"] += self.tokens_per_step
                if applied:
                    self.state["bad_in_row"] = 0
                    clipped = cfg.grad_clip > 0 and gnorm > cfg.grad_clip
                    row["loss_sum"] += loss
                    row["gnorm_sum"] += gnorm
                    row["steps"] += 1
                    row["clipped"] += int(clipped)
                    self.state["clipped"] += int(clipped)
                else:
                    self.state["skipped"] += 1
                    self.state["bad_in_row"] += 1
                    if self.state["bad_in_row"] >= cfg.max_bad_steps:
                        raise UserError(
                            f"loss or gradients were not finite for {cfg.max_bad_steps} steps in a row (step "
                            f"{self.step}); stopped. The last good checkpoint is kept: lower lr, check the data, "
                            "or use precision=fp32"
                        )
                dt = time.perf_counter() - t0
                row["tokens"] += self.tokens_per_step
                row["seconds"] += dt
                self.state["elapsed_s"] += dt
                last = self.step == self.total
                due_hellaswag = cfg.hellaswag_every and self.step % cfg.hellaswag_every == 0
                if self.step % cfg.log_every == 0 or last or self.step % cfg.eval_every == 0 or due_hellaswag:
                    self._log_row(row, metrics, progress, evaluate=self.step % cfg.eval_every == 0 or last)
                    row = self.state["row"] = self._empty_row()
                if (
                    cfg.early_stop_evals
                    and self.state["evals_since_best"] >= cfg.early_stop_evals
                    and not last
                ):
                    if main:
                        self.log(
                            f"early stop at step {self.step}: validation loss has not improved for "
                            f"{cfg.early_stop_evals} evaluations; best {self.state['best_val']:.4f}"
                        )
                    last = True
                    self.total = self.step
                due_time = (
                    cfg.checkpoint_minutes > 0
                    and time.monotonic() - last_ckpt_time > 60 * cfg.checkpoint_minutes
                )
                stopping = any_rank(stop.signal is not None, self.dist, self.device)
                due = (
                    self.step % cfg.checkpoint_every == 0
                    or last
                    or stopping
                    or any_rank(due_time, self.dist, self.device)
                )
                # Never checkpoint a model that is producing non-finite values: keep the last good one.
                if due and self.state["bad_in_row"] == 0:
                    self.save()
                    last_ckpt_time = time.monotonic()
                if stopping:
                    if main:
                        self.log(
                            f"stopped by signal at step {self.step}; checkpoint saved in {self.run_dir}. "
                            "To continue, run the same command again with --resume"
                        )
                    shutdown(self.dist)
                    return {"stopped": True, "step": self.step, "signal": stop.signal}
        summary = self.finish()
        shutdown(self.dist)
        return summary

    def _log_row(self, row, metrics, progress, evaluate: bool) -> None:
        steps = max(row["steps"], 1)
        loss = all_reduce_mean(row["loss_sum"] / steps, self.dist, self.device)
        tokens_per_s = row["tokens"] / max(row["seconds"], 1e-9)
        out = {
            "step": self.step,
            "tokens": self.state["tokens"],
            "loss": loss,
            "lr": self.optimizers.param_groups[0]["lr"],
            "grad_norm": row["gnorm_sum"] / steps,
            "clip_frac": row["clipped"] / steps,
            "skipped": self.state["skipped"],
            "tokens_per_s": tokens_per_s,
            "mfu": self.flops_per_token * tokens_per_s / (self.peak * self.dist.world),
            "mem_gb": memory_gb(self.device),
            "elapsed_s": self.state["elapsed_s"],
        }
        if evaluate:
            val = self.evaluate()
            if val is not None:
                out["val_loss"] = val
                best = self.state["best_val"]
                improved = best is None or val < best
                self.state["evals_since_best"] = 0 if improved else self.state["evals_since_best"] + 1
                if improved:
                    self.state["best_val"], self.state["best_step"] = val, self.step
        if (
            self.main
            and self.cfg.hellaswag_every
            and (self.step % self.cfg.hellaswag_every == 0 or self.step == self.total)
        ):
            model = self._local_model
            for name, evaluate in self.evaluators.items():
                for key, value in evaluate(model, self.tokenizer).items():
                    out[f"{name}_{key}"] = value
            model.train()
        if self.main:
            metrics.write(out)
            seconds_per_step = self.state["elapsed_s"] / max(self.step - self._start_step, 1)
            progress.update(out, self.total - self.step, seconds_per_step)
        self.last_row = out

    def save(self) -> None:
        if self.main:
            ckpt.save_checkpoint(
                self.run_dir,
                step=self.step,
                model=self.model,
                optimizers=self.optimizers,
                scaler=self.scaler,
                state=self.state,
                config=self.config,
                tokenizer=self.tokenizer,
                keep_last=self.cfg.keep_last,
                is_best=self.state.get("best_step") == self.step,
            )
            from baseforge.train.charts import write_charts

            write_charts(self.run_dir)
        barrier(self.dist)

    def _announce(self) -> None:
        c = self.model_config
        verb = f"resuming from step {self.step}" if self.step else "training"
        self.log(
            f"{verb}: {self.config.preset}, {self.n_params / 1e6:.2f}M parameters "
            f"({c.n_layer} layers, {c.n_embd} wide, {c.n_head} heads, context {c.context}, "
            f"vocab {c.vocab_size}, tokenizer {self.tokenizer.name})"
        )
        self.log(
            f"device {self.device} x{self.dist.world}, {self.precision.name}; peak "
            f"{self.peak / 1e12:.1f} TFLOP/s ({self.peak_source}); batch {self.global_batch} x {c.context} "
            f"tokens = micro {self.micro_batch} x accum {self.grad_accum} x {self.dist.world} processes"
        )
        self.log(
            f"{self.total} steps, {format_count(self.total * self.tokens_per_step)} tokens "
            f"({self.total * self.tokens_per_step / self.n_params:.1f} per parameter); "
            f"train split {format_count(self.data.train_tokens)} tokens"
        )

    def finish(self) -> dict:
        row = getattr(self, "last_row", {})
        summary = {
            "data": str(self.data.source),
            "steps": self.step,
            "tokens": self.state["tokens"],
            "params": self.n_params,
            "train_seconds": self.state["elapsed_s"],
            "tokens_per_s": self.state["tokens"] / max(self.state["elapsed_s"], 1e-9),
            "initial_val_loss": self.state.get("initial_val"),
            "final_loss": row.get("loss"),
            "final_val_loss": row.get("val_loss"),
            "best_val_loss": self.state["best_val"],
            "skipped_steps": self.state["skipped"],
            "clip_frac": self.state["clipped"] / max(self.step, 1),
            "precision": self.precision.name,
            "device": str(self.device),
            "processes": self.dist.world,
            "mfu": row.get("mfu"),
            "peak_source": self.peak_source,
        }
        if self.main:
            from baseforge.fileio import atomic_write_json, atomic_write_text

            atomic_write_json(self.run_dir / "summary.json", summary)
            self.log(
                f"done: {self.step} steps, {format_count(summary['tokens'])} tokens in "
                f"{format_duration(summary['train_seconds'])} ({format_count(summary['tokens_per_s'])} tok/s); "
                f"final train loss {summary['final_loss']:.4f}"
                + (f", val loss {summary['final_val_loss']:.4f}" if summary["final_val_loss"] else "")
            )
            if self.cfg.sample_tokens:
                text = self.sample(self.cfg.sample_prompt, self.cfg.sample_tokens)
                atomic_write_text(self.run_dir / "sample.txt", self.cfg.sample_prompt + text + "\n")
                self.log(f"sample:\n{self.cfg.sample_prompt}{text}")
        return summary

    def sample(self, prompt: str, tokens: int) -> str:
        from baseforge.generate import generate

        ids = generate(
            self.model,
            self.tokenizer.encode(prompt),
            max_new_tokens=tokens,
            temperature=0.8,
            top_k=50,
            seed=self.cfg.seed,
        )
        return self.tokenizer.decode(ids)
