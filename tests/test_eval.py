"""Evaluation and interop against transformers: loss on the same tokens, export, import, HellaSwag."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baseforge.data.manifest import Manifest, SplitEntry, write_manifest
from baseforge.data.shards import write_shard
from baseforge.eval.hellaswag import evaluate_hellaswag, item_from_row, preprocess, score_item
from baseforge.model import GPT, ModelConfig
from baseforge.tokenizer import GPT2Tokenizer
from helpers import assert_clean_error, baseforge

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory, shared_data, gpt2_available):
    """A data dir of GPT-2 tokens (tiktoken) from Tiny Shakespeare; the val split holds 4096 tokens."""
    tok = GPT2Tokenizer()
    text = (shared_data / "corpora" / "tinyshakespeare.txt").read_text()[:200_000]
    ids = np.array(tok.encode(text), dtype=np.int64)
    out = tmp_path_factory.mktemp("gpt2data")
    write_shard(out / "train_000000.bin", ids[4096:], tok.vocab_size)
    write_shard(out / "val_000000.bin", ids[:4096], tok.vocab_size)
    write_manifest(
        out,
        Manifest(
            tokenizer=tok.record(),
            sources=("test",),
            documents=2,
            tokens=len(ids),
            splits={
                "train": SplitEntry.of([("train_000000.bin", len(ids) - 4096)], 1),
                "val": SplitEntry.of([("val_000000.bin", 4096)], 1),
            },
        ),
    )
    return out, ids[:4096]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, gpt2_available):
    """A random transformers GPT-2 with GPT-2's tokenizer files (vocab.json + merges.txt)."""
    from baseforge.eval.hf_export import write_gpt2_tokenizer

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=50257,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    out = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    model.save_pretrained(out)
    write_gpt2_tokenizer(GPT2Tokenizer(), out, 64)
    return out, model


@pytest.fixture(scope="module")
def bpe_export(tmp_path_factory, shakespeare_dir):
    """A tiny run on a trained 512-token BPE (not GPT-2's) and its `baseforge export` folder."""
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer
    from helpers import TINY

    tmp = tmp_path_factory.mktemp("bpe-run")
    run = tmp / "run"
    Trainer(
        resolve_config("cpu-tiny", None, [*TINY, "max_steps=2", "dropout=0"]),
        shakespeare_dir,
        run,
        log=lambda *a: None,
    ).run()
    result = baseforge("export", run, "--out", tmp / "export")
    assert result.returncode == 0, result.stderr
    return run, tmp / "export"


def test_eval_hf_model_matches_transformers_loss(gpt2_data, hf_dir):
    data, val = gpt2_data
    path, model = hf_dir
    result = baseforge("eval", f"hf:{path}", "--data", data, "--tokens", "1024", "--json")
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout)[0]
    # transformers on the same windows: 16 windows of 64 inputs + shifted targets, in order.
    windows = torch.tensor(val[: 16 * 64 + 1]).long()
    losses = []
    with torch.no_grad():
        for i in range(16):
            chunk = windows[i * 64 : (i + 1) * 64 + 1]
            logits = model(chunk[None, :-1]).logits[0]
            losses.append(F.cross_entropy(logits, chunk[1:]).item())
    assert ours["tokens"] == 1024
    assert abs(ours["loss"] - sum(losses) / len(losses)) < 1e-4
    assert ours["perplexity"] == pytest.approx(np.exp(ours["loss"]))


