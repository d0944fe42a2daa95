"""The README.md of an exported folder, and the loading instructions `baseforge export` prints.

The card may be published (`--push-to-hub`), so it names no local path: the data is described by its
folder's name and the sources its manifest lists (a local file by its name only), never by where it lies
on this machine. Its code runs as printed from the exported folder: the snippet loads "." (or the Hub
repo it was pushed to), with `trust_remote_code=True` on both loaders when the model ships its own code
(transformers' AutoTokenizer reads config.json too, and asks before running the code it names).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from baseforge.data.manifest import read_manifest
from baseforge.errors import UserError
from baseforge.records import number, read_json, text

PROMPT = "To be, or not to be"


@dataclass(frozen=True)
class RunSummary:
    """What the card says of RUN/summary.json, each field checked (records.py)."""

    data: str | None  # the data's name and sources, no local path
    final_loss: float | None
    final_val_loss: float | None
    tokens_per_s: float | None
    processes: int
    device: str | None


def read_summary(path: Path) -> RunSummary:
    """RUN/summary.json through the checked reader; UserError (one line) for a symlink, a torn file or a
    field of the wrong type."""
    record = read_json(path, "run summary")
    processes = number(record, "processes", path)
    return RunSummary(
        data=describe_data(text(record, "data", path, optional=True)),
        final_loss=number(record, "final_loss", path),
        final_val_loss=number(record, "final_val_loss", path),
        tokens_per_s=number(record, "tokens_per_s", path),
        processes=int(processes) if processes and processes >= 1 else 1,
        device=text(record, "device", path, optional=True),
    )


def source_name(source: str) -> str:
    """A manifest source as the card names it: Hub names as they are, a local path by its last part."""
    if source.startswith("hf:") or "/" not in source.replace("\\", "/"):
        return source
    return Path(source.replace("\\", "/").rstrip("/")).name or source


def describe_data(path: str | None) -> str | None:
    """The data dir's name, with its manifest's sources when the dir is still there to read; a
    mixture (summary.json's data "A:0.7 + B:0.3") as each dir's name and weight."""
    if not path:
        return None
    if " + " in path:
        parts = [p.rpartition(":") for p in path.split(" + ")]
        return "a mixture of " + ", ".join(f"`{source_name(d)}` (weight {w})" for d, _, w in parts)
    name = source_name(path)
    try:
        sources = read_manifest(path).sources
    except UserError:  # moved or deleted since training: its name is what is left to say
        return f"`{name}`"
    listed = ", ".join(f"`{source_name(s)}`" for s in sources)
    return f"`{name}`" + (f" (prepared from {listed})" if listed else "")


def usage_snippet(where: str, remote: bool) -> list[str]:
    """Python that loads the exported model from `where` and samples from it, runnable as printed."""
    trust = ", trust_remote_code=True" if remote else ""
    return [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = AutoModelForCausalLM.from_pretrained({where!r}{trust})",
        f"tokenizer = AutoTokenizer.from_pretrained({where!r}{trust})",
        f"ids = tokenizer({PROMPT!r}, return_tensors='pt').input_ids",
        "out = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)",
        "print(tokenizer.decode(out[0]))",
    ]


def public_config(config: dict) -> dict:
    """The run's config as the card shows it: a path among its settings (hellaswag_data) by its name."""
    return {
        key: public_config(value)
        if isinstance(value, dict)
        else source_name(value)
        if isinstance(value, str) and (Path(value).is_absolute() or value.startswith("~"))
        else value
        for key, value in config.items()
    }


def model_card(
    name: str, info: dict, summary: RunSummary | None, remote_reasons: list[str], hub_name: str | None = None
) -> str:
    config = public_config(info["config"].to_dict())
    state = info["state"]
    remote = bool(remote_reasons)
    kind = "A GPT-2-style" if remote else "A GPT-2-architecture"
    source = config.get("init_from")  # --init-from: the weights it started from, not from scratch
    start = f"from the weights of `{source}`" if source else "from scratch"
    preset = f"`{config['preset']}`" + (
        " (the training settings; the model's shape from the source)" if source else ""
    )
    lines = [
        f"# {name}",
        "",
        f"{kind} base language model trained {start} with baseforge (no instruction tuning).",
        "",
        f"- preset: {preset}; tokenizer: `{state['tokenizer']['name']}`",
        f"- training: {state['step']:,} steps, {state.get('tokens', 0):,} tokens",
    ]
    if info.get("weights") == "ema.safetensors":
        lines.append(
            f"- weights: the average of the last steps' weights (an EMA with decay {config.get('ema_decay')} "
            f"from {config.get('ema_start')} of the run), not the last step's"
        )
    if state.get("best_val") is not None:
        lines.append(f"- best validation loss: {state['best_val']:.4f}")
    if summary is not None:
        lines += _summary_lines(summary)
    if remote:
        lines += _remote_code_section(remote_reasons)
    return "\n".join(lines + _usage_and_config(config, remote, hub_name))


def _summary_lines(summary: RunSummary) -> list[str]:
    def loss(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f}"

    lines = [f"- data: {summary.data}"] if summary.data else []
    speed = summary.tokens_per_s
    lines.append(
        f"- final train loss {loss(summary.final_loss)}, final validation loss {loss(summary.final_val_loss)}"
        + (f", {speed:,.0f} tokens/s" if speed is not None and math.isfinite(speed) else "")
        + (f" on {summary.processes} x {summary.device}" if summary.device else "")
    )
    return lines


def _remote_code_section(reasons: list[str]) -> list[str]:
    return [
        "",
        "## Remote code needed",
        "",
        "This model is not a standard GPT-2: it uses " + "; ".join(reasons) + ". "
        "No built-in transformers class computes that combination, so the folder ships its own "
        "`modeling_baseforge.py` and `configuration_baseforge.py` (plain PyTorch + transformers, no "
        "baseforge needed) and loading needs `trust_remote_code=True`, for the tokenizer too (it reads "
        "config.json). Read those two files before trusting them: they are all the code that runs. "
        "Generation recomputes the prefix at each step (no KV cache).",
    ]


def _usage_and_config(config: dict, remote: bool, hub_name: str | None) -> list[str]:
    """How to load the folder with transformers, then the run's training config."""
    where = hub_name or "."
    said = f"From the Hub (`{hub_name}`):" if hub_name else "From this folder (or pass its path):"
    return [
        "",
        "## Use",
        "",
        said,
        "",
        "```python",
        *usage_snippet(where, remote),
        "```",
        "",
        "Training config:",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
    ]
