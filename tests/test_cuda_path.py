"""The CUDA path, proven as far as a CPU can: the attention rule's tensors on the model's device,
FlexAttention compiled for training shapes only (a bounded, counted number of times, with a fallback
that still trains), `compile = auto` resolved per device, and one memory unit (GiB, named).

FlexAttention has no backward on the CPU, so the counting tests route the flex path through a stand-in
kernel (SDPA under the block mask's own rule) compiled by Dynamo with a counting backend: Dynamo's
guards and recompiles are what is counted, as they would be for the real kernel on CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

from baseforge.model import GPT, ModelConfig
from baseforge.model import attention as attn
from baseforge.overrides import resolve_config
from baseforge.train import autobatch, device, metrics, step
from baseforge.train.device import Runtime, resolve_compile, warm_up_shapes
from baseforge.train.loop import Trainer
from baseforge.train.validate import Validator
from helpers import TINY

MASKED = [*TINY, "pos_emb=rope", "attn_doc_mask=true", "dropout=0", "attn_window=32"]


# --- item 1: every tensor of the rule on the model's device, made in one place -------------------------


def test_every_window_tensor_comes_from_window_tensor_on_the_runtime_device(
    shakespeare_dir, tmp_path, monkeypatch
):
    """The search's trials, the training steps and the compile warm-up all give the model a window
    warmup's window made by `attention.window_tensor` for the run's device (a CPU scalar reaching a
    CUDA flex kernel was gpt2-speedrun's first-step crash)."""
    made: dict[int, torch.device] = {}

    def spy(size, dev):
        t = attn.window_tensor(size, dev)
        made[id(t)] = torch.device(dev)
        return t

    for module in (step, device, autobatch):
        monkeypatch.setattr(module, "window_tensor", spy)
    received = []
    forward = GPT.forward

    def recording(self, idx, targets=None, cache=None, window=None):
        if isinstance(window, torch.Tensor):
            received.append((window, next(self.parameters()).device))
        return forward(self, idx, targets, cache, window)

    monkeypatch.setattr(GPT, "forward", recording)
    keys = [*MASKED, "attn_window_warmup=1.0", "micro_batch=auto", "global_batch=8", "max_steps=4"]
    trainer = Trainer(resolve_config("cpu-tiny", None, keys), shakespeare_dir, tmp_path / "run", log=print)
    trainer.setup()
    searched = len(received)
    assert searched >= 2, "the search's trials ran without the window warmup's window"
    built = trainer.built
    for i in range(2):
        built.train_step(i, trainer.data)
    model = built.views.plain
    warm_up_shapes(
        model, data=trainer.data, batches=built.batches, runtime=built.runtime, eval_tokens=128, window=64
    )
    assert len(received) >= searched + 2 + 1
    for window, model_device in received:
        assert id(window) in made, "a window tensor made elsewhere than attention.window_tensor"
        assert window.device == model_device == made[id(window)] == built.runtime.device
        assert window.dtype == torch.int64 and window.dim() == 0


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "doc, window",
    [(True, 0), (False, 16), (True, 16), (True, "tensor")],
    ids=["docs", "window", "both", "warmup"],
)
def test_the_rule_of_a_forward_lives_on_the_model_device(doc, window, training):
    """On the meta device (a device that is not the CPU, where a CPU tensor would show): documents,
    windows and the mask of every masked configuration, in training and in evaluation / sampling."""
    config = ModelConfig(n_layer=1, n_embd=32, n_head=2, context=64, vocab_size=64, pos_emb="rope",
                         attn_doc_mask=doc, doc_token=0, dropout=0.0)  # fmt: skip
    with torch.device("meta"):
        model = GPT(config).train(training)
        ids = torch.zeros(2, 64, dtype=torch.long)
    w = attn.window_tensor(16, "meta") if window == "tensor" else window
    with torch.set_grad_enabled(training):
        vis = model.visibility(ids, 0, w)
        cached = model.visibility(ids, 60, w)  # sampling with a cache: the last 4 positions are new
    for rule in (vis, cached):
        for t in (rule.doc, rule.window, rule.mask):
            assert not isinstance(t, torch.Tensor) or t.device.type == "meta"


# --- item 2: FlexAttention for training forwards, compiled a known number of times ------------------


