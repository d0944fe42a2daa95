"""Modern (non-GPT-2) runs export as a transformers remote-code folder that computes baseforge's forward."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from baseforge.eval import hf_export  # noqa: E402
from baseforge.model import GPT, ModelConfig  # noqa: E402
from helpers import TINY, baseforge  # noqa: E402

MODERN = [
    "pos_emb=rope",
    "norm=rmsnorm",
    "qk_norm=true",
    "mlp_act=relu2",
    "tie_weights=false",
    "zero_init_head=true",
    "logit_softcap=15",
    "bias=false",
    "qkv_bias=false",
]


@pytest.fixture(scope="module")
def modern_run(shakespeare_dir, tmp_path_factory):
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer

    run = tmp_path_factory.mktemp("modern") / "run"
    overrides = [*TINY, *MODERN, "max_steps=3", "dropout=0.0"]
    Trainer(resolve_config("cpu-tiny", None, overrides), shakespeare_dir, run, log=lambda *a: None).run()
    return run


def test_modern_run_exports_with_remote_code_and_matches_baseforge(modern_run, tmp_path):
    from baseforge.train.checkpoint.format import load_model

    out = tmp_path / "export"
    result = baseforge("export", modern_run, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "trust_remote_code" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_baseforge.BaseforgeForCausalLM"
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card and "Remote code needed" in card and "rotary" in card
    # Self-contained: the shipped code imports nothing of baseforge.
    for name in hf_export.REMOTE_CODE_FILES:
        assert "baseforge." not in (out / name).read_text().replace("baseforge.py", "")

    ours, tokenizer, _ = load_model(modern_run)
    assert ours.lm_head.weight.abs().max() > 0  # trained: the zero-initialised head moved
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    idx = torch.randint(0, ours.config.vocab_size, (2, 48))
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    prompt = "To be, or not to be"
    ids = tokenizer.encode(prompt)
    assert hf_tok.encode(prompt) == ids
    ours_greedy = greedy(ours, ids, 20)
    theirs_greedy = theirs.generate(
        torch.tensor([ids]), max_new_tokens=20, min_new_tokens=20, do_sample=False
    )[0, len(ids) :].tolist()
    assert theirs_greedy == ours_greedy


def greedy(model, ids: list[int], n: int) -> list[int]:
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq)[0][:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    return seq[0, len(ids) :].tolist()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_remote_code_model_matches_every_option_mix(tmp_path, tied, norm):
    # Any non-GPT-2 mix exports through the remote code: learned positions with RMSNorm, tied heads, biases.
    from safetensors.torch import save_file

    torch.manual_seed(0)
    pos = "learned" if norm == "rmsnorm" else "rope"
    config = ModelConfig(
        vocab_size=97, context=32, n_layer=2, n_head=2, n_embd=32, tie_weights=tied, pos_emb=pos, norm=norm,
        qk_norm=True, mlp_act="gelu", logit_softcap=0.0 if tied else 30.0, bias=True, qkv_bias=True,
    )  # fmt: skip
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norms and biases away from their 1 / 0 initialisation
    save_file(hf_export.remote_code_tensors(model), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf_export.remote_config_dict(config, eot_id=96)))
    hf_export.copy_remote_code(tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert (theirs.lm_head.weight is theirs.transformer.wte.weight) == tied
    idx = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        assert (model(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-5


def test_remote_code_left_padding_gives_unpadded_logits(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=50, context=16, n_layer=1, n_head=2, n_embd=16, pos_emb="rope", norm="rmsnorm"
    )
    model = GPT(config).eval()
    save_file(hf_export.remote_code_tensors(model), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf_export.remote_config_dict(config, eot_id=0)))
    hf_export.copy_remote_code(tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    short = torch.randint(1, 50, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        a = theirs(padded, attention_mask=mask).logits[:, 3:]
        assert (a - model(short)[0]).abs().max().item() < 1e-5


def test_init_from_a_modern_export_continues_the_model(modern_run, shakespeare_dir, tmp_path):
    from baseforge.train.metrics import read_metrics

    folder = tmp_path / "hf"
    assert baseforge("export", modern_run, "--out", folder).returncode == 0
    more = tmp_path / "more"
    items = [*TINY, "max_steps=1", "dropout=0.0"]
    result = baseforge(
        "train",
        "--data",
        shakespeare_dir,
        "--out",
        more,
        "--preset",
        "cpu-tiny",
        "--init-from",
        f"hf:{folder}",
        *[a for item in items for a in ("--set", item)],
    )
    assert result.returncode == 0, result.stderr
    ended = read_metrics(modern_run)[-1].val_loss
    assert read_metrics(more)[0].val_loss == pytest.approx(ended, abs=1e-5)


def export_random(config: ModelConfig, out, eot_id: int):
    """A randomised baseforge model and its remote-code export, loaded through transformers."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_file(hf_export.remote_code_tensors(model), str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(hf_export.remote_config_dict(config, eot_id=eot_id)))
    hf_export.copy_remote_code(out)
    return model, transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()


