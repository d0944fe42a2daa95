"""What a run says about itself, as values: the opening lines, the metrics row, the progress fields,
and summary.json (train/reporter.py writes them)."""

from __future__ import annotations

from baseforge.generate import generate
from baseforge.model.attention import BACKEND_NAMES, FLEX, masked_backend
from baseforge.progress import format_count, format_duration, format_ratio
from baseforge.train.build import Run
from baseforge.train.distributed import all_reduce_mean
from baseforge.train.metrics import MetricsRow, peak_memory
from baseforge.train.mfu import format_mfu, format_peak
from baseforge.train.state import RunState


def announce_lines(run: Run, step: int) -> list[str]:
    """The three lines a run opens with: the model (and where it came from), the hardware and batch, the
    length of the run; then a warning when the validation split is smaller than eval_tokens (val_warning)."""
    c, rt, layout, data = run.config.model, run.runtime, run.layout, run.data
    n_params, world = run.n_params, rt.dist.world
    tokens = run.batches.tokens_before(run.total)
    verb = f"resuming from step {step}" if step else "training"
    return [
        f"{verb}: {run.config.origin()}, {n_params / 1e6:.2f}M parameters ({c.n_layer} layers, "
        f"{c.n_embd} wide, {c.n_head} heads, context {c.context}, vocab {c.vocab_size}, "
        f"tokenizer {data.tokenizer.name})",
        f"device {rt.device} x{world}, {rt.precision.name}, {compiled(run)}; "
        f"peak {format_peak(rt.peak, rt.peak_source)}; "
        f"batch {layout.global_batch} x {c.context} tokens = micro {layout.micro_batch} x accum "
        f"{layout.grad_accum} x {world} processes",
        f"{run.total} steps, {format_count(tokens)} tokens "
        f"({format_ratio(tokens / n_params)} per parameter); "
        f"train split {format_count(data.train_tokens)} tokens{held_out_words(data)}",
        *filter(
            None,
            [
                run.batches.describe(),
                attention_line(run),
                packing_line(data),
                average_line(run),
                val_warning(data, run.config.train.eval_tokens),
            ],
        ),
    ]


def held_out_words(data) -> str:
    """ "; validation N tokens: HOW" for prepared data (how its val was chosen), "" for other data."""
    val, how = getattr(data, "val", None), getattr(data, "held_out", None)
    tokens = getattr(val, "tokens", None)
    return f"; validation {format_count(tokens)} tokens: {how}" if how and isinstance(tokens, int) else ""


def compiled(run: Run) -> str:
    """Whether the model trains compiled: what `compile` resolved to, and whether the compile worked."""
    if hasattr(run.views.train, "_orig_mod"):
        return "compiled"
    return "eager (torch.compile failed)" if run.runtime.compile else "eager"


def average_line(run: Run) -> str | None:
    """What ema_decay keeps, from when, and where it shows (None without an average)."""
    average = run.average
    if average is None:
        return None
    span = 1 / (1 - average.decay)
    return (
        f"averaged weights: an EMA with decay {average.decay:g} (about the last {span:,.0f} steps) from step "
        f"{average.start} on, evaluated as ema_val_loss and saved as ema.safetensors (--which ema reads it)"
    )


def packing_line(data) -> str | None:
    """How best-fit packing cut the train split (None for concat packing and fine-tuning data)."""
    stats = getattr(data, "packing_stats", None)
    return stats.describe() if stats is not None else None


def attention_line(run: Run) -> str | None:
    """What attention does and which kernel computes it, when it is more than causal."""
    c, device = run.config.model, run.runtime.device
    if not c.masked_attention:
        return None
    rule = [f"within documents (starting at token {c.doc_token})"] if c.attn_doc_mask else []
    rule += [f"over the last {c.attn_window} positions"] if 0 < c.attn_window < c.context else []
    if not rule:  # a window of the whole context limits nothing
        return None
    kernel = masked_backend(device.type, c.dropout)
    return f"attention: causal, {' and '.join(rule)}; kernel: {BACKEND_NAMES[kernel]}"


def val_warning(data, eval_tokens: int) -> str | None:
    """A `warning:` line when the data's validation split holds fewer tokens (in whole windows of
    the context, what evaluation reads) than eval_tokens asks for; None when it holds enough, or when
    the data has no token count of its validation (fine-tuning data)."""
    val = getattr(data, "val", None)
    tokens = getattr(val, "tokens", None)
    if not eval_tokens or not isinstance(tokens, int) or tokens >= eval_tokens:
        return None
    return (
        f"warning: the validation split holds {tokens:,} tokens, fewer than eval_tokens={eval_tokens:,}: "
        f"val_loss rests on those {tokens:,} only (prepare with a larger --min-val-tokens or "
        "--val-fraction for more)"
    )


def metrics_row(run: Run, state: RunState) -> MetricsRow:
    """The metrics row of the steps since the last one (metrics.py documents the fields). A collective:
    the training loss is the mean over ranks."""
    interval, rt = state.interval, run.runtime
    tokens_per_s = interval.tokens / max(interval.seconds, 1e-9)
    # The FLOPs of the steps' own attention windows (a window warmup's are smaller); an interval restored
    # from a checkpoint that did not count them, at the model's full window.
    flops = interval.flops or interval.tokens * run.views.plain.flops_per_token()
    return MetricsRow(
        step=state.step,
        tokens=state.tokens,
        loss=all_reduce_mean(interval.mean_loss(), rt.dist, rt.device),
        lr=run.optimizers.rate("adamw"),
        muon_lr=run.optimizers.rate("muon"),  # each under its own name: a Muon run has two rates
        grad_norm=interval.mean_grad_norm(),
        clip_frac=interval.clipped / max(interval.steps, 1),
        skipped=state.skipped,
        tokens_per_s=tokens_per_s,
        mfu=flops / max(interval.seconds, 1e-9) / (rt.peak * rt.dist.world),
        **peak_memory(rt.device),
        elapsed_s=state.elapsed_s,
    )


