"""A checkpoint is verified before anything trusts it: its tensor files against the checksums its state.json
records, its tokenizer against the record it was built from, its weights' shapes against the config before
anything is allocated, and its weights for non-finite values. Each failure is one line naming the file."""

from __future__ import annotations

import hashlib
import json
import random
import resource
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from baseforge.config import load_run_config
from baseforge.errors import UserError
from baseforge.runlock import LOCK_FILE
from baseforge.train.checkpoint.format import load_model
from baseforge.train.loop import Trainer
from helpers import TINY, assert_clean_error, baseforge, sets

SHORT = [*TINY, "max_steps=4", "checkpoint_every=2"]
CKPT = Path("checkpoints") / "step_0000004"


@pytest.fixture(scope="module")
def trained(shakespeare_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("integrity") / "run"
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
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def flip_tensor_bytes(path: Path, n: int, seed: int = 0) -> None:
    """Flip `n` bytes of tensor data (after safetensors' 8-byte length and JSON header), as a bad disk
    or a torn copy would: the header still parses, so only a checksum can tell."""
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    rng = random.Random(seed)
    for at in rng.sample(range(start, len(data)), n):
        data[at] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


def rewrite_tensors(ckpt: Path, change) -> None:
    """Rewrite model.safetensors with `change` applied, and record the new file's checksum as a checkpoint
    written so would (these are weights a run or an import could write, not a damaged file)."""
    path = ckpt / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    state = json.loads((ckpt / "state.json").read_text())
    record = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}
    state.setdefault("files", {})["model.safetensors"] = record
    (ckpt / "state.json").write_text(json.dumps(state))