def stand_in(q, k, v, block_mask):
    """FlexAttention's result on the CPU, from the block mask's own rule (flex has no CPU backward)."""
    B, H, T, _ = q.shape
    b = torch.arange(B)[:, None, None, None]
    qi, ki = torch.arange(T)[None, None, :, None], torch.arange(k.size(-2))[None, None, None, :]
    allowed = block_mask.mask_mod(b, torch.zeros_like(b), qi, ki)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


@pytest.fixture
def flex_on_cpu(monkeypatch):
    """Training forwards take the flex path on the CPU, through the stand-in and a counting backend."""
    counter = CompileCounter()
    kernel = attn.FlexKernel(kernel=stand_in, backend=counter)
    monkeypatch.setattr(attn, "FLEX", kernel)
    monkeypatch.setattr(
        attn, "use_flex", lambda device_type, dropout, training=True: dropout == 0 and training
    )
    torch._dynamo.reset()
    yield kernel, counter
    torch._dynamo.reset()


def test_flex_compiles_once_per_training_shape_and_never_for_evaluation(
    shakespeare_dir, tmp_path, flex_on_cpu
):
    """Through the search, training (with a window warmup, then without), evaluation, sampling and
    HellaSwag-style scoring: Dynamo compiles flex exactly as often as FlexKernel counts, once per
    training shape, and evaluation, sampling and scoring add none."""
    from baseforge.eval.scoring import score_tokens
    from baseforge.generate import generate

    kernel, counter = flex_on_cpu
    keys = [*MASKED, "attn_window_warmup=0.5", "micro_batch=auto", "global_batch=8", "max_steps=4"]
    trainer = Trainer(resolve_config("cpu-tiny", None, keys), shakespeare_dir, tmp_path / "run", log=print)
    trainer.setup()
    built = trainer.built
    for i in range(4):  # steps 0-1 under the warmup's window (a tensor), 2-3 at the model's own (an int)
        built.train_step(i, trainer.data)
    trained = counter.frame_count
    assert trained == kernel.compiles == len(kernel.keys)
    shapes = {(key[0], key[4]) for key in kernel.keys}
    micro = built.layout.micro_batch
    assert (tuple([micro, 2, 64, 32]), "tensor") in shapes and (tuple([micro, 2, 64, 32]), 32) in shapes
    Validator(built).loss()
    model = built.views.plain.eval()
    generate(model, [1, 2, 3], max_new_tokens=8, temperature=1.0, seed=0)
    score_tokens(model, [([1, 2, 3, 4], [5, 6]), ([7, 8], [9])])
    assert counter.frame_count == trained, "evaluation, sampling or scoring compiled flex"
    assert kernel.compiles <= attn.FLEX_COMPILE_LIMIT and not kernel.broken


def masked_model(T: int = 64) -> tuple[GPT, torch.Tensor]:
    config = ModelConfig(n_layer=1, n_embd=32, n_head=2, context=T, vocab_size=64, pos_emb="rope",
                         attn_doc_mask=True, doc_token=0, dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, T))
    return GPT(config), ids


def test_a_flex_compile_that_fails_falls_back_to_sdpa_with_the_mask(monkeypatch, capsys):
    def broken(gm, example_inputs):
        raise RuntimeError("no Triton here\nsecond line")

    kernel = attn.FlexKernel(kernel=stand_in, backend=broken)
    monkeypatch.setattr(attn, "FLEX", kernel)
    model, ids = masked_model()
    _, want = model(ids, ids)  # the CPU's own kernel (banded or SDPA with the mask)
    monkeypatch.setattr(attn, "use_flex", lambda device_type, dropout, training=True: training)
    torch._dynamo.reset()
    for _ in range(2):
        _, got = model(ids, ids)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    lines = [line for line in capsys.readouterr().err.splitlines() if "FlexAttention" in line]
    assert len(lines) == 1 and "failed to compile (RuntimeError: no Triton here)" in lines[0], lines
    assert kernel.broken and kernel.compiles == 0


def test_past_the_limit_flex_steps_aside_for_new_shapes(monkeypatch, capsys):
    kernel = attn.FlexKernel(kernel=stand_in, backend=CompileCounter(), limit=1)
    monkeypatch.setattr(attn, "FLEX", kernel)
    monkeypatch.setattr(attn, "use_flex", lambda device_type, dropout, training=True: training)
    torch._dynamo.reset()
    model, ids = masked_model()
    model(ids, ids)
    assert kernel.compiles == 1
    model(ids[:1], ids[:1])  # a second shape
    assert kernel.compiles == 1 and "compiled shapes are used up" in capsys.readouterr().err