def test_import_then_export_round_trips_every_tensor(hf_dir, tmp_path, gpt2_available):
    path, model = hf_dir
    run = tmp_path / "run"
    assert baseforge("import-gpt2", path, "--out", run).returncode == 0
    result = baseforge("export", run, "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    theirs, ours = model.state_dict(), back.state_dict()
    for name, tensor in theirs.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        assert torch.equal(tensor, ours[name]), name
    # The exported tokenizer is GPT-2's: the same ids as tiktoken.
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    text = "Hello world! It's 2026, über-café\n\n  spaces   and <|endoftext|> text."
    assert tok.encode(text) == GPT2Tokenizer().enc.encode(text, allowed_special="all")
    assert "baseforge" in (tmp_path / "export" / "README.md").read_text()


def test_export_gives_baseforge_logits_in_transformers(shakespeare_dir, tmp_path):
    from baseforge.overrides import resolve_config
    from baseforge.train.checkpoint.format import load_model
    from baseforge.train.loop import Trainer
    from helpers import TINY

    run = tmp_path / "run"
    Trainer(
        resolve_config("cpu-tiny", None, [*TINY, "max_steps=2", "bias=false"]),
        shakespeare_dir,
        run,
        log=lambda *a: None,
    ).run()
    result = baseforge("export", run, "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr
    ours, tokenizer, _ = load_model(run)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    idx = torch.randint(0, ours.config.vocab_size, (2, 32))
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert hf_tok.encode("To be, or not to be") == tokenizer.encode("To be, or not to be")


def test_hellaswag_scoring_by_hand(gpt2_available):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50257, context=64, n_layer=1, n_head=2, n_embd=16)).eval()
    tok = GPT2Tokenizer()
    row = {
        "activity_label": "Pets",
        "ctx_a": "The cat sat on the rug.",
        "ctx_b": "it",
        "ctx": "The cat sat on the rug. it",
        "endings": ["purrs.", "flies to the moon and sings.", "dog", "sleeps [step] soundly"],
        "label": 0,
    }
    item = item_from_row(row)
    assert item.query == "Pets: The cat sat on the rug. It"
    assert item.choices[3] == "sleeps soundly"

    def by_hand(context: str, ending: str) -> list[float]:
        ctx, ids = tok.encode(context), tok.encode(context) + tok.encode(" " + ending)
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([ids]))[0][0], dim=-1)
        return [logp[i - 1, ids[i]].item() for i in range(len(ctx), len(ids))]

    scores = score_item(model, tok, item)
    for k in range(4):
        lm_eval_ll = by_hand(item.query, item.choices[k])
        assert scores["ll"][k] == pytest.approx(sum(lm_eval_ll), abs=1e-4)
        assert scores["ll_per_char"][k] == pytest.approx(sum(lm_eval_ll) / len(item.choices[k]), abs=1e-4)
        llmc = by_hand(row["ctx"], row["endings"][k])
        assert scores["ll_per_token"][k] == pytest.approx(sum(llmc) / len(llmc), abs=1e-4)


def test_hellaswag_text_cleaning_matches_lm_eval(shared_data):
    assert preprocess(" How to cook [title] Boil water. [step] Add  salt [header] ") == (
        "How to cook. Boil water. Add salt "  # stripped before the brackets go, as lm-eval does
    )
    utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    from baseforge.fileio import read_jsonl

    rows = [
        row
        for _, row in zip(
            range(300), (r for _, r in read_jsonl(shared_data / "eval" / "hellaswag_val.jsonl.gz"))
        )
    ]
    for row in rows:
        ours = item_from_row(row)
        assert ours.query == utils.preprocess(
            row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize()
        )
        assert ours.choices == [utils.preprocess(e) for e in row["endings"]]


def test_exported_bpe_run_evaluates_through_hf_dir_like_the_run(bpe_export, shakespeare_dir, shared_data):
    run, export = bpe_export
    result = baseforge("eval", run, f"hf:{export}", "--data", shakespeare_dir, "--tokens", "1024", "--json")
    assert result.returncode == 0, result.stderr
    ours, theirs = json.loads(result.stdout)
    assert ours["tokens"] == theirs["tokens"] == 1024
    assert abs(ours["loss"] - theirs["loss"]) < 1e-4
    hs = shared_data / "eval" / "hellaswag_val.jsonl.gz"
    result = baseforge("hellaswag", run, f"hf:{export}", "--data", hs, "--limit", "4", "--json")
    assert result.returncode == 0, result.stderr
    a, b = json.loads(result.stdout)
    assert {k: a[k] for k in ("acc", "acc_norm", "acc_norm_tok")} == {
        k: b[k] for k in ("acc", "acc_norm", "acc_norm_tok")
    }
    sampled = baseforge(
        "sample", f"hf:{export}", "--prompt", "KING", "--max-new-tokens", "8", "--temperature", "0"
    )
    direct = baseforge("sample", run, "--prompt", "KING", "--max-new-tokens", "8", "--temperature", "0")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout == direct.stdout and sampled.stdout.startswith("KING")


