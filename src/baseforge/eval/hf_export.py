"""Export a run as a `transformers` folder, import OpenAI's GPT-2 as a run.

The export folder holds config.json, model.safetensors, generation_config.json, tokenizer files
and a model card (README.md). A GPT-2-shaped run becomes a standard GPT2LMHeadModel:
`AutoModelForCausalLM.from_pretrained(DIR)` loads it with no remote code. Any other architecture
(rotary positions, RMSNorm, QK-norm, ReLU², soft-capped logits) ships baseforge's own modeling and
configuration files (`hf_remote/`, torch + transformers only, baseforge's parameter names) with an
`auto_map` in config.json, and loads with `trust_remote_code=True`.
`AutoTokenizer.from_pretrained(DIR)` loads the tokenizer either way. GPT-2's tokenizer is written as
vocab.json + merges.txt, rebuilt from tiktoken's ranks (each token's merge is the last step of
running BPE on its own bytes); a trained byte-level BPE ships its tokenizer.json.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from baseforge.config import RunConfig, TrainConfig
from baseforge.errors import UserError
from baseforge.eval.model_card import RunSummary, model_card, read_summary
from baseforge.eval.models import download_hf, load_hf_folder
from baseforge.fileio import (
    apply_umask_modes,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    output_dir,
    swap_dir,
)
from baseforge.model import hf as hf_map
from baseforge.model.config import ModelConfig
from baseforge.rundir import RunDir
from baseforge.tokenizer import EOT, GPT2Tokenizer, Tokenizer, TrainedBPETokenizer
from baseforge.train.checkpoint.format import load_model, save_checkpoint, write_run_config


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (used by vocab.json and merges.txt)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _last_merge(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    parts = [bytes([b]) for b in token]
    limit = ranks[token]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"cannot find the merge that makes token {token!r}")
    return parts[0], parts[1]


def write_gpt2_tokenizer(tok: GPT2Tokenizer, out: Path, context: int) -> None:
    ranks = tok.enc._mergeable_ranks  # tiktoken's bytes -> rank table
    u = bytes_to_unicode()
    text = lambda b: "".join(u[x] for x in b)  # noqa: E731
    vocab = {text(b): r for b, r in ranks.items()}
    vocab[EOT] = tok.eot_id
    merges = [_last_merge(ranks, b) for b, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(b) > 1]
    atomic_write_json(out / "vocab.json", vocab)
    atomic_write_text(
        out / "merges.txt", "#version: 0.2\n" + "".join(f"{text(a)} {text(b)}\n" for a, b in merges)
    )
    atomic_write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": context,
            "add_prefix_space": False,
            "bos_token": EOT,
            "eos_token": EOT,
            "unk_token": EOT,
        },
    )
    atomic_write_json(out / "special_tokens_map.json", {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT})


def write_trained_tokenizer(tok: TrainedBPETokenizer, out: Path, context: int) -> None:
    atomic_write_text(out / "tokenizer.json", tok.tok.to_str())
    atomic_write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": context,
            "bos_token": EOT,
            "eos_token": EOT,
            "unk_token": EOT,
        },
    )


REMOTE_CODE_FILES = ("configuration_baseforge.py", "modeling_baseforge.py")
REMOTE_AUTO_MAP = {
    "AutoConfig": "configuration_baseforge.BaseforgeConfig",
    "AutoModelForCausalLM": "modeling_baseforge.BaseforgeForCausalLM",
}


def remote_config_dict(config: ModelConfig, eot_id: int) -> dict:
    """config.json of a remote-code export: baseforge's architecture keys under their own names."""
    return dict(
        model_type=hf_map.REMOTE_MODEL_TYPE,
        architectures=["BaseforgeForCausalLM"],
        auto_map=REMOTE_AUTO_MAP,
        **{key: getattr(config, key) for key in hf_map.REMOTE_KEYS + hf_map.REMOTE_KEYS_OPTIONAL},
        layer_norm_eps=1e-5,  # model/gpt.py's make_norm
        rms_norm_eps=1e-6,
        tie_word_embeddings=config.tie_weights,
        use_cache=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        torch_dtype="float32",
    )


def remote_code_tensors(model) -> dict:
    """baseforge's state dict as saved by the remote-code model: same names, no RoPE tables, and a
    tied head stored under both names (equal copies) so no loader ever initialises a missing one."""
    return {
        name: tensor.detach().clone().contiguous()
        for name, tensor in model.state_dict().items()
        if not name.startswith("rope_")
    }


