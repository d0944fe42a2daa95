"""What a run says about itself: the opening lines, the progress fields, and summary.json."""

from __future__ import annotations

from baseforge.progress import format_count, format_duration
from baseforge.train.mfu import format_mfu


def announce_lines(trainer) -> list[str]:
    """The three lines a run opens with: the model, the hardware and batch, the length of the run."""
    c, rt, layout = trainer.config.model, trainer.runtime, trainer.step_fn.layout
    n_params, world, step = trainer.step_fn.model.num_params(), trainer.dist.world, trainer.state.step
    tokens = trainer.total * trainer.tokens_per_step
    verb = f"resuming from step {step}" if step else "training"
    return [
        f"{verb}: {trainer.config.preset}, {n_params / 1e6:.2f}M parameters ({c.n_layer} layers, "
        f"{c.n_embd} wide, {c.n_head} heads, context {c.context}, vocab {c.vocab_size}, "
        f"tokenizer {trainer.data.tokenizer.name})",
        f"device {rt.device} x{world}, {rt.precision.name}; peak {rt.peak / 1e12:.1f} TFLOP/s "
        f"({rt.peak_source}); "
        f"batch {layout.global_batch} x {c.context} tokens = micro {layout.micro_batch} x accum "
        f"{layout.grad_accum} x {world} processes",
        f"{trainer.total} steps, {format_count(tokens)} tokens ({tokens / n_params:.1f} per parameter); "
        f"train split {format_count(trainer.data.train_tokens)} tokens",
    ]


def progress_fields(row: dict) -> dict:
    """What the progress bar / line shows of a metrics row: few enough fields that the bar stays visible."""
    fields = {"loss": f"{row['loss']:.4f}"}
    if "val_loss" in row:
        fields["val"] = f"{row['val_loss']:.4f}"
    fields["tok/s"] = format_count(row["tokens_per_s"])  # lr and grad norm: metrics.jsonl and the charts
    mfu = format_mfu(row.get("mfu"))
    if mfu:
        fields["mfu"] = mfu
    return fields


def build_summary(trainer, last_row: dict) -> dict:
    """summary.json: time, tokens, throughput, losses, MFU of the whole run."""
    state, rt = trainer.state, trainer.runtime
    return {
        "data": str(trainer.data.source),
        "steps": state.step,
        "tokens": state.tokens,
        "params": trainer.step_fn.model.num_params(),
        "train_seconds": state.elapsed_s,
        "tokens_per_s": state.tokens / max(state.elapsed_s, 1e-9),
        "initial_val_loss": state.initial_val,
        "final_loss": last_row.get("loss"),
        "final_val_loss": last_row.get("val_loss"),
        "best_val_loss": state.best_val,
        "skipped_steps": state.skipped,
        "clip_frac": state.clipped / max(state.step, 1),
        "precision": rt.precision.name,
        "device": str(rt.device),
        "processes": trainer.dist.world,
        "mfu": last_row.get("mfu"),
        "peak_source": rt.peak_source,
    }


def summary_line(summary: dict) -> str:
    val = f", val loss {summary['final_val_loss']:.4f}" if summary["final_val_loss"] else ""
    loss = f"{summary['final_loss']:.4f}" if summary["final_loss"] is not None else "n/a"
    return (
        f"done: {summary['steps']} steps, {format_count(summary['tokens'])} tokens in "
        f"{format_duration(summary['train_seconds'])} ({format_count(summary['tokens_per_s'])} tok/s); "
        f"final train loss {loss}{val}"
    )
