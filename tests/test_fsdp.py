"""parallel=fsdp (FSDP2), activation checkpointing, sharded (DCP) checkpoints, per-rank RNG: CPU, gloo.

FSDP on 2 processes is the twin of DDP on 2 and of 1 process at the same global batch; its checkpoints
resume on 1 and on 2 processes, exactly on 2; activation checkpointing leaves the gradients unchanged.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from baseforge.config import RunConfig, TrainConfig
from baseforge.errors import UserError
from baseforge.model import GPT
from baseforge.model.config import ModelConfig
from baseforge.presets import preset_config
from baseforge.train import rng
from baseforge.train.checkpoint import format as ckpt
from baseforge.train.checkpoint.integrity import digest
from baseforge.train.distributed import DistInfo
from baseforge.train.metrics import read_metrics
from baseforge.train.parallel import recompute_blocks, shard_model
from baseforge.train.precision import Precision
from baseforge.train.rng import rank_seed
from helpers import TINY, assert_a_dead_rank_ends_the_job, baseforge, free_port, sets, torchrun

COMMON = [*TINY, "dropout=0", "micro_batch=2", "global_batch=8", "checkpoint_every=4", "dist_timeout_s=60"]
FSDP = [*COMMON, "parallel=fsdp", "max_steps=8"]


def curve(run):
    return [r.loss for r in read_metrics(run) if r.loss is not None]


def weights(run, step=None):
    path = run / "checkpoints" / f"step_{step:07d}" if step else ckpt.find_checkpoint(run)
    return load_file(str(path / "model.safetensors"))


def assert_weights_close(got, ref):
    assert sorted(got) == sorted(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)


def train(nproc, data, run, *settings, resume=False):
    args = ["train", "--data", data, "--out", run, *(["--resume"] if resume else []), *sets(*settings)]
    result = torchrun(nproc, *args) if nproc > 1 else baseforge(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def rolled_back(run, tmp_path, name, step=4):
    """A copy of `run` whose latest checkpoint is `step`: resuming it replays the steps after."""
    copy = tmp_path / name
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "latest").write_text(f"step_{step:07d}\n")
    return copy


@pytest.fixture(scope="module")
def runs(shakespeare_dir, tmp_path_factory):
    """One process, DDP on 2 and FSDP on 2: the same 8 steps of 8 sequences."""
    root = tmp_path_factory.mktemp("runs")
    train(1, shakespeare_dir, root / "one", *COMMON, "max_steps=8")
    train(2, shakespeare_dir, root / "ddp", *COMMON, "max_steps=8")
    result = train(2, shakespeare_dir, root / "fsdp", *FSDP)
    assert "micro 2 x accum 2 x 2 processes" in result.stdout
    return root


def test_fsdp_matches_ddp_and_one_process(runs):
    one, ddp, fsdp = curve(runs / "one"), curve(runs / "ddp"), curve(runs / "fsdp")
    assert len(fsdp) == 8
    assert fsdp == pytest.approx(ddp, rel=1e-4, abs=1e-4)
    assert fsdp == pytest.approx(one, rel=1e-4, abs=1e-4)
    assert_weights_close(weights(runs / "fsdp"), weights(runs / "one"))
    assert_weights_close(weights(runs / "fsdp"), weights(runs / "ddp"))
    step = runs / "fsdp" / "checkpoints" / "step_0000008"
    assert (step / "dcp" / ".metadata").is_file() and len(list((step / "dcp").glob("*.distcp"))) == 2
    assert json.loads((step / "trainer.json").read_text())["optimizers"] is None  # they live in dcp/


def test_dcp_checkpoint_resumes_on_one_and_on_two(runs, shakespeare_dir, tmp_path):
    reference = curve(runs / "one")
    on_one = rolled_back(runs / "fsdp", tmp_path, "on_one")
    result = train(1, shakespeare_dir, on_one, resume=True)
    assert "micro 2 x accum 4 x 1 processes" in result.stdout
    assert curve(on_one) == pytest.approx(reference, rel=1e-4, abs=1e-4)
    on_two = rolled_back(runs / "fsdp", tmp_path, "on_two")
    train(2, shakespeare_dir, on_two, resume=True)
    assert curve(on_two) == pytest.approx(reference, rel=1e-4, abs=1e-4)
    assert_weights_close(weights(on_two), weights(runs / "fsdp"))


def test_consolidate_writes_the_weights_from_the_shards(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "fsdp", run)
    target = run / "checkpoints" / "step_0000004" / "model.safetensors"
    target.unlink()
    result = baseforge("checkpoint", "consolidate", run)
    assert result.returncode == 0, result.stderr
    assert "step_0000008: model.safetensors present" in result.stdout
    got, ref = load_file(str(target)), weights(runs / "fsdp", 4)
    assert sorted(got) == sorted(ref)
    for name in ref:
        assert torch.equal(got[name], ref[name]), name


def test_a_sharded_index_that_would_run_code_is_refused(runs, tmp_path):
    from baseforge.train.checkpoint.sharded import consolidate

    copy = tmp_path / "step"
    shutil.copytree(runs / "fsdp" / "checkpoints" / "step_0000004", copy)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (copy / "dcp" / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match="metadata fails its checksum"):  # refused before it is unpickled
        consolidate(copy)
    state = json.loads((copy / "state.json").read_text())  # recorded so: past the checksum, to the unpickler
    state["files"]["dcp/.metadata"] = digest(copy / "dcp" / ".metadata")
    (copy / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="not allowed in a DCP index"):
        consolidate(copy)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_fsdp_resume_is_exact_with_dropout(shakespeare_dir, tmp_path):
    run = tmp_path / "run"
    train(2, shakespeare_dir, run, *FSDP, "dropout=0.1")
    trainer = ckpt.read_trainer_state(run / "checkpoints" / "step_0000004")
    rank0, rank1 = trainer["rng"]  # each rank's own state, and they differ: own dropout masks
    assert not torch.equal(rank0["torch"], rank1["torch"])
    resumed = rolled_back(run, tmp_path, "resumed")
    train(2, shakespeare_dir, resumed, resume=True)
    assert curve(resumed) == curve(run)
    for name, tensor in weights(run).items():
        assert torch.equal(weights(resumed)[name], tensor), name


@pytest.mark.slow
def test_fsdp_with_muon_and_selective_checkpointing_matches_one_process(shakespeare_dir, tmp_path):
    muon = ["optimizer=muon", "max_steps=6"]
    train(1, shakespeare_dir, tmp_path / "one", *COMMON, *muon)
    train(2, shakespeare_dir, tmp_path / "fsdp", *FSDP, *muon, "activation_checkpointing=selective")
    assert curve(tmp_path / "fsdp") == pytest.approx(curve(tmp_path / "one"), rel=1e-4, abs=1e-4)
    # Muon orthogonalises in bf16, which turns float noise in the summed gradients (another reduction
    # order) into ~1e-3 weight differences after 6 steps, as under DDP; a wrong shard would be ~3e-2 off.
    got, ref = weights(tmp_path / "fsdp"), weights(tmp_path / "one")
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=5e-3, msg=name)


@pytest.mark.slow
def test_ddp_resume_with_dropout_is_exact_and_ranks_draw_their_own_masks(shakespeare_dir, tmp_path):
    run = tmp_path / "run"
    train(2, shakespeare_dir, run, *COMMON, "max_steps=8", "dropout=0.1")
    rank0, rank1 = ckpt.read_trainer_state(run / "checkpoints" / "step_0000004")["rng"]
    assert not torch.equal(rank0["torch"], rank1["torch"])
    resumed = rolled_back(run, tmp_path, "resumed")
    train(2, shakespeare_dir, resumed, resume=True)
    assert curve(resumed) == curve(run)


@pytest.mark.slow
def test_a_dead_rank_stops_an_fsdp_job(shakespeare_dir, tmp_path):
    assert_a_dead_rank_ends_the_job(
        shakespeare_dir, tmp_path / "run", [*FSDP, "max_steps=100000", "dist_timeout_s=20"]
    )


# --- in one process ------------------------------------------------------------------------------------
def tiny_model(dropout=0.1) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=64, context=16, n_layer=4, n_embd=32, n_head=2, dropout=dropout))


def grads_after_step(model, x, y) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)  # the same dropout masks for both models
    model(x, y)[1].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode, expected", [("blocks", 4), ("selective", 2)])
def test_activation_checkpointing_keeps_the_gradients(mode, expected):
    x = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, 1)
    ref = grads_after_step(tiny_model(), x, y)
    model = tiny_model()
    assert recompute_blocks(model, mode) == expected
    saved = []  # tensors autograd keeps for backward: fewer when blocks recompute
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        torch.manual_seed(1)
        model(x, y)[1].backward()
    got = {n: p.grad for n, p in model.named_parameters()}
    assert sorted(got) == sorted(ref)  # parameter names, and so checkpoints, unchanged
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
    plain = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: plain.append(t.numel()) or t, lambda t: t):
        torch.manual_seed(1)
        tiny_model()(x, y)[1].backward()
    assert sum(saved) < sum(plain)


def test_config_keys():
    config = preset_config("cpu-tiny")
    assert (config.train.parallel, config.train.fsdp_offload, config.train.activation_checkpointing) == (
        "ddp",
        False,
        "none",
    )
    with pytest.raises(UserError, match="parallel"):
        config.set("parallel", "zero3")
    with pytest.raises(UserError, match="activation_checkpointing"):
        config.set("activation_checkpointing", "all")
    assert isinstance(RunConfig.from_dict(config.to_dict()), RunConfig)


def test_rank_seeds_are_distinct_and_rank_zero_keeps_the_seed():
    assert rank_seed(1337, 0) == 1337
    seeds = {rank_seed(1337, r) for r in range(64)}
    assert len(seeds) == 64 and rank_seed(1337, 3) == rank_seed(1337, 3)


def test_each_rank_restores_its_own_rng_and_new_ranks_are_seeded():
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(rng.rng_state())
    rng.restore_rng(states, DistInfo(rank=1, world=2), "cpu", 1337, 4)
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])
    with pytest.raises(UserError, match="not a list by rank"):  # one dict: not a state this writes
        rng.restore_rng(states[0], DistInfo(rank=0, world=1), "cpu", 1337, 4)
    # Three ranks resuming a two-rank checkpoint: rank 2 has none and is seeded from (seed, rank, step).
    assert not rng.restore_rng(states, DistInfo(rank=2, world=3), "cpu", 1337, 4)
    first = torch.rand(3)
    rng.restore_rng(states, DistInfo(rank=2, world=3), "cpu", 1337, 4)
    assert torch.equal(torch.rand(3), first)


def _draw_masks(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from baseforge.train.distributed import gather_to_main
    from baseforge.train.rng import start_rank_stream

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(1337)
    init = torch.rand(4)  # the model init: the same on every rank
    start_rank_stream(1337, DistInfo(rank, world))
    mask = torch.nn.functional.dropout(torch.ones(256), 0.5)
    gathered = gather_to_main((init, mask), DistInfo(rank, world))
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


def test_ranks_share_the_init_but_draw_their_own_dropout_masks(tmp_path):
    out = str(tmp_path / "masks.pt")
    torch.multiprocessing.spawn(_draw_masks, args=(2, free_port(), out), nprocs=2)
    (init0, mask0), (init1, mask1) = torch.load(out)
    assert torch.equal(init0, init1)
    assert not torch.equal(mask0, mask1)
    torch.manual_seed(1337)
    torch.rand(4)
    assert torch.equal(mask0, torch.nn.functional.dropout(torch.ones(256), 0.5))  # rank 0: as before


def _muon_on_shards(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    from baseforge.train.muon import Muon

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(n, m, bias=False) for n, m in ((8, 12), (8, 12), (12, 5))))
    grads = [torch.randn_like(p) for p in model.parameters()]
    plain = [p.detach().clone().requires_grad_() for p in model.parameters()]
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    sharded, reference = (
        Muon(model.parameters(), lr=0.1, weight_decay=0.1),
        Muon(plain, lr=0.1, weight_decay=0.1),
    )
    for step in range(2):
        for p, q, g in zip(model.parameters(), plain, grads):
            p.grad = distribute_tensor(g * (step + 1), p.device_mesh, p.placements)
            q.grad = g * (step + 1)
        sharded.step()
        reference.step()
    full = [p.full_tensor() for p in model.parameters()]
    if rank == 0:
        torch.save([(a.detach(), b.detach()) for a, b in zip(full, plain)], out)
    dist.destroy_process_group()


def test_muon_on_sharded_parameters_gives_the_unsharded_update(tmp_path):
    out = str(tmp_path / "muon.pt")
    torch.multiprocessing.spawn(_muon_on_shards, args=(2, free_port(), out), nprocs=2)
    for got, want in torch.load(out):  # 12 rows over 2 ranks, 5 rows (uneven): both bit for bit
        assert torch.equal(got, want)


def _gather_copy(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from baseforge.train.checkpoint.sharded import gathered_model

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = tiny_model(dropout=0)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    want = model(x)[0].detach()
    runtime = SimpleNamespace(
        precision=Precision("fp32", torch.device("cpu")),
        device=torch.device("cpu"),
        dist=DistInfo(rank, world),
    )
    shard_model(model, TrainConfig(), runtime)
    copy = gathered_model(model, "cpu")
    if rank == 0:
        torch.save((copy(x)[0].detach(), want), out)
    else:
        assert copy is None
    dist.destroy_process_group()


def test_a_sharded_model_gathers_into_a_plain_copy_on_rank_zero(tmp_path):
    out = str(tmp_path / "copy.pt")
    torch.multiprocessing.spawn(_gather_copy, args=(2, free_port(), out), nprocs=2)
    got, want = torch.load(out)
    assert torch.equal(got, want)


def step0_val(run):
    return read_metrics(run)[0].val_loss


@pytest.mark.parametrize(
    "nproc, windows, micro",
    [
        (2, 1, 2),
        pytest.param(3, 5, 1, marks=pytest.mark.slow),
        pytest.param(3, 64, 5, marks=pytest.mark.slow),
    ],
)
def test_fsdp_evaluation_is_even_over_ranks_whatever_the_slice(
    shakespeare_dir, tmp_path, nproc, windows, micro
):
    """A validation slice that does not split evenly over the ranks (one window on two): every rank runs
    as many forwards as the others (FSDP's all-gathers are collectives), and the loss is one process's."""
    items = [*TINY, "dropout=0", "max_steps=1", f"eval_tokens={64 * windows}", f"micro_batch={micro}"]
    items += [f"global_batch={micro * nproc}", "dist_timeout_s=60"]
    train(1, shakespeare_dir, tmp_path / "one", *items)
    train(nproc, shakespeare_dir, tmp_path / "fsdp", *items, "parallel=fsdp")
    assert step0_val(tmp_path / "fsdp") == pytest.approx(step0_val(tmp_path / "one"), rel=1e-5)


def test_fsdp_computes_what_ddp_computes_in_bf16(shakespeare_dir, tmp_path):
    """Under bf16 autocast FSDP gathers fp32 parameters and autocast casts, as DDP: the residual stream,
    rotary tables and value embeddings stay fp32 (FSDP2's default bf16 policy cast each block's inputs).
    Step by step the two differ only by the order of their reductions: the first two losses are equal
    to the bit, the rest within 1.5e-5 (FSDP2's bf16 policy was 3.8e-5 off, from the first step)."""
    keys = [*COMMON, "max_steps=6", "precision=bf16", "pos_emb=rope", "norm=rmsnorm", "value_embeds=1"]
    train(2, shakespeare_dir, tmp_path / "ddp", *keys)
    train(2, shakespeare_dir, tmp_path / "fsdp", *keys, "parallel=fsdp")
    ddp, fsdp = curve(tmp_path / "ddp"), curve(tmp_path / "fsdp")
    assert len(fsdp) == 6
    assert fsdp[:2] == ddp[:2]
    assert fsdp == pytest.approx(ddp, rel=1.5e-5, abs=0)