def copy_remote_code(out: Path) -> None:
    from importlib.resources import files

    source = files("baseforge.eval.hf_remote")
    for name in REMOTE_CODE_FILES:
        atomic_write_text(out / name, source.joinpath(name).read_text())


@dataclass(frozen=True)
class Export:
    """An exported folder: where, whether it loads with trust_remote_code, and what the card left out."""

    path: Path
    remote: bool
    notes: tuple[str, ...] = ()


def check_export_out(out: Path, overwrite: bool) -> None:
    """Before any work: an --out that holds anything is replaced (whole) only with --overwrite."""
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"--out {out} is not empty; pass --overwrite to replace it whole, or choose another folder"
        )


def export_run(
    run: Path | str,
    out: Path | str,
    which: str = "latest",
    overwrite: bool = False,
    hub_name: str | None = None,
) -> Export:
    """Write a transformers folder for a run: GPT2LMHeadModel when the architecture is GPT-2's,
    else baseforge's own modeling code loaded with `trust_remote_code=True`.

    The folder is built beside `out` and swapped in, so what was there goes whole (another model's
    remote-code files too) and a failed export leaves it as it was (as data/prepare.py's `_replace`)."""
    out = Path(out)
    check_export_out(out, overwrite)
    model, tok, info = load_model(run, "cpu", which)
    reasons = hf_map.exportable(model.config)
    card_summary, notes = _card_summary(RunDir(run).summary)
    final = out.resolve()  # a symlinked --out: replace what it points to, beside it
    staging = final.with_name(f".{final.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # a killed export's, with this pid again
    with output_dir(staging):
        _write_folder(staging, model, tok, reasons)
        card = model_card(Path(run).resolve().name, info, card_summary, reasons, hub_name)
        atomic_write_text(staging / "README.md", card)
        apply_umask_modes(staging)
        _swap_in(staging, final)
    return Export(out, bool(reasons), notes)


def _write_folder(out: Path, model, tok, reasons: list[str]) -> None:
    """Weights, config.json, generation_config.json and the tokenizer files."""
    config = model.config
    if reasons:
        _save_weights(out, remote_code_tensors(model))
        atomic_write_json(out / "config.json", remote_config_dict(config, tok.eot_id))
        copy_remote_code(out)
    else:
        _save_weights(out, hf_map.to_hf_state_dict(model.state_dict(), config))
        atomic_write_json(out / "config.json", hf_map.hf_config_dict(config, eot_id=tok.eot_id))
    generation = {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id}
    if reasons:
        generation["use_cache"] = False
    atomic_write_json(out / "generation_config.json", generation)
    if isinstance(tok, GPT2Tokenizer):
        write_gpt2_tokenizer(tok, out, config.context)
    else:
        write_trained_tokenizer(tok, out, config.context)


def _card_summary(path: Path) -> tuple[RunSummary | None, tuple[str, ...]]:
    """The run's summary for the card, or None and a note saying why it was left out."""
    if not path.exists() and not path.is_symlink():
        return None, ()
    try:
        return read_summary(path), ()
    except UserError as exc:
        return None, (f"the model card leaves out the run's summary: {exc}",)


def _swap_in(staging: Path, out: Path) -> None:
    """Rename the finished `staging` folder to `out`; an `out` already there is set aside first and
    removed after, so a failure between the renames puts it back."""
    if not out.exists():
        os.rename(staging, out)
        return
    aside = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    swap_dir(staging, out, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _save_weights(out: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def import_gpt2(source: str, out: Path | str) -> Path:
    """OpenAI GPT-2 weights (a transformers folder or Hub name) as a baseforge run with one checkpoint."""
    out = Path(out)
    if RunDir(out).checkpoints.exists():
        raise UserError(f"{out} already holds a run; choose another --out")
    path = Path(source[3:] if source.startswith("hf:") else source)
    if not path.exists():
        path = download_hf(source)
    model, _ = load_hf_folder(path)
    config = RunConfig("imported", model.config, TrainConfig())
    tokenizer: Tokenizer = GPT2Tokenizer()
    write_run_config(out, config)
    save_checkpoint(
        out,
        step=0,
        model=model,
        config=config,
        tokenizer=tokenizer,
        state={"tokens": 0, "source": str(source)},
    )
    return out
