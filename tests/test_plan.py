"""`baseforge plan`: the memory model against measured tensors, the fit search, the verdict and the CLI."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from baseforge.cli import main
from baseforge.errors import UserError
from baseforge.hardware import find_gpu
from baseforge.model import loss as fused_loss
from baseforge.model.gpt import GPT
from baseforge.plan.estimate import make_plan
from baseforge.plan.memory import (
    Setup,
    activation_bytes,
    largest_micro_batch,
    memory,
    model_shape,
    shape_of,
    state_bytes,
)
from baseforge.presets import preset_config
from baseforge.train.average import WeightAverage
from baseforge.train.optim import build_optimizers
from baseforge.train.precision import cpu_has_bf16

VOCAB = 512  # small, so each test runs in seconds; the head terms of the model still count


class PeakTracker(TorchDispatchMode):
    """Live bytes of every tensor storage created while active, and their peak.

    Each op's outputs are recorded by storage; a weakref finalizer subtracts a storage when
    PyTorch frees it (storages keep their Python object while any tensor uses them), so saved
    activations, transients and in-place reuse are all counted as the allocator would see them,
    deterministically (no sampling of process memory)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def test_tracker_counts_saved_tensors_and_frees():
    x = torch.randn(256, 256, requires_grad=True)
    with PeakTracker() as m:
        y = (x * torch.randn(256, 256)).sin()  # mul saves the random factor, sin saves its input
        assert m.current == 3 * 256 * 256 * 4
        y.sum().backward()
        del y
    assert m.current == 256 * 256 * 4  # only x.grad remains


def _trained_model(preset: str, precision: str):
    run = preset_config(preset)
    torch.manual_seed(0)
    model = GPT(run.with_vocab(VOCAB, eot_id=0).model).train()  # round 2 masks by document
    opt = build_optimizers(model, run.train, torch.device("cpu"))
    return model, opt


