"""Running the CLI in a subprocess, as a user would."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A model small enough for tests: trains a step in milliseconds.
TINY = [
    "n_layer=2",
    "n_embd=64",
    "n_head=2",
    "context=64",
    "micro_batch=4",
    "global_batch=8",
    "dropout=0.1",
    "log_every=1",
    "eval_every=5",
    "eval_tokens=2048",
    "sample_tokens=0",
    "precision=fp32",
    "warmup_steps=3",
]


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def baseforge(*args, check=False, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`baseforge ARGS` in a subprocess; `env` adds variables to the test environment."""
    return subprocess.run(
        [sys.executable, "-m", "baseforge", *map(str, args)],
        capture_output=True,
        text=True,
        env={**cli_env(), **(env or {})},
        check=check,
        **kwargs,
    )


def popen(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "baseforge", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def sets(*items) -> list[str]:
    out = []
    for item in items:
        out += ["--set", item]
    return out


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: non-zero exit, one line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def free_port() -> int:
    """A port nobody listens on now, below the kernel's ephemeral range: a port the kernel handed out
    (bind to 0) can be handed out again as the local end of an outgoing connection (gloo opens many)
    before the test's process listens on it, seen in CI as EADDRINUSE."""
    import random
    import socket

    low = 32768
    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.SystemRandom().randint(max(1024, low - 12000), low - 1)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def torchrun_cmd(nproc: int, *args) -> list[str]:
    """`torchrun --nproc_per_node N -m baseforge ARGS`, on a free rendezvous port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), "-m", "baseforge", *map(str, args)]  # fmt: skip


def torchrun(nproc: int, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_cmd(nproc, *args), capture_output=True, text=True, env=cli_env(), timeout=300, **kwargs
    )


def assert_a_dead_rank_ends_the_job(data: Path, run: Path, settings: list[str]) -> None:
    """Start a 2-process run, SIGKILL one rank once it trains: the job must end, soon and non-zero."""
    import signal
    import time

    cmd = torchrun_cmd(2, "train", "--data", data, "--out", run, *sets(*settings))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2, children
    os.kill(int(children[-1]), signal.SIGKILL)  # one rank dies
    start = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    assert "failed" in err.lower() or "signal" in err.lower(), err[-2000:]


class Clock:
    """A clock a test moves by hand (progress bars take `clock=`)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    """Output that says it is a terminal: a progress bar draws on it."""

    def isatty(self) -> bool:
        return True