def edit_json(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def resume(run: Path, data: Path) -> Trainer:
    trainer = Trainer(load_run_config(run), data, run, resume=True, log=lambda *_: None)
    trainer.setup()
    return trainer


def test_every_tensor_file_is_recorded_with_its_checksum(run):
    files = json.loads((run / CKPT / "state.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "trainer.safetensors", "trainer.json"}
    for name, record in files.items():
        data = (run / CKPT / name).read_bytes()
        assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_flipped_bytes_in_the_weights_are_refused_naming_the_file(run):
    flip_tensor_bytes(run / CKPT / "model.safetensors", 1000)
    before = tree(run)
    result = baseforge("sample", run, "--max-new-tokens", "4", "--prompt", "x")
    assert_clean_error(result, "model.safetensors", "checksum", "--which")
    assert tree(run) == before


def test_flipped_bytes_refuse_a_resume_and_nothing_is_set_aside(run, shakespeare_dir):
    flip_tensor_bytes(run / CKPT / "trainer.safetensors", 1000, seed=1)
    before = tree(run)
    result = baseforge("train", "--data", shakespeare_dir, "--out", run, "--resume")
    assert_clean_error(result, "trainer.safetensors", "step_0000004", "checksum")
    assert tree(run) == before


def test_flipped_bytes_in_the_weights_refuse_a_resume(run, shakespeare_dir):
    flip_tensor_bytes(run / CKPT / "model.safetensors", 1000, seed=2)
    with pytest.raises(UserError, match="model.safetensors fails its checksum"):
        resume(run, shakespeare_dir)


def test_a_changed_digit_in_the_trainer_record_is_refused(run, shakespeare_dir):
    path = run / CKPT / "trainer.json"
    text = path.read_text()
    assert '"eps": 1e-08' in text
    path.write_text(text.replace('"eps": 1e-08', '"eps": 1e-09', 1))  # still valid, silently different
    with pytest.raises(UserError, match="trainer.json"):
        resume(run, shakespeare_dir)


def test_a_checkpoint_that_records_no_checksums_is_refused(run):
    edit_json(run / CKPT / "state.json", lambda s: s.pop("files", None))
    with pytest.raises(UserError, match="no checksum.*--which"):
        load_model(run)


def test_an_earlier_checkpoint_still_loads_when_the_latest_is_damaged(run):
    flip_tensor_bytes(run / CKPT / "model.safetensors", 1000)
    _, _, info = load_model(run / "checkpoints" / "step_0000002")
    assert info["state"]["step"] == 2


def test_a_tokenizer_record_renamed_to_gpt2_is_refused(run, gpt2_available):
    edit_json(run / CKPT / "state.json", lambda s: s["tokenizer"].update(name="gpt2"))
    with pytest.raises(
        UserError, match=r"state.json records tokenizer gpt2 \(512 tokens.* builds gpt2 \(50257"
    ):
        load_model(run)  # it loaded before, and sampling then ended in an IndexError


def test_a_tokenizer_record_with_another_vocab_size_is_refused(run):
    edit_json(run / CKPT / "state.json", lambda s: s["tokenizer"].update(vocab_size=500))
    with pytest.raises(UserError, match="tokenizer"):
        load_model(run)


def test_a_tokenizer_with_more_ids_than_the_model_is_refused(run):
    """A consistent record of another, larger tokenizer (file, hash and size all swapped): its ids past the
    model's embeddings would fail in the middle of sampling."""
    from baseforge.tokenizer import TrainedBPETokenizer

    texts = [(run / CKPT / "tokenizer.json").read_text()[:20000]]
    larger = TrainedBPETokenizer.train(texts, 600)
    larger.save(run / CKPT)
    edit_json(run / CKPT / "state.json", lambda s: s.update(tokenizer=larger.record()))
    with pytest.raises(UserError, match="more ids than the model's 512 embeddings"):
        load_model(run)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(run, bad):
    def poison(tensors):
        tensors["transformer.h.1.mlp.c_fc.weight"][3, 5] = bad

    rewrite_tensors(run / CKPT, poison)
    with pytest.raises(UserError, match=r"step_0000004: transformer\.h\.1\.mlp\.c_fc\.weight .*not finite"):
        load_model(run)  # it loaded before, and sampling then failed in torch.multinomial


def _small_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # far below the 51 GB it would ask for


def test_a_config_larger_than_its_weights_is_refused_before_allocating(run):
    edit_json(run / CKPT / "config.json", lambda c: c["model"].update(n_embd=65536))
    result = baseforge("sample", run, "--max-new-tokens", "4", preexec_fn=_small_address_space)
    assert_clean_error(result, "config.json", "model.safetensors", "shape")


def test_a_config_vocabulary_larger_than_the_weights_is_refused_by_shape(run):
    edit_json(run / CKPT / "config.json", lambda c: c["model"].update(vocab_size=1 << 24))
    with pytest.raises(UserError, match=r"transformer\.wte\.weight"):
        load_model(run)


def test_a_missing_or_extra_tensor_is_refused_before_loading(run):
    rewrite_tensors(run / CKPT, lambda t: t.pop("transformer.h.1.ln_2.weight"))
    with pytest.raises(UserError, match=r"transformer\.h\.1\.ln_2\.weight"):
        load_model(run)
    rewrite_tensors(run / CKPT, lambda t: t.update(planted=torch.zeros(2)))
    with pytest.raises(UserError, match="planted"):
        load_model(run)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # one process, on purpose
def test_sharded_checkpoints_verify_every_dcp_file(run, tmp_path):
    """An FSDP checkpoint's dcp/ files are recorded and verified too (written here by one process, which
    DCP allows without a process group); consolidate records the model.safetensors it writes."""
    import torch.distributed.checkpoint as dcp

    from baseforge.train.checkpoint.format import save_checkpoint
    from baseforge.train.checkpoint.sharded import consolidate

    model, tokenizer, info = load_model(run)
    staged = tmp_path / "sharded" / "checkpoints" / ".step_0000004.dcp.tmp"
    dcp.save({"model": model.state_dict()}, checkpoint_id=staged / "dcp")
    args = dict(step=4, model=model, config=info["config"], tokenizer=tokenizer, state={"tokens": 2048})
    ckpt = save_checkpoint(tmp_path / "sharded", staged=staged, **args)
    files = json.loads((ckpt / "state.json").read_text())["files"]
    assert "dcp/.metadata" in files and sum(name.endswith(".distcp") for name in files) >= 1

    (ckpt / "model.safetensors").unlink()
    consolidate(ckpt)
    assert load_model(ckpt)[0].state_dict().keys() == model.state_dict().keys()  # its new record verifies

    (ckpt / "model.safetensors").unlink()
    shard = next((ckpt / "dcp").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"dcp/{shard.name} fails its checksum"):
        consolidate(ckpt)
