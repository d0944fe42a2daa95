"""Issue 14's defects found by reading the code, on CPU: fake GPUs, fake out-of-memory, patched syncs."""

from __future__ import annotations

import pytest
import torch

from baseforge.errors import UserError
from baseforge.train import precision as prec

CUDA = torch.device("cuda")  # never touched: the tests below fake what the code asks of it


# --- defect 1: bf16 only where the GPU has it natively ---------------------------------------------
def _fake_gpu(monkeypatch, capability, keyword: bool = True):
    """A GPU of `capability` whose is_bf16_supported() counts emulation, as torch's does."""
    native = capability >= (8, 0)
    if keyword:

        def supported(including_emulation: bool = True) -> bool:
            return native or including_emulation

    else:

        def supported() -> bool:  # an older torch: no keyword, emulation counted
            return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize("keyword", [True, False], ids=["including_emulation", "capability"])
@pytest.mark.parametrize("capability", [(7, 0), (7, 5)], ids=["V100", "T4"])
def test_auto_precision_is_fp16_on_gpus_that_emulate_bf16(monkeypatch, capability, keyword):
    _fake_gpu(monkeypatch, capability, keyword)
    assert prec.resolve_precision("auto", CUDA) == "fp16"
    with pytest.raises(UserError, match="no bf16"):
        prec.resolve_precision("bf16", CUDA)


@pytest.mark.parametrize("keyword", [True, False])
def test_auto_precision_is_bf16_from_ampere_on(monkeypatch, keyword):
    _fake_gpu(monkeypatch, (8, 0), keyword)
    assert prec.resolve_precision("auto", CUDA) == "bf16"
    assert prec.resolve_precision("bf16", CUDA) == "bf16"


# --- defect 11: fp32 means fp32 -------------------------------------------------------------------
@pytest.fixture
def tf32_switches():
    """The process-wide TF32 switches, saved and put back through the same API the trainer uses
    (monkeypatch's undo on torch's precision objects breaks on pytest 9.2 and torch 2.11)."""
    saved = prec.tf32_enabled()
    yield
    prec.set_tf32(saved)


def _readable_everywhere() -> None:
    """torch.compile reads the legacy getters; they must not raise after the trainer set TF32."""
    torch.get_float32_matmul_precision()
    torch._C._get_cublas_allow_tf32()


def test_fp32_run_switches_tf32_off(tf32_switches, monkeypatch):
    prec.set_tf32(True)  # as an earlier bf16 run in this process left them
    assert prec.setup_precision("fp32", CUDA).name == "fp32"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
    _readable_everywhere()


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_mixed_precision_run_switches_tf32_on(tf32_switches, monkeypatch, name):
    _fake_gpu(monkeypatch, (9, 0))
    prec.set_tf32(False)
    assert prec.setup_precision(name, CUDA).name == name
    assert prec.tf32_enabled()
    _readable_everywhere()


def test_cpu_run_leaves_tf32_alone(tf32_switches):
    prec.set_tf32(True)
    prec.setup_precision("fp32", torch.device("cpu"))
    assert prec.tf32_enabled()


# --- defect 6: no host-device sync inside a micro-step ---------------------------------------------
def forbid_host_reads(monkeypatch) -> None:
    """The GPU code path of the fused loss, on CPU, with every way of reading a tensor's value failing."""
    from baseforge.model import loss

    def sync(self, *args, **kwargs):
        raise AssertionError("a host read of a tensor's value: a host-device sync on a GPU")

    monkeypatch.setattr(loss, "host_reads_are_free", lambda device: False)
    for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, sync)


def _loss_case(underflow: bool):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(24, 16, generator=g)
    w = 0.1 * torch.randn(64, 16, generator=g)
    targets = torch.randint(0, 64, (24,), generator=g)
    targets[::5] = -100
    if underflow:  # row 3's logit 0 is 450 nats above its target's: p[target] is 0 in fp32 and bf16
        h[3], w[0] = 0.0, 0.0
        h[3, 0], w[0, 0], targets[3] = 30.0, 15.0, 1
    return h, w, targets


