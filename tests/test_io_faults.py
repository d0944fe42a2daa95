"""Write faults during a training run: a full disk, an I/O error or a read-only filesystem while a
checkpoint, the metrics log or the charts are written ends the run with one line that says what to do,
exit 1, the previous checkpoint and `latest` intact and no temporary dirs; once the fault is gone the
run resumes and ends as an uninterrupted run would.

The faults are injected where the library meets the OS (the safetensors writer, the metrics file, the
chart writer) with the errors those really raise: an OSError without a file name, or safetensors' own
error text. The runs go through the CLI's `main` in this process (fast: torch is already imported).

Outside training: a full disk during `prepare` is one line, exit 1, and leaves no half-written folder,
temp file or manifest; OS errors that are not write faults keep their traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import matplotlib.figure
import pytest
from safetensors import SafetensorError
from safetensors.torch import load_file

import baseforge.cli.data as data_verb
import baseforge.train.checkpoint.format as checkpoint
import baseforge.train.metrics as metrics
from baseforge import fileio
from baseforge.cli import main
from baseforge.train.checkpoint.format import find_checkpoint
from baseforge.train.metrics import read_metrics
from helpers import TINY, sets

STEPS = ["max_steps=6", "checkpoint_every=2", "eval_every=3"]
FAIL_FROM = 4  # the step from which writes fail: the checkpoint at step 2 is complete before
WORDS = {
    errno.ENOSPC: ["No space left on device", "keep_last", "--resume"],
    errno.EIO: ["I/O error", "dmesg"],
    errno.EROFS: ["read-only filesystem"],
}


def train(data, run, *extra) -> int:
    return main(["train", "--data", str(data), "--out", str(run), *extra])


def fresh(data, run) -> int:
    return train(data, run, *sets(*TINY, *STEPS))


def losses(run):
    return [(r.step, r.loss, r.val_loss, r.lr if r.step else None) for r in read_metrics(run)]


@pytest.fixture(scope="module")
def reference(shakespeare_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    assert fresh(shakespeare_dir, run) == 0
    return run


def the_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def oserror(code: int) -> OSError:
    """What the kernel gives Python for a failed write: an errno, no file name."""
    return OSError(code, os.strerror(code))


# --- where the faults are injected --------------------------------------------------------------------
def fail_checkpoints(monkeypatch, fault: Exception) -> str:
    real = checkpoint.save_file

    def save_file(tensors, filename, *args, **kwargs):
        if int(Path(filename).parent.name.split("_")[1].split(".")[0]) >= FAIL_FROM:  # .step_0000004.x.tmp
            raise fault
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    return f"step_{FAIL_FROM:07d}"


class FailingFile:
    """A metrics file on a disk that fails: every write raises, as flush() on a full disk does."""

    def __init__(self, code: int):
        self.code = code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _text):
        raise oserror(self.code)

    def flush(self):
        raise oserror(self.code)


def fail_metrics(monkeypatch, code: int) -> str:
    def open_(path, mode="r", *args, **kwargs):
        # rows 0..FAIL_FROM-1 are written (counted without `open`, which this replaces in that module)
        rows = Path(path).read_text().count("\n") if Path(path).is_file() else 0
        if "a" in mode and rows >= FAIL_FROM:
            return FailingFile(code)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(metrics, "open", open_, raising=False)  # shadows the builtin in that module only
    return "metrics.jsonl"


def fail_charts(monkeypatch, code: int) -> str:
    real, calls = matplotlib.figure.Figure.savefig, []

    def savefig(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the charts of the first checkpoint are drawn
            raise oserror(code)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return "training.png"


SAFETENSORS_FULL = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)
CASES = {
    "checkpoint-enospc": ("checkpoint", errno.ENOSPC, oserror(errno.ENOSPC)),
    "checkpoint-safetensors-full": ("checkpoint", errno.ENOSPC, SafetensorError(SAFETENSORS_FULL)),
    "checkpoint-eio": ("checkpoint", errno.EIO, oserror(errno.EIO)),
    "checkpoint-erofs": ("checkpoint", errno.EROFS, oserror(errno.EROFS)),
    "metrics-enospc": ("metrics", errno.ENOSPC, None),
    "metrics-eio": ("metrics", errno.EIO, None),
    "metrics-erofs": ("metrics", errno.EROFS, None),
    "charts-enospc": ("charts", errno.ENOSPC, None),
    "charts-eio": ("charts", errno.EIO, None),
    "charts-erofs": ("charts", errno.EROFS, None),
}


# One fault per writer in the default suite; every other combination is marked slow.
QUICK = {"checkpoint-enospc", "checkpoint-safetensors-full", "metrics-enospc", "charts-eio"}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=() if c in QUICK else pytest.mark.slow) for c in CASES]
)
def test_a_write_fault_mid_run_is_one_line_keeps_the_last_checkpoint_and_resumes(
    case, shakespeare_dir, reference, tmp_path, monkeypatch, capsys
):
    target, code, fault = CASES[case]
    run = tmp_path / "run"
    if target == "checkpoint":
        where = fail_checkpoints(monkeypatch, fault)
    elif target == "metrics":
        where = fail_metrics(monkeypatch, code)
    else:
        where = fail_charts(monkeypatch, code)
    capsys.readouterr()
    assert fresh(shakespeare_dir, run) == 1
    line = the_error_line(capsys)
    assert line.startswith("baseforge train: error: ") and where in line, line
    for word in WORDS[code]:
        assert word in line, (word, line)
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_0000002" or target == "charts"
    assert (find_checkpoint(run) / "trainer.safetensors").is_file()  # latest names a complete checkpoint
    load_file(str(find_checkpoint(run) / "model.safetensors"))
    assert not [p.name for p in run.rglob("*.tmp")], "temporary files or dirs left behind"

    monkeypatch.undo()  # the space is back
    assert train(shakespeare_dir, run, "--resume") == 0, capsys.readouterr().err
    assert losses(run) == losses(reference)
    ref, got = (load_file(str(find_checkpoint(r) / "model.safetensors")) for r in (reference, run))
    assert all((ref[k] == got[k]).all() for k in ref)


# --- outside training ---------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_exit_1_and_leaves_nothing_half_written(
    shared_data, tmp_path, monkeypatch, capsys
):
    src = str(shared_data / "corpora" / "tinyshakespeare.txt")
    args = ["prepare", src, "--tokenizer", "bpe:300", "--workers", "1", "--shard-tokens", "20000"]

    def full_disk(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "_fsync_file", full_disk)
    assert main([*args, "--out", str(tmp_path / "new" / "d")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "No space left on device" in err and "tokenizer.json" in err and "keep_last" in err
    assert not (tmp_path / "new").exists()  # the folders it made are gone again
    # Into an existing folder, failing on a later shard: no temp files, no manifest.
    (tmp_path / "d").mkdir()
    calls = []

    def fills_up(path):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "_fsync_file", fills_up)
    assert main([*args, "--out", str(tmp_path / "d")]) == 1
    assert "No space left" in capsys.readouterr().err
    names = [p.name for p in (tmp_path / "d").iterdir()]
    assert "manifest.json" not in names and not [n for n in names if n.endswith(".tmp")], names


def test_other_os_errors_keep_their_traceback(monkeypatch):
    def broken(args):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(data_verb, "run", broken)
    with pytest.raises(OSError):
        main(["data", "info", "x"])