ROUND2 = [
    dict(attn_doc_mask=True),
    dict(attn_doc_mask=True, rope_doc_reset=True),
    dict(attn_window=5),
    dict(value_embeds=2, unet_skips=True),
    dict(attn_doc_mask=True, rope_doc_reset=True, attn_window=7, value_embeds=1, unet_skips=True),
]


@pytest.mark.parametrize("keys", ROUND2, ids=lambda k: ",".join(k))
def test_round2_keys_export_with_the_same_logits(tmp_path, keys):
    eot = 3
    config = ModelConfig(
        vocab_size=60, context=40, n_layer=5, n_head=2, n_embd=16, pos_emb="rope", norm="rmsnorm",
        tie_weights=False, doc_token=eot, **keys,
    )  # fmt: skip
    model, theirs = export_random(config, tmp_path, eot)
    idx = torch.randint(4, 60, (3, 40))
    idx[:, [9, 10, 25]] = eot  # several documents per window, one of a single token
    with torch.no_grad():
        assert (model(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4
        # left padding: the padded row's real tokens get the unpadded logits
        padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), idx[:1, :36]], dim=1)
        mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 36, dtype=torch.long)], dim=1)
        got = theirs(padded, attention_mask=mask).logits[:, 4:]
        assert (got - model(idx[:1, :36])[0]).abs().max().item() < 1e-4


def test_the_exported_model_keeps_documents_apart(tmp_path):
    """Through transformers, as in baseforge: the second document's logits do not depend on the first's
    content with the document mask on."""
    eot = 3
    config = ModelConfig(
        vocab_size=60, context=40, n_layer=2, n_head=2, n_embd=16, pos_emb="rope", norm="rmsnorm",
        tie_weights=False, doc_token=eot, attn_doc_mask=True,
    )  # fmt: skip
    _, theirs = export_random(config, tmp_path, eot)
    a, b = torch.randint(4, 60, (1, 40)), torch.randint(4, 60, (1, 40))
    a[:, 12] = eot
    b[:, 12:] = a[:, 12:]  # the same second document after another first one
    with torch.no_grad():
        la, lb = theirs(a).logits, theirs(b).logits
    assert (la[:, 12:] - lb[:, 12:]).abs().max().item() < 1e-5
    assert (la[:, :12] - lb[:, :12]).abs().max().item() > 1e-3


def test_an_export_without_the_optional_keys_still_loads():
    from baseforge.model import hf

    config = ModelConfig(vocab_size=60, context=40, n_layer=2, n_head=2, n_embd=16, pos_emb="rope")
    old = hf_export.remote_config_dict(config, eot_id=3)
    for key in hf.REMOTE_KEYS_OPTIONAL:
        del old[key]
    assert hf.config_from_remote(old) == config
