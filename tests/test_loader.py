"""Small parts of the trainer, each against a hand-computed answer."""

from __future__ import annotations

import math

import pytest

from baseforge.config import resolve_config
from baseforge.data.loader import BatchLayout, TokenWindows, TrainStream, eval_batches
from baseforge.errors import UserError
from baseforge.presets import PRESETS
from baseforge.train.autobatch import largest_fitting
from baseforge.train.mfu import table_peak
from baseforge.train.schedule import lr_multiplier


def test_cosine_schedule_endpoints():
    total, warm = 100, 10
    assert lr_multiplier(0, total, "cosine", warm) == pytest.approx(0.1)
    assert lr_multiplier(9, total, "cosine", warm) == pytest.approx(1.0)
    assert lr_multiplier(10, total, "cosine", warm) == pytest.approx(1.0)
    assert lr_multiplier(99, total, "cosine", warm, min_lr_ratio=0.1) == pytest.approx(0.1)
    mid = 10 + (99 - 10) / 2
    assert lr_multiplier(int(mid), total, "cosine", warm) == pytest.approx(0.55, abs=0.02)


def test_wsd_schedule_is_flat_then_linear():
    values = [lr_multiplier(s, 100, "wsd", 0, min_lr_ratio=0.0, decay_fraction=0.2) for s in range(100)]
    assert values[:80] == [1.0] * 80
    assert values[99] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(values[80:], values[81:]))
    assert lr_multiplier(50, 100, "constant", 0) == 1.0


def test_largest_fitting_binary_search():
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 12

    assert largest_fitting(48, fits) == 12  # divisors of 48: ... 8, 12, 16 ...
    assert len(tried) <= 5
    with pytest.raises(UserError, match="out of memory even at micro_batch 1"):
        largest_fitting(8, lambda b: False)


def test_batch_layout_keeps_global_batch_across_world_sizes():
    def resolve(global_batch, micro, accum, world):
        layout = BatchLayout.resolve(
            global_batch=global_batch, micro_batch=micro, grad_accum=accum, world=world, rank=0
        )
        return layout.global_batch, layout.micro_batch, layout.grad_accum

    assert resolve(32, 4, 1, 1) == (32, 4, 8)
    assert resolve(32, 4, 1, 2) == (32, 4, 4)
    assert resolve(0, 4, 3, 2) == (24, 4, 3)
    with pytest.raises(UserError, match="not divisible"):
        resolve(32, 5, 1, 1)


def test_batch_layout_from_config_is_the_one_constructor():
    from dataclasses import replace

    cfg = resolve_config("cpu-tiny", None, ["micro_batch=2", "global_batch=8"]).train
    assert BatchLayout.from_config(cfg) == BatchLayout(2, 4, 1, 0)
    assert BatchLayout.from_config(cfg, world=2, rank=1) == BatchLayout(2, 2, 2, 1)
    auto = replace(cfg, micro_batch="auto")
    assert BatchLayout.from_config(auto).global_batch == 8  # what --dry-run and finetune count
    assert BatchLayout.from_config(auto, world=2, micro_batch=2) == BatchLayout(2, 2, 2, 0)  # the search's
    assert (
        BatchLayout.from_config(
            replace(cfg, global_batch=0, micro_batch=3, grad_accum=2), world=2
        ).global_batch
        == 12
    )
    with pytest.raises(UserError, match="decided by the search"):
        BatchLayout.from_config(replace(auto, global_batch=0))
    with pytest.raises(UserError, match="not divisible by micro_batch 3"):
        BatchLayout.from_config(replace(cfg, micro_batch=3))


