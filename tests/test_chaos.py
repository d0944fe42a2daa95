"""Chaos: a run killed with SIGKILL over and over, and resumed each time, ends bit for bit where an
uninterrupted run ends.

The run has gradient accumulation (micro 2 x accum 4) and dropout, evaluates every 5 steps and
checkpoints every 3 (so checkpoint writes are a large share of its life). Each kill is aimed by a
seeded plan at one of: startup (a random moment after launch: imports, setup, restoring), a step (a
random moment after a logged step), an evaluation (a random moment after the row that precedes an
evaluation step) or a checkpoint write (the moment a `.step_*.tmp` dir appears). The first kill
always lands after the step-0 row and before the first checkpoint: with nothing to resume, the run
is started again without --resume, as a user would. After every kill `latest` must name a complete
checkpoint. Then the run goes on with --resume until it finishes by itself.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from safetensors.torch import load_file

from baseforge.train.checkpoint.format import find_checkpoint
from baseforge.train.metrics import read_metrics
from helpers import TINY, baseforge, cli_env, sets

EVAL_EVERY = 5
CONFIG = [k for k in TINY if not k.startswith(("micro_batch", "eval_every", "eval_tokens"))] + [
    "micro_batch=2",  # x accum 4 = global_batch 8
    f"eval_every={EVAL_EVERY}",
    "eval_tokens=4096",  # evaluation is a good share of the run
    "checkpoint_every=3",
    "keep_last=2",
]
MODES = ("startup", "step", "eval", "checkpoint")


@dataclass
class Chaos:
    kills: int = 0
    aimed: dict = field(default_factory=lambda: {m: 0 for m in MODES})
    mid_write: int = 0  # kills that left a new half-written .step_*.tmp behind
    before_first_checkpoint: int = 0
    launches: int = 0


class Child:
    """`baseforge train` in a process whose output lines are read as they come."""

    def __init__(self, args: list):
        cmd = [sys.executable, "-m", "baseforge", "train", *map(str, args)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env()
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, predicate, poll: float = 0.001, timeout: float = 300) -> bool:
        """Wait until predicate() holds (True) or the process ends (False)."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(poll)
        return False

    def logged_step(self, wanted=lambda step: True) -> bool:
        for line in reversed(self.lines):  # the progress line: "train 12/60 step (20%) | loss ..."
            logged = re.match(r"train (\d+)/\d+ step", line)
            if logged:
                return wanted(int(logged.group(1)))
        return False

    def kill(self) -> bool:
        """SIGKILL; True if it landed on a live process."""
        alive = self.alive()
        if alive:
            self.proc.send_signal(signal.SIGKILL)
        self.finish()
        return alive and self.proc.returncode == -signal.SIGKILL

    def finish(self) -> int:
        self.proc.wait(timeout=600)
        self.reader.join(timeout=10)
        return self.proc.returncode


def tmp_dirs(run: Path) -> list[str]:
    root = run / "checkpoints"
    return [p.name for p in root.glob(".step_*.tmp")] if root.is_dir() else []


def aim(child: Child, run: Path, mode: str, rng: random.Random) -> None:
    """Wait for the moment this kill is aimed at (or for the process to end)."""
    if mode == "first":
        child.wait_for(lambda: (run / "metrics.jsonl").is_file() and read_metrics(run), poll=0.0005)
    elif mode == "startup":
        child.wait_for(lambda: False, timeout=rng.uniform(0, 4.0))
    elif mode == "step":
        if child.wait_for(lambda: child.logged_step()):
            child.wait_for(lambda: False, timeout=rng.uniform(0, 0.3))
    elif mode == "eval":  # the row before an eval step: next come that step and its evaluation
        if child.wait_for(lambda: child.logged_step(lambda s: (s + 1) % EVAL_EVERY == 0)):
            child.wait_for(lambda: False, timeout=rng.uniform(0, 0.15))
    else:  # checkpoint: as soon as a checkpoint dir is being written, after skipping 0-1 of them
        seen = set(tmp_dirs(run))
        for _ in range(rng.randint(1, 2)):
            if not child.wait_for(lambda seen=seen: set(tmp_dirs(run)) - seen, poll=0.0002):
                return
            seen |= set(tmp_dirs(run))