def _fused_loss_and_grads(h, w, targets, dtype, softcap=0.0):
    from baseforge.model.loss import linear_cross_entropy

    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = linear_cross_entropy(h, w, targets, softcap)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("softcap", [0.0, 500.0])
@pytest.mark.parametrize("underflow", [False, True], ids=["plain", "underflow"])
def test_fused_loss_reads_no_value_on_the_host(dtype, softcap, underflow, monkeypatch):
    h, w, targets = _loss_case(underflow)
    host = _fused_loss_and_grads(h, w, targets, dtype, softcap)
    with monkeypatch.context() as patch:
        forbid_host_reads(patch)
        device = _fused_loss_and_grads(h, w, targets, dtype, softcap)
    z = h @ w.t()
    z = softcap * torch.tanh(z / softcap) if softcap else z
    reference = torch.nn.functional.cross_entropy(z, targets, ignore_index=-100)
    assert torch.isfinite(device[0]) and torch.isclose(device[0], reference, rtol=2e-2)
    if underflow:  # the repaired row: the same loss up to the logits' rounding
        torch.testing.assert_close(device[0], host[0], rtol=1e-3, atol=0)
        assert all(torch.equal(a, b) for a, b in zip(device[1:], host[1:]))
    else:  # nothing to repair: the same numbers, bit for bit
        assert all(torch.equal(a, b) for a, b in zip(device, host))


@pytest.fixture
def sharded(tmp_path):
    """A train split of three shards of different lengths (windows never cross a shard boundary)."""
    import numpy as np

    from baseforge.data.shards import write_manifest, write_shard

    rng = np.random.default_rng(0)
    entries = []
    for i, n in enumerate([700, 1234, 333]):
        write_shard(tmp_path / f"train_{i:06d}.bin", rng.integers(0, 60000, n), 65536)
        entries.append({"file": f"train_{i:06d}.bin", "tokens": n})
    write_manifest(tmp_path, {"splits": {"train": {"documents": 0, "tokens": 0, "shards": entries}}})
    return tmp_path