def test_hf_folder_without_tokenizer_is_a_clear_error(hf_dir, tmp_path, gpt2_data):
    path, _ = hf_dir
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((path / name).read_bytes())
    assert_clean_error(baseforge("eval", f"hf:{bare}", "--data", gpt2_data[0]), "no tokenizer")


def test_sample_stops_at_end_of_text_unless_told_not_to(bpe_export, monkeypatch, capsys):
    import baseforge.cli.sample
    from baseforge.cli import main

    run, _ = bpe_export
    seen = []

    def fake_generate(model, prompt, max_new_tokens, **kwargs):
        seen.append(kwargs)
        return [5]

    monkeypatch.setattr(baseforge.cli.sample, "generate", fake_generate)
    assert main(["sample", str(run), "--device", "cpu"]) == 0
    assert main(["sample", str(run), "--device", "cpu", "--no-stop"]) == 0
    assert seen[0]["stop_at_eot"] is True and seen[1]["stop_at_eot"] is False
    from baseforge.train.checkpoint.format import load_model

    eot = load_model(run)[1].eot_id  # the trained BPE's <|endoftext|>, not GPT-2's 50256
    assert seen[0]["eot_id"] == eot != 50256


@pytest.mark.slow  # 43 s; HellaSwag scoring is checked against lm-eval in test_harness
def test_random_model_scores_near_chance_on_hellaswag(shared_data, gpt2_available):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50257, context=128, n_layer=1, n_head=2, n_embd=16)).eval()
    result = evaluate_hellaswag(
        model, GPT2Tokenizer(), shared_data / "eval" / "hellaswag_val.jsonl.gz", limit=300
    )
    assert result["items"] == 300
    assert 0.17 < result["acc"] < 0.33 and 0.17 < result["acc_norm"] < 0.33
    assert 0.17 < result["acc_norm_tok"] < 0.33


def test_eval_errors_are_one_line(gpt2_data, shakespeare_dir, hf_dir, tmp_path):
    data, _ = gpt2_data
    path, _ = hf_dir
    assert_clean_error(baseforge("eval", f"hf:{tmp_path / 'none'}", "--data", data), "does not exist")
    assert_clean_error(baseforge("eval", f"hf:{path}", "--data", shakespeare_dir), "tokenizer")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    assert_clean_error(baseforge("eval", f"hf:{llama}", "--data", data), "GPT-2")
    assert_clean_error(baseforge("eval", f"hf:{path}", "--data", tmp_path / "nodata"), "does not exist")


def test_report_page_with_saved_evals(shakespeare_dir, tmp_path, shared_data):
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer
    from helpers import TINY

    run = tmp_path / "run"
    Trainer(
        resolve_config("cpu-tiny", None, [*TINY, "max_steps=4", "checkpoint_every=4"]),
        shakespeare_dir,
        run,
        log=lambda *a: None,
    ).run()
    saved = baseforge("eval", run, "--data", shakespeare_dir, "--tokens", "1024", "--save-to", run)
    assert saved.returncode == 0, saved.stderr
    result = baseforge("report", run)
    assert result.returncode == 0, result.stderr
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert "Held-out loss" in md and "## Losses" in md and "report.png" in md
    assert "data:image/png;base64," in page and "<table>" in page
    assert_clean_error(baseforge("report", tmp_path / "nothing"), "not a run dir")


def test_hellaswag_during_training(gpt2_data, shared_data, tmp_path):
    from baseforge.train.metrics import read_metrics
    from helpers import TINY, sets

    data, _ = gpt2_data
    hs = shared_data / "eval" / "hellaswag_val.jsonl.gz"
    run = tmp_path / "run"
    result = baseforge(
        "train",
        "--data",
        data,
        "--out",
        run,
        "--preset",
        "cpu-tiny",
        *sets(*TINY, "max_steps=4", "evaluators_every=2", "hellaswag_limit=8", f"hellaswag_data={hs}"),
    )
    assert result.returncode == 0, result.stderr
    scored = [r.step for r in read_metrics(run) if "hellaswag_acc_norm" in r.evals]
    assert scored == [2, 4]
