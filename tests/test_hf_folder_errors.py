"""A bad `hf:` folder is one line (UserError), never a traceback: config.json that is not JSON or
not an object, a truncated model.safetensors, a pickle-only pytorch_model.bin, a bad tokenizer."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

from baseforge.errors import UserError
from baseforge.eval.models import load_folder_tokenizer, load_hf_folder
from baseforge.model import ModelConfig
from baseforge.model import hf as hf_map


def gpt2_config() -> dict:
    return hf_map.hf_config_dict(ModelConfig(n_layer=1, n_embd=32, n_head=2, context=16, vocab_size=64))


@pytest.mark.parametrize("text", ["{not json", "[1, 2, 3]", "\udcff"])
def test_config_json_not_an_object(tmp_path, text):
    (tmp_path / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(UserError, match="config.json"):
        load_hf_folder(tmp_path)


def test_truncated_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(gpt2_config()))
    save_file({"w": torch.zeros(100)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="model.safetensors"):
        load_hf_folder(tmp_path)


def test_pickle_only_weights_are_refused_not_unpickled(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(gpt2_config()))
    torch.save({"w": argparse.Namespace(a=1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="pytorch_model.bin"):
        load_hf_folder(tmp_path)


def test_bad_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{truncated")
    with pytest.raises(UserError, match="tokenizer"):
        load_folder_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer_config.json").write_text("[]")
    with pytest.raises(UserError, match="tokenizer_config.json"):
        load_folder_tokenizer(tmp_path)


def _exported(tmp_path):
    """A small real GPT-2 folder: baseforge weights in transformers' names."""
    from baseforge.model import GPT

    config = ModelConfig(n_layer=1, n_embd=32, n_head=2, context=16, vocab_size=64)
    state = hf_map.to_hf_state_dict(GPT(config).state_dict(), config)
    (tmp_path / "config.json").write_text(json.dumps(hf_map.hf_config_dict(config)))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    return state


def test_a_config_far_larger_than_its_weights_is_refused_before_allocating(tmp_path):
    _exported(tmp_path)
    assert load_hf_folder(tmp_path)[0] is not None  # the folder as exported loads
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_embd": 65536, "n_layer": 48}))
    with pytest.raises(UserError, match="do not belong together"):
        load_hf_folder(tmp_path)


def test_weights_that_are_not_finite_are_refused(tmp_path):
    state = _exported(tmp_path)
    name = next(k for k in state if k.endswith("attn.c_attn.weight"))
    state[name] = state[name].clone()
    state[name][0, 0] = float("nan")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="NaN"):
        load_hf_folder(tmp_path)
