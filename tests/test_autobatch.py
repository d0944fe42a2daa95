"""micro_batch=auto: the divisor search (largest fitting), the search on a real CPU trainer with a faked
GPU memory and a faked out-of-memory in backward (a safety margin, no trace left in weights, gradients,
RNG or peak memory; trials run the real step), and ranks agreeing on the smallest micro-batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from baseforge.errors import UserError
from baseforge.overrides import resolve_config
from baseforge.train import autobatch, step
from baseforge.train.autobatch import agree, largest_fitting, search_micro_batch
from baseforge.train.distributed import DistInfo
from baseforge.train.loop import Trainer
from helpers import TINY


def test_largest_fitting_binary_search():
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 12

    assert largest_fitting(48, fits) == 12  # divisors of 48: ... 8, 12, 16 ...
    assert len(tried) <= 5
    with pytest.raises(UserError, match="out of memory even at micro_batch 1"):
        largest_fitting(8, lambda b: False)


# --- the search on a real trainer -----------------------------------------------------------------
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
    config = resolve_config("cpu-tiny", None, [*TINY, "micro_batch=8", "global_batch=8", "dropout=0.1"])
    trainer = Trainer(config, shakespeare_dir, tmp_path / "run", log=lambda *_: None)
    trainer.setup()
    model, memory = trainer.built.views.plain, FakeMemory()

    def see_batch(module, args):
        memory.batch = args[0].shape[0]

    def oom_in_backward(module, grad_input, grad_output):
        if memory.batch > 4:  # the head's and later blocks' gradients are already in .grad
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.register_forward_pre_hook(see_batch)
    model.transformer.h[0].register_full_backward_hook(oom_in_backward)
    return trainer, memory


def test_auto_search_keeps_a_margin_and_leaves_no_trace(auto_trainer):
    trainer, memory = auto_trainer
    model = trainer.built.views.plain
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    micro = search_micro_batch(
        model, trainer.data, trainer.config.train, trainer.built.runtime, 8, memory=memory
    )
    # 8 ran out of memory; 4 fitted but peaked at 95 of 100 units (< 10% free): the next divisor down
    assert micro == 2
    assert all(p.grad is None for p in model.parameters())  # not even after the OOM in backward
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert memory.calls[-1] == "reset_peak"  # the run's peak memory is not the search's


def test_auto_search_without_margin_pressure_takes_the_largest(auto_trainer, monkeypatch):
    trainer, memory = auto_trainer
    monkeypatch.setattr(memory, "capacity", lambda: 1000)
    args = (trainer.built.views.plain, trainer.data, trainer.config.train, trainer.built.runtime, 8)
    assert autobatch.search_micro_batch(*args, memory=memory) == 4


def test_auto_search_restores_the_cuda_generator(auto_trainer, monkeypatch):
    """The run's CUDA generator (faked: trial steps advance it) is put back after the search."""
    trainer, memory = auto_trainer
    state = {0: torch.tensor([7], dtype=torch.uint8)}
    monkeypatch.setattr(autobatch, "rng_devices", lambda device: [0])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=0: state[device].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device=0: state.update({device: s.clone()}))

    def draw(module, args):  # as dropout on a GPU would
        state[0] += 1

    trainer.built.views.plain.register_forward_pre_hook(draw)
    args = (trainer.built.views.plain, trainer.data, trainer.config.train, trainer.built.runtime, 8)
    autobatch.search_micro_batch(*args, memory=memory)
    assert state[0].item() == 7


def test_trials_run_the_real_step(auto_trainer, monkeypatch):
    """Trial losses are divided by the accumulation their micro-batch implies, as in the run."""
    trainer, memory = auto_trainer
    seen = []
    original = step.TrainStep.forward_backward

    def recording(self, x, y, sync, window=None, accum=1):
        seen.append((x.shape[0], accum))
        return original(self, x, y, sync, window, accum)

    monkeypatch.setattr(step.TrainStep, "forward_backward", recording)
    monkeypatch.setattr(memory, "capacity", lambda: 1000)
    args = (trainer.built.views.plain, trainer.data, trainer.config.train, trainer.built.runtime, 8)
    autobatch.search_micro_batch(*args, memory=memory)
    assert seen and all(b * accum == 8 for b, accum in seen)


# --- ranks agree ------------------------------------------------------------------------------------
def _agree_on_rank(rank: int, init: str, out: str) -> None:
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
    out = str(tmp_path / "agreed")
    mp.spawn(_agree_on_rank, args=(f"file://{tmp_path / 'pg'}", out), nprocs=2)
    assert [open(f"{out}.{r}").read() for r in range(2)] == ["4", "4"]
