"""Files read back from a run or data dir are untrusted: each planted or torn one is refused with one line
that names it, nothing outside the dir is read, and nothing is deleted before the checkpoint checks out."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from baseforge.config import load_run_config
from baseforge.errors import UserError
from baseforge.runlock import LOCK_FILE
from baseforge.train.checkpoint.format import find_checkpoint, load_model, read_checkpoint_meta
from baseforge.train.checkpoint.integrity import digest
from baseforge.train.loop import Trainer
from helpers import TINY, assert_clean_error, baseforge, sets

SHORT = [*TINY, "max_steps=4", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def trained(shakespeare_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("untrusted") / "run"
    result = baseforge(
        "train", "--data", shakespeare_dir, "--out", run, "--preset", "cpu-tiny", *sets(*SHORT)
    )
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "box" / "run"
    shutil.copytree(trained, copy)
    return copy


def tree(path: Path) -> dict:
    """Every file under `path` and its sha256: what a refused command must leave as it was (the run lock
    records who held it last, so it is left out)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
        if not p.is_symlink() and p.name != LOCK_FILE
    }


def edit_state(ckpt: Path, **changes) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    for key, value in changes.items():
        if value is ...:
            state.pop(key, None)
        else:
            state[key] = value
    (ckpt / "state.json").write_text(json.dumps(state))


def resume(run: Path, data: Path, **overrides):
    config = load_run_config(run)
    config.update(overrides)
    trainer = Trainer(config, data, run, resume=True, extend=bool(overrides), log=lambda *_: None)
    trainer.setup()
    trainer.checkpointer.prepare_run_dir(trainer.config, Path(data), resume=True, step=trainer.state.step)
    return trainer


def test_a_negative_step_is_refused_and_nothing_is_deleted(run, shakespeare_dir):
    edit_state(run / "checkpoints" / "step_0000004", step=-5)
    before = tree(run)
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume")
    assert_clean_error(result, "step", "state.json")
    assert tree(run) == before


def test_a_step_that_is_not_its_folders_is_refused_before_anything_is_discarded(run, shakespeare_dir):
    edit_state(run / "checkpoints" / "step_0000004", step=1)
    before = tree(run)
    with pytest.raises(UserError, match="step is 1 but the folder is step_0000004"):
        resume(run, shakespeare_dir)
    assert tree(run) == before
    edit_state(run / "checkpoints" / "step_0000004", step=1e30)
    with pytest.raises(UserError, match="not a whole number"):
        read_checkpoint_meta(run / "checkpoints" / "step_0000004")


def test_resuming_an_earlier_checkpoint_sets_the_later_future_aside(run, shakespeare_dir):
    (run / "checkpoints" / "latest").write_text("step_0000002\n")
    rows = len((run / "metrics.jsonl").read_text().splitlines())
    trainer = resume(run, shakespeare_dir)
    assert trainer.state.step == 2
    assert not (run / "checkpoints" / "step_0000004").exists()
    assert (run / "discarded" / "step_0000004" / "model.safetensors").is_file()  # moved, not deleted
    aside = (run / "discarded" / "metrics-after-step-2.jsonl").read_text().splitlines()
    kept = (run / "metrics.jsonl").read_text().splitlines()
    assert len(aside) + len(kept) == rows and all(json.loads(r)["step"] > 2 for r in aside)


def test_pointers_must_name_a_checkpoint_beside_them(run, shakespeare_dir, tmp_path):
    outside = tmp_path / "outside" / "ck"
    shutil.copytree(run / "checkpoints" / "step_0000004", outside)
    (run / "checkpoints" / "latest").write_text("../../outside/ck\n")
    with pytest.raises(UserError, match="not a checkpoint folder"):
        find_checkpoint(run)
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n" * 100)
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "latest").symlink_to(secret)
    result = baseforge("sample", run, "--max-new-tokens", "4")
    assert_clean_error(result, "symlink")
    assert "hunter2" not in result.stderr


def test_the_tokenizer_identity_is_required(run):
    ckpt = run / "checkpoints" / "step_0000004"
    state = json.loads((ckpt / "state.json").read_text())
    del state["tokenizer"]["sha256"]
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="sha256"):
        load_model(run)


def test_an_optimizer_moment_of_the_wrong_shape_is_refused(run, shakespeare_dir):
    ckpt = run / "checkpoints" / "step_0000004"
    tensors = load_file(str(ckpt / "trainer.safetensors"))
    skeleton = json.loads((ckpt / "trainer.json").read_text())
    names = json.dumps(skeleton)
    name = next(k for k, v in tensors.items() if v.dim() == 2 and f'"{k}"' in names and "exp_avg" in k)
    tensors[name] = torch.zeros(3, 5)
    save_file(tensors, str(ckpt / "trainer.safetensors"))
    files = json.loads((ckpt / "state.json").read_text())["files"]  # recorded so: past the checksum
    edit_state(ckpt, files={**files, "trainer.safetensors": digest(ckpt / "trainer.safetensors")})
    before = tree(run)
    with pytest.raises(UserError, match=r"exp_avg.* has shape \(3, 5\)"):
        resume(run, shakespeare_dir)
    assert tree(run) == before


@pytest.mark.parametrize("victim", ["model.safetensors", "trainer.safetensors", "trainer.json", "state.json"])
def test_a_torn_checkpoint_file_is_one_line(run, shakespeare_dir, victim):
    path = run / "checkpoints" / "step_0000004" / victim
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    before = tree(run)
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume")
    assert_clean_error(result, "step_0000004")
    assert tree(run) == before


def test_a_foreign_folder_among_the_checkpoints_is_left_alone(run, shakespeare_dir):
    (run / "checkpoints" / "step_abc").mkdir()
    trainer = resume(run, shakespeare_dir, max_steps=6)
    assert trainer.state.step == 4 and (run / "checkpoints" / "step_abc").is_dir()


def test_a_manifest_shard_outside_the_data_dir_is_refused(shakespeare_dir, tmp_path):
    from baseforge.data.loader import TokenData

    data = tmp_path / "data"
    shutil.copytree(shakespeare_dir, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["val"]["shards"][0]["file"] = str((shakespeare_dir / "val_000000.bin").resolve())
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="outside its folder"):
        TokenData(data, 64, 0).val_batches(2048, 4, 0, 1)