def check_latest(run: Path) -> None:
    if (run / "checkpoints" / "latest").exists():
        ckpt = find_checkpoint(run)
        for name in ("model.safetensors", "trainer.safetensors", "trainer.json", "state.json", "config.json"):
            assert (ckpt / name).is_file(), f"latest names {ckpt}, which has no {name}"


def run_with_chaos(data: Path, run: Path, extra: list[str], plan: list[str], seed: int) -> Chaos:
    """Kill the run once per entry of `plan` (its moments drawn with `seed`), resuming each time; then
    let it finish."""
    rng, chaos, kills = random.Random(seed), Chaos(), len(plan)
    for mode in [*plan, None]:
        resume = (run / "checkpoints" / "latest").exists()
        args = ["--data", data, "--out", run, *(["--resume"] if resume else sets(*CONFIG, *extra))]
        before = set(tmp_dirs(run))
        child = Child(args)
        chaos.launches += 1
        if mode is None:
            assert child.finish() == 0, "\n".join(child.lines[-30:])
            return chaos
        aim(child, run, mode, rng)
        if not child.kill():
            assert child.proc.returncode == 0, "\n".join(child.lines[-30:])
            pytest.fail(f"the run finished after {chaos.kills} of {kills} kills: give it more steps")
        chaos.kills += 1
        chaos.aimed["startup" if mode == "first" else mode] += 1
        chaos.mid_write += bool(set(tmp_dirs(run)) - before)
        chaos.before_first_checkpoint += not (run / "checkpoints" / "latest").exists()
        check_latest(run)
    raise AssertionError("unreachable")


def losses(run: Path):
    return [(r.step, r.loss, r.val_loss, r.lr, r.grad_norm) for r in read_metrics(run)]


def assert_same_run(ref: Path, run: Path) -> None:
    assert losses(run) == losses(ref)  # every logged row, exactly, and no row twice
    want = load_file(str(find_checkpoint(ref) / "model.safetensors"))
    got = load_file(str(find_checkpoint(run) / "model.safetensors"))
    assert want.keys() == got.keys()
    for name in want:
        assert (want[name] == got[name]).all(), name
    assert find_checkpoint(ref).name == find_checkpoint(run).name


def chaos_against_reference(data: Path, tmp_path: Path, steps: int, plan: list[str], seed: int) -> Chaos:
    extra = [f"max_steps={steps}"]
    ref = tmp_path / "ref"
    baseforge("train", "--data", data, "--out", ref, *sets(*CONFIG, *extra), check=True)
    run = tmp_path / "chaos"
    chaos = run_with_chaos(data, run, extra, plan, seed)
    print(f"chaos: {chaos}")
    assert_same_run(ref, run)
    assert not tmp_dirs(run)  # the next checkpoint write cleared what the kills left
    return chaos


@pytest.mark.slow  # 48 s; one kill and resume, per signal, stays in test_train_resume
def test_killed_and_resumed_three_times_ends_bit_for_bit(shakespeare_dir, tmp_path):
    plan = ["first", "checkpoint", "eval"]
    chaos = chaos_against_reference(shakespeare_dir, tmp_path, steps=60, plan=plan, seed=1)
    assert chaos.kills == 3 and chaos.before_first_checkpoint >= 1


@pytest.mark.slow
def test_survives_twenty_five_random_sigkills_bit_for_bit(shakespeare_dir, tmp_path):
    rng = random.Random(7)
    plan = ["first"] + [rng.choice(MODES) for _ in range(24)]
    chaos = chaos_against_reference(shakespeare_dir, tmp_path, steps=120, plan=plan, seed=7)
    assert chaos.kills >= 20 and chaos.mid_write >= 1


def test_resuming_a_finished_run_finishes_again(shakespeare_dir, tmp_path):
    """A kill after the final checkpoint (while drawing charts or writing summary.json): --resume ends it."""
    run = tmp_path / "run"
    baseforge("train", "--data", shakespeare_dir, "--out", run, *sets(*CONFIG, "max_steps=3"), check=True)
    again = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume")
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr and "final train loss" in again.stdout