def _old_stream_indices(seed: int, n: int, start: int, count: int) -> list[int]:
    """The loader's permutation as the per-window Python loop computed it (the specification)."""
    import math

    import numpy as np

    out = []
    for j in range(start, start + count):
        rng = np.random.default_rng([seed, j // n])
        a = int(rng.integers(1, max(n, 2)))
        while math.gcd(a, n) != 1:
            a = a % n + 1 if n > 1 else 1
        out.append((a * (j % n) + int(rng.integers(0, n))) % n)
    return out


def test_vectorised_gather_equals_the_window_loop(sharded):
    import numpy as np

    from baseforge.data.loader import TokenWindows, TrainStream

    windows = TokenWindows(sharded, "train", 16)
    stream = TrainStream(windows, seed=3)
    start = 5 * windows.n - 7  # crosses from epoch 4 into epoch 5
    indices = stream.indices(start, 20)
    assert indices == _old_stream_indices(3, windows.n, start, 20)
    assert len(np.unique(np.searchsorted(windows.starts, indices, side="right"))) > 1  # several shards
    x, y = stream.batch(start, 20)
    rows = np.stack([windows.window(k) for k in indices]).astype(np.int64)
    assert torch.equal(x, torch.from_numpy(rows[:, :-1])) and torch.equal(y, torch.from_numpy(rows[:, 1:]))
    assert x.dtype == torch.int64


class _CountingData:
    """TokenData's micro_batch interface over a stream, recording which thread gathered what."""

    def __init__(self, stream):
        import threading

        self.stream, self.calls, self.main = stream, [], threading.get_ident()

    def micro_batch(self, step, micro, layout):
        import threading

        self.calls.append((step, micro, threading.get_ident() != self.main))
        return self.stream.micro_batch(step, micro, layout)


def test_prefetched_batches_equal_direct_ones(sharded):
    from baseforge.data.loader import BatchLayout, Prefetcher, TokenWindows, TrainStream

    stream = TrainStream(TokenWindows(sharded, "train", 16), seed=1)
    data = _CountingData(stream)
    layout = BatchLayout(micro_batch=3, grad_accum=2)
    prefetch = Prefetcher()
    order = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (5, 1), (6, 0), (0, 0), (0, 1)]  # a jump, a restart
    for step, micro in order:
        got = prefetch.get(data, step, micro, layout)
        want = stream.micro_batch(step, micro, layout)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    background = {(s, m) for s, m, in_thread in data.calls if in_thread}
    assert {(0, 1), (1, 0), (1, 1), (2, 0)} <= background  # the ones that followed in order came ready
    assert (5, 1) not in background and (6, 0) in background


def test_train_step_reads_the_device_once_per_step(shakespeare_dir, tmp_path, monkeypatch):
    """Host reads of tensor values from baseforge's code, as a GPU would see them: none inside a
    micro-step (accumulation 4 here), one per optimizer step (loss and grad norm together)."""
    import sys

    from baseforge.config import resolve_config
    from baseforge.model import loss
    from baseforge.train.loop import Trainer
    from helpers import TINY

    config = resolve_config("cpu-tiny", None, [*TINY, "micro_batch=2", "global_batch=8", "dropout=0.1"])
    trainer = Trainer(config, shakespeare_dir, tmp_path / "run", log=lambda *_: None)
    trainer.setup()
    step = trainer.parts.step
    reads, inside = [], [False]
    monkeypatch.setattr(loss, "host_reads_are_free", lambda device: False, raising=False)
    for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "baseforge" in caller and "tests" not in caller:
                reads.append((_name, inside[0], caller))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    forward_backward = step.forward_backward

    def micro_step(*args, **kwargs):
        inside[0] = True
        try:
            return forward_backward(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(step, "forward_backward", micro_step)
    results = [step(s, trainer.data) for s in range(3)]
    assert all(r.applied and r.loss > 0 for r in results)
    assert not [r for r in reads if r[1]], reads  # nothing inside a micro-step
    assert len(reads) <= 3, reads  # at most one per optimizer step


# --- defect 3: micro_batch=auto ---------------------------------------------------------------------
class FakeMemory:
    """A GPU of 100 units on which a trial at micro-batch b peaks at 20 b + 15 units."""

    def __init__(self):
        self.batch, self.calls = 0, []

    def reset_peak(self):
        self.calls.append("reset_peak")

    def peak(self):
        return 20 * self.batch + 15

    def capacity(self):
        return 100

    def release(self):
        self.calls.append("release")


@pytest.fixture
def auto_trainer(shakespeare_dir, tmp_path):
    """A set-up CPU trainer (micro_batch 8 of 8) whose model runs out of memory in backward above 4."""
    from baseforge.config import resolve_config
    from baseforge.train.loop import Trainer
    from helpers import TINY

    config = resolve_config("cpu-tiny", None, [*TINY, "micro_batch=8", "global_batch=8", "dropout=0.1"])
    trainer = Trainer(config, shakespeare_dir, tmp_path / "run", log=lambda *_: None)
    trainer.setup()
    model, memory = trainer.parts.views.plain, FakeMemory()

    def see_batch(module, args):
        memory.batch = args[0].shape[0]

    def oom_in_backward(module, grad_input, grad_output):
        if memory.batch > 4:  # the head's and later blocks' gradients are already in .grad
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.register_forward_pre_hook(see_batch)
    model.transformer.h[0].register_full_backward_hook(oom_in_backward)
    return trainer, memory


def test_auto_search_keeps_a_margin_and_leaves_no_trace(auto_trainer):
    from baseforge.train.autobatch import search_micro_batch

    trainer, memory = auto_trainer
    model = trainer.parts.views.plain
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    micro = search_micro_batch(
        model, trainer.data, trainer.config.train, trainer.parts.runtime, 8, memory=memory
    )
    # 8 ran out of memory; 4 fitted but peaked at 95 of 100 units (< 10% free): the next divisor down
    assert micro == 2
    assert all(p.grad is None for p in model.parameters())  # not even after the OOM in backward
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert memory.calls[-1] == "reset_peak"  # the run's peak memory is not the search's


def test_auto_search_without_margin_pressure_takes_the_largest(auto_trainer, monkeypatch):
    from baseforge.train import autobatch

    trainer, memory = auto_trainer
    monkeypatch.setattr(memory, "capacity", lambda: 1000)
    args = (trainer.parts.views.plain, trainer.data, trainer.config.train, trainer.parts.runtime, 8)
    assert autobatch.search_micro_batch(*args, memory=memory) == 4


def test_auto_search_restores_the_cuda_generator(auto_trainer, monkeypatch):
    """The run's CUDA generator (faked: trial steps advance it) is put back after the search."""
    from baseforge.train import autobatch

    trainer, memory = auto_trainer
    state = {0: torch.tensor([7], dtype=torch.uint8)}
    monkeypatch.setattr(autobatch, "rng_devices", lambda device: [0])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=0: state[device].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device=0: state.update({device: s.clone()}))

    def draw(module, args):  # as dropout on a GPU would
        state[0] += 1

    trainer.parts.views.plain.register_forward_pre_hook(draw)
    args = (trainer.parts.views.plain, trainer.data, trainer.config.train, trainer.parts.runtime, 8)
    autobatch.search_micro_batch(*args, memory=memory)
    assert state[0].item() == 7


def test_trials_run_the_real_step(auto_trainer, monkeypatch):
    """Trial losses are divided by the accumulation their micro-batch implies, as in the run."""
    from baseforge.train import autobatch, step

    trainer, memory = auto_trainer
    seen = []
    original = step.TrainStep.forward_backward

    def recording(self, x, y, sync):
        seen.append((x.shape[0], self.layout.grad_accum))
        return original(self, x, y, sync)

    monkeypatch.setattr(step.TrainStep, "forward_backward", recording)
    monkeypatch.setattr(memory, "capacity", lambda: 1000)
    args = (trainer.parts.views.plain, trainer.data, trainer.config.train, trainer.parts.runtime, 8)
    autobatch.search_micro_batch(*args, memory=memory)
    assert seen and all(b * accum == 8 for b, accum in seen)


def _agree_on_rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from baseforge.train.autobatch import agree
    from baseforge.train.distributed import DistInfo

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        runtime = type("R", (), {"dist": DistInfo(rank, 2, rank), "device": torch.device("cpu")})()
        found = [8, 4][rank]  # what each rank's own search found
        with open(f"{out}.{rank}", "w") as f:
            f.write(str(agree(found, runtime)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~30 s on a loaded 2-core machine
def test_ranks_agree_on_the_smallest_micro_batch(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "agreed")
    mp.spawn(_agree_on_rank, args=(f"file://{tmp_path / 'pg'}", out), nprocs=2)
    assert [open(f"{out}.{r}").read() for r in range(2)] == ["4", "4"]


# --- defect 7 (compile): nothing compiles after the warm-up ---------------------------------------
@pytest.mark.slow  # ~45 s of compiling on a loaded 2-core CPU
def test_compiled_run_does_not_recompile_after_warm_up(shakespeare_dir, tmp_path, monkeypatch):
    """Training steps at micro-batch 4 and evaluations whose last batch is partial (31 windows):
    every graph exists after setup's warm-up. (aot_eager: dynamo's guards and recompiles are the
    backend's concern no more than inductor's, and it compiles in seconds on CPU.)"""
    import functools

    from torch._dynamo.utils import counters

    from baseforge.config import resolve_config
    from baseforge.train.loop import Trainer
    from baseforge.train.validate import Validator
    from helpers import TINY

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    keys = [*TINY, "compile=true", "micro_batch=4", "global_batch=8", "eval_tokens=1984"]
    logs = []
    trainer = Trainer(
        resolve_config("cpu-tiny", None, keys), shakespeare_dir, tmp_path / "run", log=logs.append
    )
    trainer.setup()
    assert not any("training eager" in line for line in logs), logs
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    trainer.parts.views.plain.train()
    for step in range(3):
        assert trainer.parts.step(step, trainer.data).applied
        assert Validator(trainer.parts).loss() is not None
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled after the warm-up"