# --- item 3: compile resolves per device --------------------------------------------------------------


def test_compile_is_auto_by_default_on_for_cuda_and_off_on_the_cpu():
    config = resolve_config("cpu-tiny")
    assert config.train.compile == "auto"
    assert resolve_compile("auto", torch.device("cuda", 0)) is True
    assert resolve_compile("auto", torch.device("cpu")) is False
    assert resolve_compile(True, torch.device("cpu")) is True
    assert resolve_compile(False, torch.device("cuda")) is False
    for raw, want in (("true", True), ("off", False), ("auto", "auto")):
        assert resolve_config("cpu-tiny", None, [f"compile={raw}"]).train.compile == want
    from baseforge.train.distributed import DistInfo

    runtime = Runtime.create(resolve_config("cpu-tiny", None, ["device=cpu"]).train, DistInfo())
    assert runtime.compile is False


# --- item 5: one memory unit ---------------------------------------------------------------------------


def test_memory_is_logged_in_gib_with_allocated_and_reserved_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 4.5 * 2**30)
    assert metrics.peak_memory(torch.device("cuda", 0)) == {"peak_alloc_gib": 3.0, "peak_reserved_gib": 4.5}
    import resource

    rss = metrics.peak_memory(torch.device("cpu"))["peak_rss_gib"]
    assert rss == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30)


def test_the_search_reads_reserved_memory_as_the_plan_counts_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 7)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 5)
    assert autobatch.DeviceMemory(torch.device("cuda", 0)).peak() == 7
    from baseforge.hardware import find_gpu
    from baseforge.plan.estimate import format_plan, make_plan
    from baseforge.plan.memory import Setup

    assert "in GiB reserved" in format_plan(make_plan(Setup("gpt2-124m", find_gpu("h100-sxm"))))


# --- item 7: the GPU presets' own code paths, at toy size, compiled on the CPU -------------------------

TOY = [
    "n_layer=2",
    "n_embd=64",
    "n_head=2",
    "context=128",
    "vocab_size=512",
    "value_embeds=1",
    "precision=fp32",
]
TOY += ["micro_batch=2", "global_batch=4", "max_steps=4", "max_tokens=0", "eval_every=4", "eval_tokens=512"]
TOY += ["log_every=1", "sample_tokens=0", "checkpoint_every=1000", "device=cpu"]
TOY_EXTRA = {"gpt2-small-modern": [], "gpt2-speedrun": ["attn_window=64", "batch_schedule=2@512"]}


def toy_losses(preset: str, data, out, compiled: bool) -> list[float]:
    keys = [*TOY, *TOY_EXTRA[preset], f"compile={str(compiled).lower()}"]
    logs: list[str] = []
    trainer = Trainer(resolve_config(preset, None, keys), data, out, log=logs.append)
    trainer.run()
    assert compiled == any("compiled" in line for line in logs), logs
    from baseforge.train.metrics import read_metrics

    rows = read_metrics(out)
    return [r.loss for r in rows if r.loss is not None] + [rows[-1].val_loss]


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(TOY_EXTRA))
def test_gpu_presets_train_compiled_as_they_train_eager(preset, shakespeare_dir, tmp_path):
    """Each GPU preset shrunk to a toy, every key kept (documents apart, value embeddings and NorMuon;
    the speedrun adds a window with its warmup, U-net skips, Polar Express, cautious decay, best-fit
    packing and a batch schedule): 4 steps compiled by Inductor on the CPU give the eager run's losses.
    (Compiled, the CPU takes SDPA with the mask where eager takes the banded kernel: the same rule.)
    About a minute each on 2 cores (Inductor's C++ compiles), hence slow."""
    torch._dynamo.reset()
    eager = toy_losses(preset, shakespeare_dir, tmp_path / "eager", compiled=False)
    compiled = toy_losses(preset, shakespeare_dir, tmp_path / "compiled", compiled=True)
    assert compiled[0] == eager[0] and compiled == pytest.approx(eager, rel=1e-4)  # measured: 3e-5