def test_stream_is_a_permutation_and_ranks_partition_the_global_batch(shakespeare_dir):
    windows = TokenWindows(shakespeare_dir, "train", 64)
    stream = TrainStream(windows, seed=7)
    first_epoch = stream.indices(0, windows.n)
    assert sorted(first_epoch) == list(range(windows.n))  # every window exactly once per epoch
    assert stream.indices(0, 50) == TrainStream(windows, seed=7).indices(0, 50)  # depends only on (seed, j)
    assert stream.indices(0, 50) != TrainStream(windows, seed=8).indices(0, 50)

    # 2 ranks x micro 2 x accum 2 cover the same sequences as 1 rank x micro 2 x accum 4.
    def rows(world, accum):
        out = []
        for m in range(accum):
            for r in range(world):
                layout = BatchLayout(micro_batch=2, grad_accum=accum, world=world, rank=r)
                out += stream.micro_batch(3, m, layout)[0].tolist()
        return sorted(out)

    assert rows(2, 2) == rows(1, 4)
    x, y = stream.batch(0, 2)
    assert (x[:, 1:] == y[:, :-1]).all()  # targets are inputs shifted by one


def test_eval_slice_is_fixed(shakespeare_dir):
    windows = TokenWindows(shakespeare_dir, "val", 64)
    a = [x.tolist() for x, _ in eval_batches(windows, 640, 3)]
    b = [x.tolist() for x, _ in eval_batches(windows, 640, 5)]
    assert sum(a, []) == sum(b, []) and len(sum(a, [])) == 10
    split = [x.tolist() for r in range(2) for x, _ in eval_batches(windows, 640, 3, rank=r, world=2)]
    assert sorted(sum(split, [])) == sorted(sum(a, []))


def test_loader_rejects_data_shorter_than_a_window(tmp_path):
    from conftest import build_data_dir

    data = build_data_dir(tmp_path / "d", "a b c\n\n" * 40 + "hello world " * 50, vocab=260)
    with pytest.raises(UserError, match="fewer than one window"):
        TokenWindows(data, "val", 4096)


def test_mfu_peak_table():
    assert table_peak("NVIDIA GeForce RTX 3090", "bf16") == 71e12
    assert table_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert table_peak("NVIDIA H100 PCIe", "bf16") == 756e12
    assert table_peak("Some Future GPU", "bf16") is None


def test_config_layers_and_presets(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "cpu-tiny"\nlr = 5e-4\n[model]\nn_layer = 3\n[train]\nmax_steps = 7\n')
    config = resolve_config(None, toml, ["max_steps=9", "compile=true"])
    assert config.preset == "cpu-tiny"
    assert config.train.lr == 5e-4 and config.model.n_layer == 3
    assert config.train.max_steps == 9 and config.train.compile is True
    assert (
        PRESETS["gpt2-small-seed"].train["lr"] == 4e-4
        and PRESETS["gpt2-small-seed"].train["weight_decay"] == 0.1
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
    from baseforge.train.loop import total_steps

    cfg = resolve_config("gpt2-small-seed").train
    steps = total_steps(cfg, 163_009_536, 32 * 1024)
    assert steps == math.ceil(20 * 163_009_536 / (32 * 1024))


def test_shipped_recipes_resolve(tmp_path, monkeypatch):
    from baseforge.config import RECIPES

    recipes = sorted(RECIPES.glob("*.toml"))
    assert recipes
    for path in recipes:
        assert resolve_config(None, path).preset in PRESETS, path
    # By name, and by the path a clone would have, from a folder without the files.
    monkeypatch.chdir(tmp_path)
    assert resolve_config(None, "seed-3090").preset == resolve_config(None, "recipes/seed-3090.toml").preset
    with pytest.raises(UserError, match="shipped recipes: seed-3090"):
        resolve_config(None, "nope.toml")


def test_the_process_group_backend_follows_the_runs_device_not_the_host(monkeypatch):
    import torch

    from baseforge.train.distributed import backend_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a host with a GPU
    assert backend_for("cpu") == "gloo"  # a CPU run there must not hand CPU tensors to NCCL
    assert backend_for("auto") == "nccl" and backend_for("cuda:1") == "nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend_for("auto") == "gloo"