def _step(model, batch: int, precision: str) -> torch.Tensor:
    ctx = model.config.context
    x = torch.randint(0, VOCAB, (batch, ctx), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        _, loss = model(x, x.roll(-1, 1))
    loss.backward()


@pytest.mark.parametrize("preset", ["cpu-tiny", "cpu-small", "cpu-small-modern"])
def test_state_estimate_equals_measured_tensor_sizes(preset):
    model, opt = _trained_model(preset, "fp32")
    _step(model, 1, "fp32")
    opt.step()
    params = sum(p.nbytes for p in model.parameters())
    grads = sum(p.grad.nbytes for p in model.parameters())
    state = sum(
        v.nbytes
        for o in opt.optimizers.values()
        for s in o.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )
    assert state_bytes(model_shape(preset, VOCAB)) == (params, grads, state)


PRECISION = "bf16" if cpu_has_bf16() else "fp32"


@pytest.mark.parametrize(
    "preset,batch", [("cpu-tiny", 8), ("cpu-small", 2), ("cpu-small", 6), ("cpu-small-modern", 4)]
)
def test_activation_estimate_within_15_percent_of_measured_peak(preset, batch):
    model, _ = _trained_model(preset, PRECISION)
    _step(model, batch, PRECISION)  # gradients now exist: the peak below is activations only
    fused_loss._workspaces.clear()  # the loss's logits buffer is allocated per step, as on a GPU
    with PeakTracker() as m:
        _step(model, batch, PRECISION)
    estimate = activation_bytes(model_shape(preset, VOCAB), batch, PRECISION, "cpu")
    assert abs(estimate / m.peak - 1) < 0.15, (estimate, m.peak)


def test_fsdp_shards_state_and_checkpointing_shrinks_activations():
    s = model_shape("gpt2-medium")
    whole, sharded = state_bytes(s), state_bytes(s, 8)
    for a, b in zip(whole, sharded):
        assert a / 8 <= b < a / 8 * 1.01  # padded shards: a little over an eighth
    assert (
        activation_bytes(s, 8, "bf16", "cuda", checkpoint=True) < activation_bytes(s, 8, "bf16", "cuda") / 3
    )


def test_largest_micro_batch_is_the_boundary():
    s = model_shape("gpt2-medium")
    setup = Setup("gpt2-medium", find_gpu("rtx-4090"), precision="bf16")
    usable = 20 * 1024**3
    b = largest_micro_batch(s, setup, usable)
    assert b >= 1
    assert memory(s, setup, b).total <= usable < memory(s, setup, b + 1).total


def test_gpt2_xl_on_a_3090_with_ddp_does_not_fit_and_says_why(capsys):
    assert main(["plan", "--preset", "gpt2-xl", "--gpu", "rtx-3090", "--parallel", "ddp"]) == 1
    verdict = capsys.readouterr().err.strip().splitlines()[-1].removeprefix("baseforge plan: error: ")
    assert verdict.startswith("does not fit: weights + gradients + optimizer state alone")
    assert "16 bytes per parameter" in verdict and "--parallel fsdp" in verdict


def test_gpt2_xl_on_eight_3090s_with_fsdp_fits(capsys):
    argv = ["plan", "--preset", "gpt2-xl", "--gpu", "rtx-3090", "--parallel", "fsdp", "--gpus", "8"]
    assert main(argv + ["--price", "0.5", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["max_micro_batch"] >= 1 and plan["cost_usd"] > 0
    assert plan["verdict"].startswith(f"fits with micro-batch {plan['max_micro_batch']}")


def test_a_micro_batch_too_large_does_not_fit():
    plan = make_plan(Setup("gpt2-124m", find_gpu("rtx-3090"), micro_batch=512))
    assert not plan.fits and f"at most {plan.max_micro_batch} fits" in plan.verdict


def test_time_and_cost_follow_from_peak_and_mfu():
    plan = make_plan(Setup("gpt2-124m", find_gpu("h100-sxm"), gpus=2), tokens=10**9, price=3.0, mfu=0.5)
    expected = 0.5 * 989e12 * 2 / plan.flops_per_token
    assert plan.tokens_per_s == pytest.approx(expected)
    assert plan.hours == pytest.approx(1e9 / expected / 3600)
    assert plan.cost_usd == pytest.approx(plan.hours * 2 * 3.0)


def test_mfu_from_a_run(tmp_path, capsys):
    rows = [
        {"step": 0, "tokens": 0, "mfu": None},
        {"step": 10, "tokens": 640, "mfu": 0.9},
        {"step": 20, "tokens": 1280, "mfu": 0.3},
        {"step": 30, "tokens": 1920, "mfu": 0.35},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plan", "--preset", "gpt2-124m", "--from-run", str(tmp_path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["mfu"] == pytest.approx(0.325)  # median without the first (warm-up) row
    assert plan["mfu_source"].startswith("median measured")


def test_bad_arguments_are_user_errors(capsys):
    assert main(["plan", "--preset", "gpt2-124m", "--gpu", "rtx-9999"]) == 1
    assert "unknown GPU" in capsys.readouterr().err
    with pytest.raises(UserError, match="--gpus"):
        make_plan(Setup("gpt2-124m", find_gpu("a100"), gpus=0))
    with pytest.raises(UserError, match="has no bf16"):  # was a TypeError: the V100's bf16 peak is None
        make_plan(Setup("gpt2-124m", find_gpu("v100-sxm2-16gb"), precision="bf16"))


def test_does_not_fit_exits_non_zero_with_no_time_or_cost():
    from helpers import assert_clean_error, baseforge

    argv = ["plan", "--preset", "gpt2-xl", "--gpu", "rtx-3090", "--price", "0.5"]
    result = baseforge(*argv)
    assert_clean_error(result, "does not fit")
    assert "memory per GPU" in result.stdout and "31.3 GiB" in result.stdout  # what rules it out
    assert " h" not in result.stdout.replace("GiB", "") and "$" not in result.stdout
    assert "3,132" not in result.stdout + result.stderr
    as_json = baseforge(*argv, "--json")
    assert_clean_error(as_json, "does not fit")
    plan = json.loads(as_json.stdout)
    assert plan["fits"] is False and plan["hours"] is None and plan["cost_usd"] is None


def test_averaged_weights_are_counted_as_the_tensors_they_are():
    """ema_decay keeps an fp32 copy of every weight: the state estimate grows by what WeightAverage holds."""
    run = preset_config("cpu-small-modern").with_vocab(VOCAB)
    plain = state_bytes(shape_of(run))
    run.update({"ema_decay": 0.9})
    averaged = state_bytes(shape_of(run))
    model, _ = _trained_model("cpu-small-modern", "fp32")
    average = WeightAverage(0.9, 0)
    average.update(model, 0)
    held = sum(w.nbytes for w in average.weights or [])
    assert averaged == (plain[0], plain[1], plain[2] + held)
