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
