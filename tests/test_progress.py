"""Progress: tqdm bar on a terminal, plain periodic lines elsewhere, ETA from the rate since creation."""

from __future__ import annotations

import io

import pytest

from baseforge.progress import Progress, format_duration
from helpers import Clock, Terminal


def test_eta_after_resume_counts_only_the_rate_since_the_resume():
    # 900 of 1000 steps were done before the resume; this process does 10 steps in 30 s.
    clock = Clock()
    bar = Progress(1000, "train", "step", initial=900, file=io.StringIO(), clock=clock)
    assert bar.eta_s is None  # no rate yet
    for _ in range(10):
        clock.t += 3.0
        bar.update(1)
    assert bar.rate == pytest.approx(10 / 30)
    assert bar.eta_s == pytest.approx(90 * 3.0)  # 90 steps left at 3 s each, not 30 s / 910 steps done
    assert "eta 4m30s" in bar.line()


def test_plain_lines_when_not_a_terminal():
    clock, out = Clock(), io.StringIO()
    bar = Progress(100, "answer", "item", file=out, every_s=10.0, clock=clock)
    for _ in range(100):
        clock.t += 0.5  # 50 s in all: a line on the first update, then one per 10 s
        bar.update(1, loss=2.123456)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("answer 1/100 item (1%) | loss 2.123 |")
    assert lines[-1].startswith("answer 100/100 item (100%)") and "eta 0m00s" in lines[-1]
    assert len(lines) == 6  # steps 1, 21, 41, 61, 81 and the final 100


def test_plain_lines_of_a_scaled_count_read_as_numbers_a_person_reads():
    """A run counted in tokens (a batch schedule's): 150.0M/1.0B tok, not 150000000/1000000000."""
    clock, seen = Clock(), []
    bar = Progress(
        10**9, "train", "tok", file=io.StringIO(), every_s=0.0, write=seen.append, clock=clock, scale=True
    )
    clock.t += 100
    bar.update(150_000_000)
    assert seen[-1] == "train 150.0M/1.0B tok (15%) | eta 9m26s at 1.5M tok/s (mean since start)"


def test_final_line_is_not_repeated_and_write_callback_gets_the_lines():
    clock, seen = Clock(), []
    bar = Progress(2, "judge", "item", file=io.StringIO(), every_s=0.0, write=seen.append, clock=clock)
    clock.t += 1
    bar.update(1, failed=0)
    clock.t += 1
    bar.update(1, failed=1)
    bar.close()
    assert len(seen) == 2 and seen[-1].startswith("judge 2/2 item (100%) | failed 1")


def test_disabled_writes_nothing():
    out = Terminal()
    with Progress(10, "train", file=out, enabled=False) as bar:
        bar.update(5, loss=1.0)
    assert out.getvalue() == "" and bar.n == 5


def test_terminal_gets_a_tqdm_bar_with_postfix():
    out = Terminal()
    with Progress(10, "train", "step", initial=4, file=out) as bar:
        bar.update(2, loss=3.5)
    text = out.getvalue()
    assert "\r" in text and "train" in text and "6/10" in text and "loss 3.5" in text


def test_format_duration():
    assert format_duration(270) == "4m30s" and format_duration(3 * 3600 + 125) == "3h02m"


def _read_all(fd: int) -> str:
    import os

    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_a_terminal_of_size_0x0_gets_plain_lines():
    # Under `script` (and some CI ptys) the terminal reports 0 columns: a tqdm bar would be empty.
    import os
    import pty

    master, slave = pty.openpty()  # a new pty reports 0x0 until someone sets its size
    assert os.get_terminal_size(slave).columns == 0
    with os.fdopen(slave, "w") as out:
        clock = Clock()
        bar = Progress(10, "train", "step", file=out, every_s=0.0, clock=clock)
        for _ in range(3):
            clock.t += 1.0
            bar.update(1, loss=2.5)
        bar.close()
    text = _read_all(master)
    os.close(master)
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    assert len(lines) == 3, repr(text)
    assert lines[0].startswith("train 1/10 step (10%) | loss 2.5") and lines[-1].startswith("train 3/10")


def test_nothing_is_drawn_after_the_stop_message():
    out = Terminal()
    bar = Progress(10, "train", "step", file=out)
    bar.update(3, loss=2.0)
    bar.note("stopped by signal at step 3; checkpoint saved")
    bar.close()
    text = out.getvalue()
    after = text.split("stopped by signal at step 3; checkpoint saved\n", 1)[1]
    assert "train" not in after and "3/10" not in after, repr(after)


