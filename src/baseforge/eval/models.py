"""Any model to evaluate: a baseforge run or checkpoint, a local HF GPT-2 folder, or a Hub name.

runs/seed                   a run dir (its latest checkpoint; `which` picks best)
runs/seed/checkpoints/step_0001000
hf:PATH                     a `transformers` GPT-2 folder: config.json + model.safetensors
                            (or pytorch_model.bin); tokenizer: GPT-2's BPE
gpt2, openai-community/gpt2 a Hub model name, downloaded when online
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from baseforge.errors import UserError
from baseforge.model import GPT
from baseforge.model import hf as hf_map
from baseforge.tokenizer import GPT2Tokenizer, Tokenizer


@dataclass
class LoadedModel:
    name: str
    model: GPT
    tokenizer: Tokenizer
    source: str  # "baseforge" or "hf"
    info: dict


def load_hf_folder(path: Path) -> tuple[GPT, dict]:
    """A baseforge GPT from a `transformers` GPT-2 folder, and its config.json."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path} has no config.json: not a Hugging Face model folder")
    hf_config = json.loads(config_file.read_text())
    try:
        config = hf_map.config_from_hf(hf_config)
    except (ValueError, KeyError) as exc:
        raise UserError(f"{path}: {exc}; baseforge reads GPT-2 models (model_type gpt2) only") from None
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(f"{path} has no model.safetensors or pytorch_model.bin")
    model = GPT(config)
    try:
        model.load_state_dict(hf_map.from_hf_state_dict(state, config))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: the weights do not fit a GPT-2 of that config ({str(exc)[:200]})") from None
    return model, hf_config


def download_hf(name: str) -> Path:
    """A Hub model's config and weights, via huggingface_hub (fails fast and clearly offline)."""
    from baseforge.data.hub import check_reachable

    check_reachable(name, hint="download it elsewhere and pass hf:LOCAL_DIR")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(name, allow_patterns=["config.json", "*.safetensors", "*.json", "*.txt"])
        )
    except Exception as exc:  # noqa: BLE001
        raise UserError(
            f"cannot download {name} from the Hugging Face Hub ({type(exc).__name__}); "
            f"download it elsewhere and pass hf:LOCAL_DIR"
        ) from None


def load_any(spec: str, device="cpu", which: str = "latest") -> LoadedModel:
    """hf:PATH -> a local HF folder; an existing path -> a baseforge run/checkpoint; else a Hub name."""
    if spec.startswith("hf:") or not Path(spec).exists():
        path = Path(spec[3:]) if spec.startswith("hf:") else download_hf(spec)
        if not path.exists():
            raise UserError(f"{path} does not exist")
        model, hf_config = load_hf_folder(path)
        return LoadedModel(spec, model.to(device).eval(), GPT2Tokenizer(), "hf", {"hf_config": hf_config})
    from baseforge.train.checkpoint import load_model

    model, tokenizer, info = load_model(spec, device, which)
    return LoadedModel(spec, model, tokenizer, "baseforge", info)
