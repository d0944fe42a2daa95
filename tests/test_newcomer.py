"""A newcomer's whole path on a corpus of their own, through the CLI as they would type it: prepare a
JSON-lines corpus, train the seed and the modern recipe (shrunk to test size), stop one with Ctrl-C
and resume it, extend the finished modern run, evaluate both, export, and make the report page."""

from __future__ import annotations

import json
import signal
import time

import pytest

from helpers import TINY, assert_clean_error, baseforge, popen, sets

SMALL = [item for item in TINY if not item.startswith("eval_every")] + ["eval_every=6", "checkpoint_every=4"]


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    """300 documents of a few hundred words, as a user's export of their notes might be."""
    text = (shared_data / "corpora" / "tinyshakespeare.txt").read_text()
    path = tmp_path_factory.mktemp("corpus") / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": text[i * 1500 : (i + 1) * 1500]}) + "\n" for i in range(300)))
    return path


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def stop_after_first_checkpoint(*args) -> None:
    """Ctrl-C once the run has saved a checkpoint: it finishes its step, saves, exits 130."""
    proc = popen(*args)
    latest = args[args.index("--out") + 1] / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "checkpoint saved" in out + err, out[-2000:] + err[-2000:]


def test_a_newcomers_path_from_a_jsonl_corpus_to_a_report(corpus, tmp_path):
    data, seed, modern = tmp_path / "data", tmp_path / "runs" / "seed", tmp_path / "runs" / "modern"
    # The raw file where a data dir belongs: pointed at prepare, never at writing over the file.
    wrong = baseforge("train", "--data", corpus, "--out", seed)
    assert_clean_error(wrong, "prepare")
    assert f"--out {corpus}" not in wrong.stderr
    made = ok(baseforge("prepare", corpus, "--out", data, "--tokenizer", "bpe:512"))
    assert "a seeded sample of whole documents (seed 0)" in made.stdout + made.stderr
    assert "val" in ok(baseforge("data", "info", data)).stdout

    # The seed recipe: stopped with Ctrl-C after its first checkpoint, then resumed to the end.
    train_seed = (
        "train",
        "--preset",
        "cpu-small",
        "--data",
        data,
        "--out",
        seed,
        *sets(*SMALL, "max_steps=24"),
    )
    stop_after_first_checkpoint(*train_seed)
    resumed = ok(baseforge("train", "--data", data, "--out", seed, "--resume"))
    assert "resuming from step" in resumed.stdout
    assert "validation" in resumed.stdout and "a seeded sample of whole documents" in resumed.stdout
    steps = [r["step"] for r in rows(seed) if r.get("loss") is not None]
    assert steps == sorted(set(steps)) and steps[-1] == 24

    # The modern recipe to its end (a WSD decay to 0), then extended with a stated re-warm.
    ok(
        baseforge(
            "train",
            "--preset",
            "cpu-small-modern",
            "--data",
            data,
            "--out",
            modern,
            *sets(*SMALL, "max_steps=12"),
        )
    )
    more = ("train", "--data", data, "--out", modern, "--resume", "--extend")
    assert_clean_error(baseforge(*more, *sets("max_steps=18")), "extend_lr")
    ok(baseforge(*more, *sets("max_steps=18", "extend_lr=0.5")))
    vals = [r["val_loss"] for r in rows(modern) if r.get("val_loss") is not None]
    assert rows(modern)[-1]["step"] == 18 and vals[-1] != vals[-2]  # the added steps trained

    # Both evaluated on the same held-out tokens, saved into the seed run for its report.
    scored = ok(baseforge("eval", seed, modern, "--data", data, "--tokens", "2048", "--save-to", seed))
    assert str(seed) in scored.stdout and str(modern) in scored.stdout

    # Exported: a folder transformers loads, with a card that names no local path.
    hf = tmp_path / "hf-seed"
    ok(baseforge("export", seed, "--out", hf))
    card = (hf / "README.md").read_text()
    assert str(tmp_path) not in card and "TODO" not in card
    assert_clean_error(baseforge("export", modern, "--out", hf), "--overwrite")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf)
    import torch

    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()

    # The report page: the run's figures and the saved evaluation.
    page = ok(baseforge("report", seed))
    assert str(seed / "report.md") in page.stdout
    report = (seed / "report.md").read_text()
    assert "held-out loss" in report.lower() and str(modern) in report
