"""Files and folders baseforge writes follow the umask (SECURITY.md: 0644 / 0755 under umask 022),
whichever library wrote them: safetensors' save_file makes 0600 files of its own."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from baseforge.fileio import atomic_dir, atomic_path, atomic_write_text


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_checkpoint_folder_written_by_safetensors_follows_the_umask(tmp_path, umask):
    target = tmp_path / "checkpoints" / "step_0000010"
    with atomic_dir(target) as tmp:
        save_file({"w": torch.zeros(3)}, str(tmp / "model.safetensors"))
        (tmp / "state.json").write_text("{}")
        (tmp / "dcp").mkdir()
        save_file({"w": torch.zeros(3)}, str(tmp / "dcp" / "shard.safetensors"))
    assert mode(target) == 0o777 & ~umask
    assert mode(target / "dcp") == 0o777 & ~umask
    for name in ("model.safetensors", "state.json", "dcp/shard.safetensors"):
        assert mode(target / name) == 0o666 & ~umask, name


def test_single_files_follow_the_umask(tmp_path, umask):
    with atomic_path(tmp_path / "model.safetensors") as tmp:
        save_file({"w": torch.zeros(3)}, str(tmp))
    atomic_write_text(tmp_path / "latest", "step_0000010\n")
    assert mode(tmp_path / "model.safetensors") == 0o666 & ~umask
    assert mode(tmp_path / "latest") == 0o666 & ~umask


def test_a_sharded_checkpoint_folder_adopted_from_several_writers_follows_the_umask(tmp_path, umask):
    staged, target = tmp_path / ".step_0000010.tmp", tmp_path / "step_0000010"
    (staged / "dcp").mkdir(parents=True)
    os.chmod(staged, 0o700)  # as mkdtemp makes it
    with atomic_dir(target, staged=staged):
        save_file({"w": torch.zeros(3)}, str(staged / "model.safetensors"))  # 0600, as safetensors writes
    assert mode(target) == 0o777 & ~umask
    assert mode(target / "dcp") == 0o777 & ~umask
    assert mode(target / "model.safetensors") == 0o666 & ~umask
