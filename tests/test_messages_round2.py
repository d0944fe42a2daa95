"""Messages that point the right way, round two (#34 item 6): a resume of a run another process is
training, --help-config under a preset, plan --from-run across devices, a BPE short of its size."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from baseforge.cli import main
from baseforge.overrides import resolve_config
from baseforge.runlock import RunLock
from helpers import TINY, assert_clean_error, baseforge, sets


def snapshot(folder: Path) -> dict:
    """Every file under `folder`: its bytes and modification time."""
    return {
        p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_resume_of_a_run_another_process_is_training_says_so_and_changes_nothing(tmp_path):
    run = tmp_path / "run"  # a live run before its first checkpoint: config, data record, metrics
    run.mkdir()
    (run / "config.json").write_text(json.dumps(resolve_config("cpu-tiny").to_dict()))
    (run / "data.json").write_text(json.dumps([{"path": "data", "manifest_sha256": "0" * 64, "step": 0}]))
    (run / "metrics.jsonl").write_text('{"step": 0, "tokens": 0, "loss": null, "val_loss": 7.1}\n')
    with RunLock(run):  # the trainer holds its run dir's lock
        before = snapshot(run)
        result = baseforge("train", "--out", run, "--resume")
        after = snapshot(run)
    assert_clean_error(result, "being trained by", f"pid {os.getpid()}", "wait for that run")
    assert "checkpoint" not in result.stderr  # was: "has no checkpoint yet (it stopped before the first)"
    assert after == before


def test_a_fresh_start_refused_by_a_run_that_made_the_folder_first_leaves_it(
    shakespeare_dir, tmp_path, monkeypatch, capsys
):
    """The race: this start finds no folder and makes it, another trainer locks it first and writes."""
    run = tmp_path / "run"
    acquire, other = RunLock.acquire, []

    def another_wins(self):
        if not other:
            other.append(acquire(RunLock(self.run_dir)))  # the other trainer
            (self.run_dir / "metrics.jsonl").write_text('{"step": 0, "tokens": 0, "loss": null}\n')
        return acquire(self)

    monkeypatch.setattr(RunLock, "acquire", another_wins)
    try:
        argv = ["train", "--data", str(shakespeare_dir), "--out", str(run), "--preset", "cpu-tiny"]
        assert main([*argv, *sets(*TINY, "max_steps=2")]) == 1
    finally:
        for lock in other:
            lock.release()
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert (run / "metrics.jsonl").is_file()  # was: removed with the folder this start had made


@pytest.mark.parametrize("preset", [None, "cpu-tiny"])
def test_help_config_says_whose_defaults_it_shows(preset, capsys):
    assert main(["train", "--help-config", *(["--preset", preset] if preset else [])]) == 0
    lines = capsys.readouterr().out.splitlines()
    if preset is None:
        assert "base values" in lines[0] and "--help-config --preset NAME" in lines[0]
        assert "  n_embd = 768  (int)" in lines
    else:
        assert lines[0].startswith("defaults below: preset cpu-tiny's values")
        assert "  n_embd = 128  (int)" in lines and "  context = 128  (int)" in lines
        assert "  vocab_size = None  (int)" in lines  # from the data's tokenizer, as cpu-tiny says


def test_plan_refuses_the_mfu_of_a_cpu_run_for_a_gpu(shakespeare_dir, tmp_path, capsys):
    from baseforge.train.loop import Trainer

    run = tmp_path / "cpu-run"
    config = resolve_config("cpu-tiny", None, [*TINY, "max_steps=3"])
    Trainer(config, shakespeare_dir, run, log=lambda *a: None).run()
    assert json.loads((run / "summary.json").read_text())["device"] == "cpu"
    assert main(["plan", "--preset", "gpt2-124m", "--gpu", "rtx-4090", "--from-run", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert "trained on the CPU" in err and "RTX 4090" in err
    assert "drop --from-run" in err and "--mfu" in err and "\n" not in err
    (run / "summary.json").unlink()  # unfinished: its rows still hold no GPU memory
    assert main(["plan", "--preset", "gpt2-124m", "--from-run", str(run), "--json"]) == 1
    assert "did not train on a CUDA GPU" in capsys.readouterr().err


def gpu_run(folder: Path, gpu_name: str | None) -> Path:
    """What a CUDA run leaves for the planner: rows with MFU and GPU memory; summary.json once finished."""
    folder.mkdir()
    rows = [{"step": s, "tokens": s * 512, "mfu": m, "peak_alloc_gib": 3.0} for s, m in ((9, 0.5), (18, 0.3))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if gpu_name:
        summary = {"device": "cuda:0", "peak_source": f"table: {gpu_name}", "mfu": 0.3}
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def plan_json(run: Path, gpu: str, capsys) -> dict:
    assert main(["plan", "--preset", "gpt2-124m", "--gpu", gpu, "--from-run", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_says_when_a_run_measured_its_mfu_on_another_gpu(tmp_path, capsys):
    rtx = gpu_run(tmp_path / "rtx", "NVIDIA GeForce RTX 4090")
    other = plan_json(rtx, "h100-sxm", capsys)
    assert other["mfu"] == pytest.approx(0.3)
    assert "RTX 4090" in other["mfu_source"]
    assert "RTX 4090" in other["mfu_note"] and "H100 SXM" in other["mfu_note"]
    assert plan_json(rtx, "rtx-4090", capsys)["mfu_note"] == ""  # the same GPU: nothing to say
    unnamed = plan_json(gpu_run(tmp_path / "unfinished", None), "h100-sxm", capsys)
    assert "does not record which GPU" in unnamed["mfu_note"]
    argv = ["plan", "--preset", "gpt2-124m", "--gpu", "h100-sxm", "--from-run", str(rtx)]
    assert main(argv) == 0
    assert "note: measured on NVIDIA GeForce RTX 4090, not the H100 SXM" in capsys.readouterr().out


def test_a_bpe_that_runs_out_of_merges_says_how_far_it_got(tmp_path, capsys):
    source = tmp_path / "tiny.txt"
    source.write_text("the cat sat on the mat and the dog sat on the log\n")  # 18 tokens or so
    data = tmp_path / "data"
    assert main(["prepare", str(source), "--out", str(data), "--tokenizer", "bpe:4096"]) == 0
    vocab = json.loads((data / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    assert 257 < vocab < 4096  # the manifest holds the size reached, not the one asked
    warning = [line for line in capsys.readouterr().out.splitlines() if "bpe:4096" in line]
    assert len(warning) == 1 and warning[0].startswith("warning:"), warning
    assert f"reached {vocab:,} tokens, not 4,096" in warning[0] and "too small" in warning[0]
    assert main(["prepare", str(source), "--out", str(tmp_path / "d2"), "--tokenizer", "bpe:260"]) == 0
    assert "warning: --tokenizer" not in capsys.readouterr().out  # 3 merges: reached


def test_plan_refuses_two_sources_of_its_mfu(tmp_path):
    """--mfu beside --from-run: the run's MFU was used and --mfu dropped without a word."""
    result = baseforge("plan", "--preset", "gpt2-124m", "--mfu", "0.5", "--from-run", tmp_path)
    assert_clean_error(result, "--mfu and --from-run", "keep one")
