"""Any model to evaluate: a baseforge run or checkpoint, a local HF GPT-2 folder, or a Hub name.

runs/seed                   a run dir (its latest checkpoint; `which` picks best)
runs/seed/checkpoints/step_0001000
hf:PATH                     a `transformers` GPT-2 folder: config.json + model.safetensors
                            (or pytorch_model.bin) and the folder's own tokenizer: tokenizer.json,
                            or vocab.json + merges.txt (never assumed to be GPT-2's)
gpt2, openai-community/gpt2 a Hub model name, downloaded when online
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from baseforge.data.hub import check_reachable, hub_error
from baseforge.errors import UserError
from baseforge.model import GPT
from baseforge.model import hf as hf_map
from baseforge.tokenizer import EOT, Tokenizer
from baseforge.train.checkpoint.format import load_model


@dataclass
class LoadedModel:
    name: str
    model: GPT
    tokenizer: Tokenizer
    source: str  # "baseforge" or "hf"
    info: dict

    @property
    def step(self) -> int | None:
        """The training step of the checkpoint evaluated (None for a transformers folder or Hub model)."""
        state = self.info.get("state")
        step = state.get("step") if isinstance(state, dict) else None
        return step if isinstance(step, int) and not isinstance(step, bool) else None


def load_hf_folder(path: Path) -> tuple[GPT, dict]:
    """A baseforge GPT from a `transformers` GPT-2 folder, and its config.json."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path} has no config.json: not a Hugging Face model folder")
    hf_config = _read_json(config_file)
    remote = hf_config.get("model_type") == hf_map.REMOTE_MODEL_TYPE  # baseforge's own remote-code export
    try:
        config = hf_map.config_from_remote(hf_config) if remote else hf_map.config_from_hf(hf_config)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = str(exc)[:200]
        raise UserError(
            f"{path}: {reason}; baseforge reads GPT-2 models (model_type gpt2) and its own exports only"
        ) from None
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        try:
            state = load_file(str(path / "model.safetensors"))
        except Exception:  # noqa: BLE001 - SafetensorError, OSError: truncated, torn or not safetensors
            raise UserError(
                f"{path / 'model.safetensors'} is not a readable safetensors file (truncated or corrupt)"
            ) from None
    elif (path / "pytorch_model.bin").is_file():
        try:
            state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - UnpicklingError (not tensors only), EOFError, RuntimeError
            raise UserError(
                f"{path / 'pytorch_model.bin'} cannot be read as plain tensors (torch.load weights_only): "
                "it holds other objects or is damaged; baseforge unpickles nothing else. Convert it to "
                "model.safetensors"
            ) from None
        if not isinstance(state, dict):
            raise UserError(f"{path / 'pytorch_model.bin'} holds no state dict of tensors")
    else:
        raise UserError(f"{path} has no model.safetensors or pytorch_model.bin")
    _check_weights(path, config, state)
    model = GPT(config)
    try:
        if remote:  # baseforge's own names; the RoPE tables are rebuilt, not stored
            state = {**{k: v for k, v in model.state_dict().items() if k.startswith("rope_")}, **state}
        model.load_state_dict(state if remote else hf_map.from_hf_state_dict(state, config))
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: the weights do not fit a GPT-2 of that config ({str(exc)[:200]})") from None
    return model, hf_config


