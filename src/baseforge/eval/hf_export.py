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

import json
from pathlib import Path

from baseforge.config import RunConfig, TrainConfig
from baseforge.errors import UserError
from baseforge.eval.models import download_hf, load_hf_folder
from baseforge.fileio import atomic_path, atomic_write_json, atomic_write_text
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


def model_card(name: str, info: dict, summary: dict | None, remote_reasons: list[str] | None = None) -> str:
    config = info["config"].to_dict()
    state = info["state"]
    remote = bool(remote_reasons)
    kind = "A GPT-2-style" if remote else "A GPT-2-architecture"
    lines = [
        f"# {name}",
        "",
        f"{kind} base language model trained from scratch with "
        "[baseforge](https://github.com/) (no instruction tuning).",
        "",
        f"- preset: `{config['preset']}`; tokenizer: `{state['tokenizer']['name']}`",
        f"- training: {state['step']:,} steps, {state.get('tokens', 0):,} tokens",
    ]
    if state.get("best_val") is not None:
        lines.append(f"- best validation loss: {state['best_val']:.4f}")
    if summary and summary.get("data"):
        lines.append(f"- data: `{summary['data']}`")
    if summary:
        lines.append(
            f"- final train loss {summary.get('final_loss')}, final validation loss "
            f"{summary.get('final_val_loss')}, {summary.get('tokens_per_s', 0):,.0f} tokens/s "
            f"on {summary.get('processes', 1)} x {summary.get('device')}"
        )
    if remote:
        lines += _remote_code_section(remote_reasons or [])
    return "\n".join(lines + _usage_and_config(config, remote))


def _remote_code_section(reasons: list[str]) -> list[str]:
    return [
        "",
        "## Remote code needed",
        "",
        "This model is not a standard GPT-2: it uses " + "; ".join(reasons) + ". "
        "No built-in transformers class computes that combination, so the folder ships its own "
        "`modeling_baseforge.py` and `configuration_baseforge.py` (plain PyTorch + transformers, no "
        "baseforge needed) and loading needs `trust_remote_code=True`. Read those two files before "
        "trusting them: they are all the code that runs. Generation recomputes the prefix at each step "
        "(no KV cache).",
    ]


def _usage_and_config(config: dict, remote: bool) -> list[str]:
    """How to load the folder with transformers, then the run's training config."""
    trust = ", trust_remote_code=True" if remote else ""
    return [
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = AutoModelForCausalLM.from_pretrained(PATH{trust})",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "```",
        "",
        "Training config:",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
    ]


def export_run(run: Path | str, out: Path | str, which: str = "latest") -> Path:
    """Write a transformers folder for a run: GPT2LMHeadModel when the architecture is GPT-2's,
    else baseforge's own modeling code loaded with `trust_remote_code=True`."""
    model, tok, info = load_model(run, "cpu", which)
    config = model.config
    reasons = hf_map.exportable(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    summary_file = RunDir(run).summary
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    atomic_write_text(out / "README.md", model_card(Path(run).resolve().name, info, summary, reasons))
    return out


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
