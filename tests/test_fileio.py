"""fileio: atomic writes honour the umask, failed writes leave nothing behind, write faults are named."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from baseforge import fileio
from baseforge.errors import UserError
from baseforge.fileio import (
    atomic_dir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    check_out_dir,
    describe_write_error,
    io_errors,
    output_dir,
)


@pytest.fixture
def umask():
    """Set the umask for one test, and put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writes_get_the_modes_a_plain_open_would(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert fileio.current_umask() == mask
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.unlink()  # a writer that makes its own file at the temp name (as some libraries do)
        tmp.write_bytes(b"y")
    with atomic_dir(tmp_path / "ckpt") as d:
        (d / "w.bin").write_bytes(b"z")
    (tmp_path / "plain.bin").write_bytes(b"p")
    (tmp_path / "plain").mkdir()
    assert mode(tmp_path / "plain.bin") == file_mode and mode(tmp_path / "plain") == dir_mode
    for name in ("a.bin", "m.json", "c.bin", "ckpt/w.bin"):
        assert mode(tmp_path / name) == file_mode, name
    assert mode(tmp_path / "ckpt") == dir_mode
    assert (tmp_path / "c.bin").read_bytes() == b"y"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.bin",
        "c.bin",
        "ckpt",
        "m.json",
        "plain",
        "plain.bin",
    ]


def full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_leaves_the_target_and_no_temp_files(tmp_path, monkeypatch):
    atomic_write_bytes(tmp_path / "latest", b"step_100")
    with atomic_dir(tmp_path / "step_100") as d:
        (d / "model.bin").write_bytes(b"old")
    monkeypatch.setattr(fileio, "_fsync_file", full_disk)  # the disk fills up on the final flush
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "latest", b"step_200")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "latest")
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "step_200") as d:
            (d / "model.bin").write_bytes(b"new")
            (d / "sub").mkdir()
            (d / "sub" / "opt.bin").write_bytes(b"new")
    monkeypatch.undo()
    with pytest.raises(OSError):  # a failure while the block writes, too
        with atomic_path(tmp_path / "latest") as tmp:
            tmp.write_bytes(b"half")
            full_disk()
    assert (tmp_path / "latest").read_bytes() == b"step_100"
    assert (tmp_path / "step_100" / "model.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_100"]  # no .tmp file or folder


def test_io_errors_turns_library_write_failures_into_a_named_oserror(tmp_path):
    # torch.save's own words for a short write (captured from a real failure on /dev/full)
    torch_text = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
    with pytest.raises(OSError) as info:
        with io_errors(tmp_path / "trainer.pt"):
            raise RuntimeError(torch_text)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "trainer.pt")
    assert isinstance(info.value.__cause__, RuntimeError)
    rust = "Error while serializing: IoError(Os { code: 122, kind: QuotaExceeded, message: ... })"
    with pytest.raises(OSError) as info:
        with io_errors(tmp_path / "model.safetensors"):
            raise RuntimeError(rust)
    assert info.value.errno == errno.EDQUOT and info.value.filename == str(tmp_path / "model.safetensors")
    with pytest.raises(OSError) as info:  # an OSError without a file name gets the path
        with io_errors(tmp_path / "x"):
            raise OSError(errno.EIO, "Input/output error")
    assert info.value.errno == errno.EIO and info.value.filename == str(tmp_path / "x")
    with pytest.raises(ValueError):  # anything else passes through untouched
        with io_errors(tmp_path / "x"):
            raise ValueError("a bug")
    with pytest.raises(RuntimeError, match="CUDA"):
        with io_errors(tmp_path / "x"):
            raise RuntimeError("CUDA error: device-side assert")


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, ["No space left", "keep_last", "--resume"]),
        (errno.EDQUOT, ["quota", "Free space"]),
        (errno.EIO, ["I/O error", "dmesg"]),
        (errno.EROFS, ["read-only", "--out"]),
        (errno.EACCES, ["permission denied", "permissions"]),
    ],
)
def test_write_faults_are_described_in_one_line(code, words):
    line = describe_write_error(OSError(code, os.strerror(code), "/runs/x/step_200"))
    assert "\n" not in line and "/runs/x/step_200" in line
    for word in words:
        assert word.lower() in line.lower(), (word, line)
    assert describe_write_error(OSError(errno.ENOENT, "No such file", "x")) is None


def test_check_out_dir_and_output_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(UserError, match="is a file, so no folder"):
        check_out_dir(tmp_path / "file" / "sub" / "out")
    with pytest.raises(UserError, match="parent folder .* does not exist"):
        check_out_dir(tmp_path / "missing" / "out", make_parents=False)
    assert check_out_dir(tmp_path / "missing" / "out") == tmp_path / "missing" / "out"
    # A failure removes the folders it made, with what it wrote, unless asked to keep them.
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "a" / "b" / "out") as out:
            (out / "half.bin").write_bytes(b"x")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "kept") as out:
            raise RuntimeError
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "resumable", keep=lambda p: (p / "progress").exists()) as out:
            (out / "progress").write_text("{}")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "kept", "resumable"]