def progress_counts(run: Run, state: RunState) -> tuple[int, int, bool]:
    """What the progress bar counts: (total, done so far, by tokens). A batch schedule's steps differ in
    size, so its progress is counted in tokens (Reporter.progress)."""
    plan = run.batches
    if plan.scheduled:
        return plan.tokens_before(run.total), state.tokens, True
    return run.total, state.step, False


def progress_fields(row: MetricsRow, span: int) -> dict:
    """What the progress bar / line shows of a metrics row, which covers the last `span` steps: its
    means and rates under that label ("last 10 steps: loss 3.2000, 12.3k tok/s, mfu 31.0%"), and the
    validation loss with its step (the line keeps showing it until the next evaluation). Few enough
    fields that the bar stays visible; lr and grad norm: metrics.jsonl, the charts."""
    figures = [f"loss {row.loss:.4f}", f"{format_count(row.tokens_per_s or 0.0)} tok/s"]
    mfu = format_mfu(row.mfu)
    if mfu:
        figures.append(f"mfu {mfu}")
    # One key whatever the span ("last" + "10 steps: ..."): the line keeps one field per key.
    fields = {"last": f"{f'{span} steps' if span != 1 else 'step'}: {', '.join(figures)}"}
    if row.val_loss is not None:
        fields["val"] = f"{row.val_loss:.4f} at step {row.step}"
    return fields


def build_summary(run: Run, state: RunState, last_row: MetricsRow | None) -> dict:
    """summary.json: time, tokens, throughput, losses, MFU of the whole run."""
    rt = run.runtime
    summary = {
        "data": str(run.data.source),
        "steps": state.step,
        "tokens": state.tokens,
        "params": run.n_params,
        "train_seconds": state.elapsed_s,
        "tokens_per_s": state.tokens / max(state.elapsed_s, 1e-9),
        "initial_val_loss": state.initial_val,
        "final_loss": last_row.loss if last_row else None,
        "final_val_loss": last_row.val_loss if last_row else None,
        "best_val_loss": state.best_val,
        # ema_decay: the averaged weights' loss at the last evaluation (None before ema_start)
        "final_ema_val_loss": last_row.evals.get("ema_val_loss") if last_row else None,
        "skipped_steps": state.skipped,
        "clip_frac": state.clipped / max(state.step, 1),
        "precision": rt.precision.name,
        "device": str(rt.device),
        "processes": rt.dist.world,
        # The whole run's, as tokens_per_s is (each metrics row holds its own interval's)
        "mfu": state.flops / max(state.elapsed_s, 1e-9) / (rt.peak * rt.dist.world) if state.flops else None,
        "peak_source": rt.peak_source,
        "flex_compiles": FLEX.compiles,  # FlexAttention's compiled training shapes in this process
    }
    if hasattr(run.data, "passes"):  # a mixture: each source's weight and passes (at today's weights)
        windows = state.tokens // run.config.model.context
        summary["sources"] = [
            {"name": s.name, "path": str(s.path), "weight": s.weight, "passes": passes}
            for s, passes in run.data.passes(windows)
        ]
    return summary


def summary_line(summary: dict) -> str:
    val = f", val loss {summary['final_val_loss']:.4f}" if summary["final_val_loss"] else ""
    if summary.get("final_ema_val_loss"):
        val += f" (averaged weights {summary['final_ema_val_loss']:.4f})"
    loss = f"{summary['final_loss']:.4f}" if summary["final_loss"] is not None else "n/a"
    return (
        f"done: {summary['steps']} steps, {format_count(summary['tokens'])} tokens in "
        f"{format_duration(summary['train_seconds'])} ({format_count(summary['tokens_per_s'])} tok/s); "
        f"final train loss {loss}{val}"
    )


def data_prompt(data, tokens: int = 8) -> str:
    """The end-of-run sample's prompt when none is set: the start of the first held-out document, so a
    model is prompted with its own corpus's kind of text (end-of-text alone without a validation split)."""
    batch = next(iter(data.val_batches(tokens, 1)), None)
    ids = [] if batch is None else [i for i in batch[0][0, :tokens].tolist() if i != data.tokenizer.eot_id]
    return data.tokenizer.decode(ids) if ids else data.tokenizer.decode([data.tokenizer.eot_id])


def end_sample(run: Run) -> tuple[str, str] | None:
    """The end-of-run sample as (prompt, text) on the main process; None elsewhere or when
    sample_tokens is 0. A collective: every rank takes part in gathering the whole model."""
    cfg = run.config.train
    model = run.views.whole_on_main() if cfg.sample_tokens else None
    if model is None:
        return None
    tok = run.data.tokenizer
    prompt = cfg.sample_prompt or data_prompt(run.data)
    ids = generate(model, tok.encode(prompt), cfg.sample_tokens, 0.8, 50, cfg.seed)
    return prompt, tok.decode(ids)
