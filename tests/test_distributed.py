"""torchrun + DDP on CPU (gloo): two processes are the reference's twin, resume crosses world sizes,
and a dead rank takes the whole job down; the process group's backend follows the run's device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from baseforge.train.checkpoint.format import find_checkpoint
from baseforge.train.distributed import backend_for, process_group
from baseforge.train.metrics import read_metrics
from helpers import TINY, assert_a_dead_rank_ends_the_job, baseforge, cli_env, free_port, sets, torchrun

COMMON = [*TINY, "dropout=0", "micro_batch=2", "global_batch=8", "checkpoint_every=4", "dist_timeout_s=60"]


def curve(run):
    return [r.loss for r in read_metrics(run) if r.loss is not None]


@pytest.fixture(scope="module")
def one_process(shakespeare_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    # 1 process, micro 2: accumulation 4 to reach the global batch of 8.
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, *sets(*COMMON, "max_steps=8"))
    assert result.returncode == 0, result.stderr
    return run


def test_two_processes_match_one(shakespeare_dir, one_process, tmp_path):
    run = tmp_path / "run"
    # 2 processes, micro 2: accumulation 2 each, the same 8 sequences per step.
    result = torchrun(2, "train", "--data", shakespeare_dir, "--out", run, *sets(*COMMON, "max_steps=8"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "micro 2 x accum 2 x 2 processes" in result.stdout
    assert curve(run) == pytest.approx(curve(one_process), rel=1e-4, abs=1e-4)
    ref, got = (load_file(str(find_checkpoint(r) / "model.safetensors")) for r in (one_process, run))
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)


def test_two_processes_match_one_with_bestfit_packing_and_document_masks(shakespeare_dir, tmp_path):
    """Best-fit windows, document masks, a window warmup and a batch-size schedule (2 sequences for 2
    steps: one a process; 4 for 2 steps; then 8) on 2 processes: one process's curve."""
    items = [*COMMON, "packing=bestfit", "attn_doc_mask=true", "value_embeds=1", "attn_window_warmup=0.5"]
    items += ["batch_schedule=2@256,4@768", "max_steps=6"]
    one = tmp_path / "one"
    assert baseforge("train", "--data", shakespeare_dir, "--out", one, *sets(*items)).returncode == 0
    two = tmp_path / "two"
    result = torchrun(2, "train", "--data", shakespeare_dir, "--out", two, *sets(*items))
    assert result.returncode == 0, result.stderr[-3000:]
    assert curve(two) == pytest.approx(curve(one), rel=1e-4, abs=1e-4)


def test_checkpoint_from_two_processes_resumes_on_one(shakespeare_dir, one_process, tmp_path):
    run = tmp_path / "run"
    result = torchrun(
        2,
        "train",
        "--data",
        shakespeare_dir,
        "--out",
        run,
        *sets(*COMMON, "max_steps=8"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Roll the run back to its step-4 checkpoint, then continue it with one process.
    (run / "checkpoints" / "latest").write_text("step_0000004\n")
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume")
    assert result.returncode == 0, result.stderr
    assert "micro 2 x accum 4 x 1 processes" in result.stdout
    assert curve(run) == pytest.approx(curve(one_process), rel=1e-4, abs=1e-4)


def test_a_dead_rank_stops_the_job(shakespeare_dir, tmp_path):
    assert_a_dead_rank_ends_the_job(
        shakespeare_dir, tmp_path / "run", [*COMMON, "max_steps=100000", "dist_timeout_s=20"]
    )


def test_the_process_group_backend_follows_the_runs_device_not_the_host(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a host with a GPU
    assert backend_for("cpu") == "gloo"  # a CPU run there must not hand CPU tensors to NCCL
    assert backend_for("auto") == "nccl" and backend_for("cuda:1") == "nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend_for("auto") == "gloo"


def _ddp_then_teardown(rank: int, ports: tuple[int, int], out: str) -> None:
    """A DDP model made in a function inside process_group, normally and failing: it must be freed
    before the group is destroyed (freed after, its Reducer destroys the group holding the GIL, and a
    gloo worker thread that needs the GIL hangs the process at exit)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    events: list[str] = []
    destroy = torch.distributed.destroy_process_group
    torch.distributed.destroy_process_group = lambda: (events.append("destroy"), destroy())[1]

    def train(fail: bool) -> None:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
        weakref.finalize(model, events.append, "ddp freed")
        model(torch.ones(1, 2)).sum().backward()
        if fail:
            raise ValueError("a failed run")

    for fail, port in zip((False, True), ports):
        # a group of its own for each: on one port a rank still leaving the first group could meet
        # the other already in the second (seen under load: gloo's "connection reset by peer")
        os.environ["MASTER_PORT"] = str(port)
        try:
            with process_group(60, "cpu"):
                train(fail)
        except ValueError:
            pass
    with open(f"{out}.{rank}", "w") as f:
        f.write(" ".join(events))


def test_ddp_models_are_freed_before_the_process_group(tmp_path):
    out = str(tmp_path / "events")
    ports = (free_port(), free_port())
    while ports[1] == ports[0]:
        ports = (ports[0], free_port())
    mp.spawn(_ddp_then_teardown, args=(ports, out), nprocs=2)
    for rank in range(2):
        assert open(f"{out}.{rank}").read() == "ddp freed destroy ddp freed destroy"


def two_nodes(port: int, *args) -> list[subprocess.Popen]:
    """Two torchrun agents on this machine, one process each, meeting at a c10d rendezvous on
    127.0.0.1 (the README's two-node command with the head node here)."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "--rdzv_id",
                f"two-nodes-{port}",
                "-m",
                "baseforge",
                *map(str, args),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )  # fmt: skip
        for rank in (0, 1)
    ]


@pytest.mark.slow
def test_two_torchrun_agents_train_as_one_process_and_a_dead_node_ends_both(shakespeare_dir, tmp_path):
    items = [*TINY, "dropout=0", "micro_batch=2", "global_batch=8", "max_steps=6", "dist_timeout_s=60"]
    one = baseforge("train", "--data", shakespeare_dir, "--out", tmp_path / "one", *sets(*items))
    assert one.returncode == 0, one.stderr
    agents = two_nodes(
        free_port(), "train", "--data", shakespeare_dir, "--out", tmp_path / "two", *sets(*items)
    )
    for agent in agents:
        _, err = agent.communicate(timeout=300)
        assert agent.returncode == 0, err[-2000:]
    losses = [[r.loss for r in read_metrics(tmp_path / run) if r.loss is not None] for run in ("one", "two")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-4)
    # A rank killed on one "node" ends the job on both.
    long = [*items, "max_steps=100000", "log_every=1"]
    agents = two_nodes(
        free_port(), "train", "--data", shakespeare_dir, "--out", tmp_path / "dead", *sets(*long)
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "dead" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = subprocess.run(
        ["pgrep", "-P", str(agents[1].pid)], capture_output=True, text=True
    ).stdout.split()
    os.kill(int(worker[0]), signal.SIGKILL)
    for agent in agents:
        agent.communicate(timeout=180)
        assert agent.returncode != 0