def _check_weights(path: Path, config, state: dict) -> None:
    """Before the model is built: a config.json that describes a far larger model than its weights (an
    edited n_embd would allocate it first), and weights that are not finite, are refused."""
    stored = sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
    described = GPT.count_params(config)
    if described > 2 * stored + 1_000_000:  # a tied head is stored once; buffers are rebuilt
        raise UserError(
            f"{path}: config.json describes a model of {described:,} parameters but its weights hold "
            f"{stored:,} values; the config and the weights do not belong together"
        )
    bad = next((k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise UserError(f"{path}: weight {bad} holds NaN or infinite values; the model is damaged")


class FolderTokenizer(Tokenizer):
    """A `transformers` folder's own tokenizer, through HF `tokenizers` (tokenizer.json, or a
    byte-level BPE rebuilt from vocab.json + merges.txt, as GPT-2's folders ship it)."""

    def __init__(self, hf_tokenizer, name: str, eot_id: int | None):
        self.tok = hf_tokenizer
        self.name = name
        self.vocab_size = hf_tokenizer.get_vocab_size()
        self.eot_id = eot_id  # type: ignore[assignment]  # None when the folder names no end-of-text

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


def _read_json(path: Path) -> dict:
    """A folder's JSON object ({} when the file is absent); UserError (one line) when it is not one."""
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON (UTF-8): fix or replace it") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a JSON object: fix or replace it")
    return obj


def _special(value) -> str | None:
    # tokenizer_config.json writes a special token either as a string or as {"content": ...}
    return value.get("content") if isinstance(value, dict) else value


def load_folder_tokenizer(path: Path) -> FolderTokenizer:
    """The tokenizer a `transformers` folder ships; a UserError when it ships none."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    path = Path(path)
    config = _read_json(path / "tokenizer_config.json")
    try:
        if (path / "tokenizer.json").is_file():
            tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tok = HFTokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
        else:
            tok = None
    except Exception:  # noqa: BLE001 - the tokenizers library's errors for a bad or truncated file
        raise UserError(
            f"{path}: its tokenizer files (tokenizer.json, or vocab.json + merges.txt) cannot be read; "
            "replace them with the model's own"
        ) from None
    if tok is None:
        raise UserError(
            f"{path} has no tokenizer (tokenizer.json, or vocab.json + merges.txt): "
            "copy the model's tokenizer files into it"
        )
    if not (path / "tokenizer.json").is_file():  # vocab.json + merges.txt: GPT-2's byte-level BPE
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space")))
        tok.decoder = decoders.ByteLevel()
        specials = {_special(config.get(k)) for k in ("bos_token", "eos_token", "unk_token")} - {None}
        tok.add_special_tokens(
            sorted(t for t in specials if t is not None and tok.token_to_id(t) is not None)
        )
    eos = _special(config.get("eos_token"))
    eot_id = tok.token_to_id(EOT)
    if eot_id is None and eos:
        eot_id = tok.token_to_id(eos)
    if eot_id is None:
        eot_id = _read_json(path / "config.json").get("eos_token_id")
    return FolderTokenizer(tok, f"hf:{path}", eot_id)


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether two tokenizers give the same ids: equal vocabularies (token for token, as bytes)
    and the same encoding of a probe text (which catches a different merge order)."""
    if a.vocab_size != b.vocab_size:
        return False
    probe = "Hello world! It's 2026, über-café\n\n  spaces,\ttabs and 12345 numbers; 'quotes' (x)."
    if a.encode(probe) != b.encode(probe):
        return False
    try:
        return all(a.decode([i]) == b.decode([i]) for i in range(a.vocab_size))
    except Exception:  # noqa: BLE001 - an id one of them cannot decode: not the same
        return False


def download_hf(name: str) -> Path:
    """A Hub model's config and weights, via huggingface_hub (fails fast and clearly offline)."""
    hint = f"nor is there a local path {name}: check the path, or download it elsewhere and pass hf:LOCAL_DIR"
    check_reachable(name, hint=hint)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(name, allow_patterns=["config.json", "*.safetensors", "*.json", "*.txt"])
        )
    except Exception as exc:  # noqa: BLE001 - network and Hub errors come in many types
        raise hub_error(name, exc, hint=hint, repo_type="model") from None


def _hub_name(spec: str) -> bool:
    """Could `spec` be a Hub repo id ("gpt2", "org/name")? Local-looking paths cannot."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", spec) is not None


def load_any(spec: str, device="cpu", which: str = "latest") -> LoadedModel:
    """hf:PATH -> a local HF folder; an existing path -> a baseforge run/checkpoint; else a Hub name."""
    if not spec.startswith("hf:") and not Path(spec).exists():
        if not _hub_name(spec):
            raise UserError(f"{spec} does not exist (nor is it a Hub model name such as gpt2 or org/name)")
        if Path(spec).parent != Path(".") and Path(spec).parent.is_dir():  # runs/x, with runs/ here: a path
            raise UserError(
                f"{spec} does not exist (there is no such run or checkpoint in {Path(spec).parent})"
            )
    if spec.startswith("hf:") or not Path(spec).exists():
        path = Path(spec[3:]) if spec.startswith("hf:") else download_hf(spec)
        if not path.exists():
            raise UserError(f"{path} does not exist")
        model, hf_config = load_hf_folder(path)
        tokenizer = load_folder_tokenizer(path)
        if tokenizer.vocab_size > model.config.known_vocab_size:
            raise UserError(
                f"{path}: its tokenizer has {tokenizer.vocab_size} tokens but the model only "
                f"{model.config.vocab_size}: the folder's tokenizer is not the model's"
            )
        return LoadedModel(spec, model.to(device).eval(), tokenizer, "hf", {"hf_config": hf_config})
    model, tokenizer, info = load_model(spec, device, which)
    return LoadedModel(spec, model, tokenizer, "baseforge", info)