def test_the_bar_comes_back_after_a_message_mid_run():
    out = Terminal()
    bar = Progress(10, "train", "step", file=out)
    bar.update(3, loss=2.0)
    bar.note("best checkpoint so far")
    bar.update(2, loss=1.5)
    bar.close()
    after = out.getvalue().split("best checkpoint so far\n", 1)[1]
    assert "5/10" in after


def test_no_plain_line_after_the_stop_message():
    clock, seen = Clock(), []
    bar = Progress(10, "train", "step", every_s=30.0, write=seen.append, clock=clock)
    bar.update(1, loss=2.0)
    clock.t += 1
    bar.update(2, loss=1.9)  # within every_s: no line yet
    bar.note("stopped by signal at step 3")
    bar.close()
    assert seen[-1] == "stopped by signal at step 3"


def test_fields_keep_one_order_after_a_resume():
    from baseforge.train.metrics import MetricsRow
    from baseforge.train.summary import progress_fields

    log_row = MetricsRow(step=1, tokens=8, loss=2.0, tokens_per_s=5000.0, mfu=0.03)
    val_row = MetricsRow(step=1, tokens=8, loss=2.0, tokens_per_s=5000.0, mfu=0.03, val_loss=2.1)
    fresh, resumed = (
        Progress(100, "train", "step", file=io.StringIO()),
        Progress(100, "train", "step", initial=50, file=io.StringIO()),
    )
    fresh.update(1, **progress_fields(val_row, 1))  # a fresh run's first row has validation (step 0)
    fresh.update(1, **progress_fields(log_row, 1))
    resumed.update(1, **progress_fields(log_row, 1))  # a resumed run's first row may not
    resumed.update(1, **progress_fields(val_row, 1))
    assert list(fresh.fields) == list(resumed.fields) == ["last", "val"]
    order = [part.split()[0] for part in resumed.line().split(" | ")[1:3]]
    assert order == ["last", "val"]


def test_train_under_a_0x0_terminal_prints_progress_lines(shakespeare_dir, tmp_path):
    # `baseforge train` with its stdout on a pty that reports no size, as under `script`.
    import os
    import pty
    import subprocess
    import sys

    from helpers import TINY, cli_env, sets

    master, slave = pty.openpty()
    cmd = [
        sys.executable,
        "-m",
        "baseforge",
        "train",
        "--data",
        str(shakespeare_dir),
        "--out",
        str(tmp_path / "r"),
    ]
    cmd += sets(*TINY, "max_steps=6", "checkpoint_every=6")
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.PIPE, env=cli_env(), text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, err = proc.communicate(timeout=300)
    os.close(master)
    assert proc.returncode == 0, err[-2000:]
    lines = b"".join(chunks).decode().replace("\r\n", "\n").split("\n")
    progress = [line for line in lines if line.startswith("train ")]
    assert any(line.startswith("train 6/6 step (100%)") for line in progress), lines
    assert len(progress) >= 6  # log_every=1: a line per step, not an invisible bar


def test_train_stopped_by_a_signal_draws_no_bar_after_the_message(shakespeare_dir, tmp_path):
    # A real terminal (a pty of 30x120): Ctrl-C's message is the last thing on it.
    import fcntl
    import os
    import pty
    import select
    import signal
    import struct
    import subprocess
    import sys
    import termios
    import time

    from helpers import TINY, cli_env, sets

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    cmd = [
        sys.executable,
        "-m",
        "baseforge",
        "train",
        "--data",
        str(shakespeare_dir),
        "--out",
        str(tmp_path / "r"),
    ]
    cmd += sets(*TINY, "max_steps=100000", "eval_every=100000")
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.PIPE, env=cli_env())
    os.close(slave)
    seen, deadline, sent = b"", time.monotonic() + 240, False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        if not sent and seen.count(b"step/s") >= 3:  # the bar is running
            proc.send_signal(signal.SIGINT)
            sent = True
        if proc.poll() is not None and not ready:
            break
    proc.wait(timeout=60)
    os.close(master)
    text = seen.decode(errors="replace")
    assert sent and "stopped by signal" in text, text[-2000:]
    after = text.split("stopped by signal", 1)[1].partition("\n")[2]  # what came after the message line
    assert "step/s" not in after and "train" not in after, repr(after[-500:])
