"""The instruction-following test: the loss mask, the split, fine-tune -> answer -> judge end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from baseforge.data.batch_plan import BatchLayout
from baseforge.data.instructions import (
    RESPONSE_HEADER,
    InstructionData,
    encode_example,
    format_prompt,
    split_examples,
)
from baseforge.model import GPT, ModelConfig
from baseforge.train.metrics import read_metrics
from helpers import TINY, assert_clean_error, baseforge, sets
from test_judge import JudgeServer


@pytest.fixture(scope="module")
def ift_file(shared_data):
    path = shared_data / "ift" / "instruction-data.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def base_run(shakespeare_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("base") / "run"
    result = baseforge(
        "train", "--data", shakespeare_dir, "--out", run, *sets(*TINY, "max_steps=4", "context=128")
    )
    assert result.returncode == 0, result.stderr
    return run


def test_split_is_85_5_10_and_stable(ift_file):
    examples = json.loads(ift_file.read_text())
    splits = split_examples(examples)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [935, 55, 110]
    assert splits["test"][7]["id"] == "test-0007"
    assert split_examples(examples)["test"] == splits["test"]  # same items for every model


def test_prompt_format_is_the_books():
    ex = {"instruction": "Add.", "input": "2 + 2", "output": "4"}
    assert format_prompt(ex) == (
        "Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n"
        "2 + 2\n\n### Response:\n"
    )
    assert "### Input" not in format_prompt({**ex, "input": ""})


def test_loss_mask_leaves_prompt_tokens_out(shakespeare_dir):
    from baseforge.data.manifest import read_manifest
    from baseforge.tokenizer import load_tokenizer

    tok = load_tokenizer(read_manifest(shakespeare_dir).tokenizer, shakespeare_dir)
    ex = {"instruction": "Name a colour.", "input": "", "output": "Blue, like the sky."}
    inputs, targets = encode_example(tok, ex, 512, mask_prompt=True)
    prompt_len = len(tok.encode(format_prompt(ex)))
    assert all(t == -100 for t in targets[: prompt_len - 1])
    assert targets[prompt_len - 1 :] == (tok.encode(ex["output"]) + [tok.eot_id])  # the response and its EOT
    _, unmasked = encode_example(tok, ex, 512, mask_prompt=False)
    assert -100 not in unmasked
    # The model's loss equals a hand-computed CE over the response positions only.
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context=512, n_layer=1, n_head=2, n_embd=16))
    x, y = torch.tensor([inputs]), torch.tensor([targets])
    _, loss = model(x, y)
    logits, _ = model(x)
    keep = y[0] != -100
    manual = F.cross_entropy(logits[0][keep], y[0][keep])
    assert loss.item() == pytest.approx(manual.item(), abs=1e-5)
    assert RESPONSE_HEADER.strip() in format_prompt(ex)


def test_batches_are_padded_and_a_pure_function_of_the_step(ift_file, shakespeare_dir):
    from baseforge.data.manifest import read_manifest
    from baseforge.tokenizer import load_tokenizer

    tok = load_tokenizer(read_manifest(shakespeare_dir).tokenizer, shakespeare_dir)
    a = InstructionData(ift_file, tok, 256, seed=5)
    b = InstructionData(ift_file, tok, 256, seed=5)
    layout = BatchLayout(micro_batch=4, grad_accum=2)
    xa, ya = a.micro_batch(3, 1, layout)
    xb, yb = b.micro_batch(3, 1, layout)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    lengths = (ya != -100).sum(1)
    assert xa.shape[0] == 4 and (lengths > 0).all()
    # Padding: inputs padded with end-of-text, targets with -100.
    short = int((xa != tok.eot_id).sum(1).argmin())
    assert ya[short, -1] == -100 or xa.shape[1] == (xa[short] != tok.eot_id).sum()


def test_finetune_answer_judge_end_to_end(ift_file, base_run, tmp_path):
    out = tmp_path / "ift"
    result = baseforge(
        "finetune",
        base_run,
        "--data",
        ift_file,
        "--out",
        out,
        "--limit",
        "40",
        *sets("micro_batch=4", "global_batch=8", "precision=fp32"),
    )
    assert result.returncode == 0, result.stderr
    rows = read_metrics(out)
    assert rows[-1].step == 10  # 2 epochs of 40 examples at 8 a step
    assert (out / "checkpoints" / "best").is_file()
    assert json.loads((out / "finetune.json").read_text())["examples"]["train"] == 40
    answers = tmp_path / "answers.jsonl"
    args = ["answer", out, "--data", ift_file, "--out", answers, "--limit", "3", "--max-new-tokens", "12"]
    answered = baseforge(*args)
    assert answered.returncode == 0, answered.stderr
    # Not a terminal: plain progress lines on stderr, no bar's carriage returns.
    assert "answer 3/3 item (100%)" in answered.stderr and "\r" not in answered.stderr
    first = answers.read_text()
    refused = baseforge(*args)  # earlier answers are not written over without a word
    assert refused.returncode == 1 and "--overwrite" in refused.stderr and answers.read_text() == first
    assert baseforge(*args, "--overwrite").returncode == 0 and answers.read_text() == first  # deterministic
    rows = [json.loads(line) for line in first.splitlines()]
    assert [r["id"] for r in rows] == ["test-0000", "test-0001", "test-0002"]
    assert set(rows[0]) == {"id", "model", "instruction", "input", "reference", "answer"}
    # A second "model": the base run answering directly, then both judged side by side.
    base_answers = tmp_path / "base.jsonl"
    assert (
        baseforge(
            "answer",
            base_run,
            "--data",
            ift_file,
            "--out",
            base_answers,
            "--limit",
            "3",
            "--max-new-tokens",
            "12",
            "--name",
            "base",
        ).returncode
        == 0
    )
    server = JudgeServer()
    try:
        judged = baseforge(
            "judge",
            answers,
            base_answers,
            "--judge",
            "j",
            "--base-url",
            server.url,
            "--api-key-env",
            "NONE",
            "--json",
            "--backoff",
            "0.01",
        )
    finally:
        server.close()
    assert judged.returncode == 0, judged.stderr
    table = json.loads(judged.stdout)
    assert sorted(r["model"] for r in table["models"]) == ["base", "ift"] and all(
        r["n"] == 3 for r in table["models"]
    )


def test_finetune_resumes_exactly(ift_file, base_run, tmp_path):
    common = ["--data", ift_file, "--limit", "24"]
    steps = sets("micro_batch=4", "global_batch=4", "precision=fp32", "log_every=1", "checkpoint_every=3")
    ref = baseforge("finetune", base_run, *common, "--out", tmp_path / "ref", *steps)
    assert ref.returncode == 0, ref.stderr
    cut = tmp_path / "cut"
    first = baseforge("finetune", base_run, *common, "--out", cut, *steps, *sets("max_steps=6"))
    assert first.returncode == 0, first.stderr
    again = baseforge("finetune", base_run, *common, "--out", cut, "--resume", *sets("max_steps=12"))
    assert again.returncode == 0, again.stderr
    losses = lambda run: [(r.step, r.loss) for r in read_metrics(run) if r.loss is not None]  # noqa: E731
    assert losses(cut) == losses(tmp_path / "ref")


def test_finetune_errors_are_one_line(base_run, tmp_path):
    assert_clean_error(
        baseforge("finetune", base_run, "--data", tmp_path / "none.json", "--out", tmp_path / "o"),
        "not found",
    )
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": 1}]')
    assert_clean_error(baseforge("finetune", base_run, "--data", bad, "--out", tmp_path / "o"), "instruction")
    bad.write_text("{not json")
    assert_clean_error(
        baseforge("finetune", base_run, "--data", bad, "--out", tmp_path / "o"), "not valid JSON"
    )
