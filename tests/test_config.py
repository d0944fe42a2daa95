"""The run config: help text for every key, one error type, frozen halves, finite numbers, renamed keys;
layers (preset < TOML < --set) and presets, the default token budget, and the shipped recipes."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from baseforge.config import (
    MODEL_KEYS,
    TRAIN_KEYS,
    RunConfig,
    TrainConfig,
    describe_keys,
    load_run_config,
)
from baseforge.data.batch_plan import BatchPlan
from baseforge.errors import ConfigError, UserError
from baseforge.model.config import ModelConfig, help_text
from baseforge.model.gpt import GPT
from baseforge.overrides import RECIPES, resolve_config, resume_config
from baseforge.presets import PRESETS
from baseforge.train.build import total_steps
from helpers import assert_clean_error, baseforge, sets

HEADINGS = ("Logging, evaluation, checkpoints.", "Numerics and speed.", "Modern options")


def test_every_key_has_its_own_help_text():
    texts = {}
    for cls, keys in ((ModelConfig, MODEL_KEYS), (TrainConfig, TRAIN_KEYS)):
        for name in keys:
            text = help_text(cls, name)
            assert text.strip(), f"{name} has no help text"
            assert not text.startswith(HEADINGS), f"{name} is documented by a section heading: {text!r}"
            texts.setdefault(text, []).append(name)
    shared = {text: names for text, names in texts.items() if len(names) > 1}
    assert not shared, shared
    assert "metrics row" in help_text(TrainConfig, "log_every")


def test_help_config_shows_each_keys_own_text():
    lines = baseforge("train", "--help-config", check=True).stdout.splitlines()
    assert lines[1:] == describe_keys().splitlines()  # after the line that says whose defaults
    for cls, keys in ((ModelConfig, MODEL_KEYS), (TrainConfig, TRAIN_KEYS)):
        for name, f in keys.items():
            entry = [i for i, line in enumerate(lines) if line.startswith(f"  {name} = ")]
            assert len(entry) == 1, name
            assert lines[entry[0]].startswith(f"  {name} = {f.default!r}  (")
            assert lines[entry[0] + 1] == f"      {help_text(cls, name)}", name


def test_both_halves_are_frozen_and_change_only_through_update():
    config = resolve_config("cpu-tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.n_layer = 1
    before = config.train
    config.update({"lr": 1e-3, "n_layer": 3})
    assert (config.train.lr, config.model.n_layer) == (1e-3, 3)
    assert before.lr != 1e-3  # a new object, not a changed one


@pytest.mark.parametrize(
    "build",
    [
        lambda: ModelConfig(n_embd=30, n_head=4),
        lambda: ModelConfig(pos_emb="alibi"),
        lambda: TrainConfig(lr=-1.0),
        lambda: TrainConfig(schedule="linear"),
        lambda: resolve_config("cpu-tiny", None, ["n_head=3"]),
        lambda: resolve_config("cpu-tiny", None, ["lrr=1"]),
        lambda: RunConfig.from_dict({"model": {"dropout": 2.0}}),
    ],
)
def test_one_error_type_for_an_invalid_config(build):
    with pytest.raises(ConfigError, match="config") as info:
        build()
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["n_layer", "context", "n_head", "vocab_size"])
def test_model_sizes_are_bounded(key):
    """A config read back from disk may hold any number: 2**63 layers must be refused, not built (even on
    the meta device, a model of that many blocks is a loop that never ends)."""
    with pytest.raises(ConfigError, match=f"{key} must be between 1 and"):
        ModelConfig(**{key: 2**63})
    with pytest.raises(ConfigError, match=f"{key} must be between 1 and"):
        ModelConfig(**{key: 0})


def test_counting_parameters_allocates_nothing():
    """count_params builds on the meta device: rotary tables too, not a real (context x head_dim) table."""
    config = ModelConfig(vocab_size=64, context=1 << 20, n_embd=1 << 16, n_head=1, n_layer=1, pos_emb="rope")
    assert GPT.count_params(config) > 1 << 32  # built and counted, nothing of its size allocated


@pytest.mark.parametrize(
    "item", ["lr=inf", "lr=nan", "weight_decay=nan", "dist_timeout_s=inf", "rope_base=-inf"]
)
def test_numbers_must_be_finite(item):
    with pytest.raises(ConfigError, match="finite"):
        resolve_config("cpu-tiny", None, [item])


def test_set_lr_inf_is_refused_in_one_line(tmp_path):
    result = baseforge(
        "train", "--data", tmp_path / "data", "--out", tmp_path / "run", *sets("lr=inf"), cwd=tmp_path
    )
    assert_clean_error(result, "lr", "finite")
    assert not (tmp_path / "run").exists()


def test_grad_accum_beside_global_batch_is_refused_not_dropped(tmp_path):
    """It was dropped: global_batch=16 grad_accum=3 trained with accumulation 2 and saved grad_accum 3."""
    result = baseforge(
        "train",
        "--data",
        tmp_path / "data",
        "--out",
        tmp_path / "run",
        *sets("global_batch=16", "grad_accum=3"),
        cwd=tmp_path,
    )
    assert_clean_error(result, "grad_accum = 3", "global_batch = 16", "micro_batch")
    assert not (tmp_path / "run").exists()
    # Either alone still lays out the batch; every preset still resolves.
    accum = resolve_config("cpu-tiny", None, ["global_batch=0", "grad_accum=3"]).train
    assert BatchPlan.from_config(accum, 64).layout.grad_accum == 3
    gb = resolve_config("cpu-tiny", None, ["global_batch=16", "micro_batch=4"]).train
    assert BatchPlan.from_config(gb, 64).layout.grad_accum == 4
    assert all(resolve_config(name).train for name in PRESETS)


def test_a_toml_inf_is_refused(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("lr = inf\n")
    with pytest.raises(ConfigError, match="lr = inf must be a finite number"):
        resolve_config("cpu-tiny", toml)


def test_hellaswag_every_is_an_alias_of_evaluators_every(tmp_path):
    assert resolve_config("cpu-tiny", None, ["hellaswag_every=7"]).train.evaluators_every == 7
    toml = tmp_path / "old.toml"
    toml.write_text("[train]\nhellaswag_every = 5\n")
    assert resolve_config("cpu-tiny", toml).train.evaluators_every == 5
    # An older run dir's config.json still loads (for --resume).
    saved = resolve_config("cpu-tiny").to_dict()
    saved["train"]["hellaswag_every"] = saved["train"].pop("evaluators_every") or 3
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert load_run_config(tmp_path).train.evaluators_every == 3
    with pytest.raises(ConfigError, match="old name"):
        resolve_config("cpu-tiny", None, ["hellaswag_every=7", "evaluators_every=7"])
    result = baseforge(
        "train", "--data", tmp_path / "none", "--dry-run", *sets("hellaswag_every=2"), cwd=tmp_path
    )
    assert "hellaswag_every is now evaluators_every" in result.stderr
    assert "deprecated" in result.stderr


# --- layers, presets, the token budget, the shipped recipes ------------------------------------------
def test_config_layers_and_presets(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "cpu-tiny"\nlr = 5e-4\n[model]\nn_layer = 3\n[train]\nmax_steps = 7\n')
    config = resolve_config(None, toml, ["max_steps=9", "compile=true"])
    assert config.preset == "cpu-tiny"
    assert config.train.lr == 5e-4 and config.model.n_layer == 3
    assert config.train.max_steps == 9 and config.train.compile is True
    assert (
        PRESETS["gpt2-small-seed"].train.lr == 4e-4 and PRESETS["gpt2-small-seed"].train.weight_decay == 0.1
    )
    seed = resolve_config("gpt2-small-seed").model
    assert (seed.vocab_size, seed.context, seed.n_embd, seed.dropout, seed.qkv_bias, seed.tie_weights) == (
        50257,
        1024,
        768,
        0.1,
        False,
        False,
    )
    with pytest.raises(UserError, match="not valid TOML"):
        bad = tmp_path / "bad.toml"
        bad.write_text("lr = = 3")
        resolve_config(None, bad)
    with pytest.raises(UserError, match="divisible"):
        resolve_config("cpu-tiny", None, ["n_head=3"])


def test_token_budget_default_is_20_tokens_per_parameter():
    cfg = resolve_config("gpt2-small-seed").train
    steps = total_steps(cfg, 163_009_536, BatchPlan.from_config(cfg, 1024))
    assert steps == math.ceil(20 * 163_009_536 / (32 * 1024))


def test_shipped_recipes_resolve(tmp_path, monkeypatch):
    recipes = sorted(RECIPES.glob("*.toml"))
    assert recipes
    for path in recipes:
        assert resolve_config(None, path).preset in PRESETS, path
    # By name, and by the path a clone would have, from a folder without the files.
    monkeypatch.chdir(tmp_path)
    assert resolve_config(None, "seed-3090").preset == resolve_config(None, "recipes/seed-3090.toml").preset
    with pytest.raises(UserError, match="shipped recipes: seed-3090"):
        resolve_config(None, "nope.toml")


@pytest.mark.parametrize("preset", ["cpu-small-modern", "gpt2-small-modern", "gpt2-speedrun", "cpu-tiny"])
def test_the_command_a_run_prints_resumes_it_when_values_came_from_the_data(preset):
    """The saved config holds the vocabulary and document token resolved from the data; the same
    command with --resume leaves them open. Compared as resolved, nothing changes (it was refused:
    'doc_token 0 -> None' for every document-masked preset)."""
    saved = resolve_config(preset, None, ["max_steps=10"]).with_vocab(4096, 0)
    assert resume_config(saved, preset, None, ["max_steps=10"]) is saved
    with pytest.raises(UserError, match="n_layer"):
        resume_config(saved, preset, None, ["n_layer=3"])
