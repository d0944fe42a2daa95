"""The model against real references: HF GPT-2's parameter counts, logits and loss, and GPT-2's init."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, fields, replace

import pytest
import torch

from baseforge.config import TrainConfig
from baseforge.model import GPT, KVCache, ModelConfig, hf
from baseforge.presets import PRESETS

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

# every key's default, to tell what a preset changes
DEFAULTS = {f.name: f.default for cls in (ModelConfig, TrainConfig) for f in fields(cls)}
TINY = dict(vocab_size=300, context=32, n_layer=2, n_head=4, n_embd=32)


def preset(name: str, **changes) -> ModelConfig:
    model = PRESETS[name].model
    return replace(model, **{"vocab_size": model.vocab_size or 300, **changes})


def meta_count(module_factory) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in module_factory().parameters())


# --- parameter counts ------------------------------------------------------------------------


# gpt2-124m's head is padded to 50304 rows: 47 x 768 more than OpenAI's 124,439,808.
@pytest.mark.parametrize("name,expected", [("gpt2-small-seed", 163_009_536), ("gpt2-124m", 124_475_904)])
def test_param_count_exact(name, expected):
    with torch.device("meta"):
        model = GPT(preset(name))
    assert model.num_params() == expected


def test_gpt2_124m_is_openai_gpt2_small_with_a_padded_head():
    from dataclasses import replace

    config = preset("gpt2-124m")
    assert config.vocab_size == 50304 and config.vocab_size % 64 == 0
    assert meta_count(lambda: GPT(replace(config, vocab_size=50257))) == 124_439_808


@pytest.mark.parametrize("name", ["gpt2-124m", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_param_count_matches_hf(name):
    # Known: 124,439,808 / 354,823,168 / 774,030,080 / 1,557,611,200 (HF GPT2LMHeadModel, tied head).
    known = {
        "gpt2-124m": 124_475_904,  # padded head (50304 rows); 124,439,808 at 50257
        "gpt2-medium": 354_823_168,
        "gpt2-large": 774_030_080,
        "gpt2-xl": 1_557_611_200,
    }
    config = preset(name)
    ours = meta_count(lambda: GPT(config))
    theirs = meta_count(lambda: GPT2LMHeadModel(GPT2Config(**hf.hf_config_dict(config))))
    assert ours == theirs == known[name]


# --- HF GPT-2 reference ----------------------------------------------------------------------


def random_hf(seed=0, **changes) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=300,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        **changes,
    )
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF inits biases and norms to 0/1: randomise everything so the mapping is tested
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.dim() == 1 else 0.05)
    return model


def randomise(model: GPT, seed=0) -> GPT:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.dim() == 1 else 0.05)
    return model.eval()


def hf_labels(targets):
    """HF's labels for our targets: HF shifts inside (labels[t] is the target of position t-1) and
    so scores one position fewer; our last target must be -100 for the two losses to agree."""
    assert torch.all(targets[:, -1] == -100)
    return torch.cat([torch.full_like(targets[:, :1], -100), targets[:, :-1]], dim=1)


def shifted(idx):
    targets = idx.roll(-1, dims=1)
    targets[:, -1] = -100
    return targets


def tokens(batch=2, length=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 300, (batch, length), generator=g)


@pytest.mark.parametrize("tied", [True, False])
def test_load_from_hf_same_logits_and_loss(tied):
    ref = random_hf(tie_word_embeddings=tied)
    config = hf.config_from_hf(ref.config.to_dict())
    assert config.tie_weights == tied
    model = GPT(config).eval()
    model.load_state_dict(hf.from_hf_state_dict(ref.state_dict(), config))
    idx = tokens()
    targets = shifted(idx)
    targets[0, :5] = -100  # masked positions: same convention as HF's labels
    with torch.no_grad():
        logits, _ = model(idx)
        _, loss = model(idx, targets)  # the fused head + loss path
        out = ref(idx, labels=hf_labels(targets))
    assert (logits - out.logits).abs().max().item() < 1e-4
    assert abs(loss.item() - out.loss.item()) < 1e-5


def test_load_bare_gpt2model_checkpoint():
    # OpenAI's `gpt2` repo holds a GPT2Model state dict: no `transformer.` prefix and no lm_head.
    ref = random_hf()
    bare = {
        k.removeprefix("transformer."): v for k, v in ref.state_dict().items() if k.startswith("transformer.")
    }
    config = hf.config_from_hf(ref.config.to_dict())
    model = GPT(config).eval()
    model.load_state_dict(hf.from_hf_state_dict(bare, config))
    idx = tokens()
    with torch.no_grad():
        assert (model(idx)[0] - ref(idx).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    "tied,qkv_bias,bias",
    [
        (True, True, True),
        (False, True, True),
        (True, False, True),
        (False, False, True),
        (False, False, False),
        (True, True, False),
    ],
)
def test_export_to_hf_same_logits(tied, qkv_bias, bias):
    config = ModelConfig(**TINY, tie_weights=tied, qkv_bias=qkv_bias, bias=bias)
    model = randomise(GPT(config))
    assert hf.exportable(config) == []
    ref = GPT2LMHeadModel(GPT2Config(**hf.hf_config_dict(config))).eval()
    result = ref.load_state_dict(hf.to_hf_state_dict(model.state_dict(), config), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= ({"lm_head.weight"} if tied else set())
    assert (ref.lm_head.weight is ref.transformer.wte.weight) == tied
    idx = tokens()
    with torch.no_grad():
        ours, _ = model(idx)
        _, loss = model(idx, shifted(idx))
        theirs = ref(idx, labels=hf_labels(shifted(idx)))
    assert (ours - theirs.logits).abs().max().item() < 1e-4
    assert abs(loss.item() - theirs.loss.item()) < 1e-5
    # And back again: a config without biases takes the zeros the export added.
    back = GPT(config).eval()
    back.load_state_dict(hf.from_hf_state_dict(ref.state_dict(), config))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, back.state_dict()[name]), name


def test_import_refuses_nonzero_bias_the_config_lacks():
    ref = random_hf()
    config = hf.config_from_hf(ref.config.to_dict()).with_(qkv_bias=False)
    with pytest.raises(ValueError, match="non-zero"):
        hf.from_hf_state_dict(ref.state_dict(), config)


def test_config_from_hf_refuses_other_variants():
    base = GPT2Config(**hf.hf_config_dict(ModelConfig(**TINY))).to_dict()
    hf.config_from_hf(base)
    for change in (
        dict(n_inner=100),
        dict(activation_function="relu"),
        dict(layer_norm_epsilon=1e-6),
        dict(scale_attn_by_inverse_layer_idx=True),
        dict(model_type="llama"),
    ):
        with pytest.raises(ValueError):
            hf.config_from_hf({**base, **change})


def test_hf_config_eot_id_inside_the_vocabulary():
    assert hf.hf_config_dict(ModelConfig(**TINY))["eos_token_id"] is None
    assert hf.hf_config_dict(ModelConfig(**TINY), eot_id=7)["bos_token_id"] == 7
    assert hf.hf_config_dict(ModelConfig())["eos_token_id"] == 50256


MODERN = dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp_act="relu2", logit_softcap=30.0)


@pytest.mark.parametrize("option", list(MODERN))
def test_modern_options_not_exportable(option):
    config = ModelConfig(**TINY, **{option: MODERN[option]})
    assert len(hf.exportable(config)) == 1
    with pytest.raises(ValueError, match="cannot export"):
        hf.to_hf_state_dict(GPT(config).state_dict(), config)


# --- every preset and option combination runs --------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_tiny(name):
    # The preset's options with a tiny shape (the full shapes are covered by the meta-device counts):
    # as many layers as its value embeddings need, the data's <|endoftext|> as token 0.
    layers = max(2, 2 * PRESETS[name].model.value_embeds)
    config = preset(name, **{**TINY, "n_head": 2, "context": 16, "n_layer": layers, "doc_token": 0})
    model = GPT(config)
    idx = torch.randint(0, 300, (2, 16))
    logits, _ = model(idx)
    _, loss = model(idx, idx)
    loss.backward()
    assert logits.shape == (2, 16, 300) and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


def test_every_preset_builds_on_meta():
    for name in PRESETS:
        with torch.device("meta"):
            GPT(preset(name))


OPTIONS = dict(
    pos_emb=["learned", "rope"],
    norm=["layernorm", "rmsnorm"],
    qk_norm=[False, True],
    mlp_act=["gelu", "relu2"],
    logit_softcap=[0.0, 15.0],
    bias=[True, False],
)


@pytest.mark.parametrize("head", ["tied", "untied", "zero"])
def test_every_option_combination_runs(head):
    heads = dict(
        tied=dict(tie_weights=True),
        untied=dict(tie_weights=False),
        zero=dict(tie_weights=False, zero_init_head=True),
    )[head]
    torch.manual_seed(0)
    idx = torch.randint(0, 50, (2, 8))
    for values in itertools.product(*OPTIONS.values()):
        options = dict(zip(OPTIONS, values))
        config = ModelConfig(
            vocab_size=50,
            context=8,
            n_layer=1,
            n_head=2,
            n_embd=16,
            dropout=0.1,
            qkv_bias=options["bias"],
            **options,
            **heads,
        )
        model = GPT(config)
        logits, _ = model(idx)
        _, loss = model(idx, idx)
        loss.backward()
        assert torch.isfinite(loss), options
        assert len(hf.exportable(config)) == sum(
            options[k] != v
            for k, v in dict(
                pos_emb="learned", norm="layernorm", qk_norm=False, mlp_act="gelu", logit_softcap=0.0
            ).items()
        )
        if options["logit_softcap"]:
            assert logits.abs().max() <= options["logit_softcap"]


def test_invalid_configs_refused():
    for bad in (
        dict(n_embd=30),
        dict(pos_emb="alibi"),
        dict(norm="batch"),
        dict(mlp_act="swiglu"),
        dict(zero_init_head=True),
        dict(dropout=1.0),
        dict(pos_emb="rope", n_head=32),
    ):
        with pytest.raises(ValueError):
            ModelConfig(**{**TINY, **bad})


# --- init ----------------------------------------------------------------------------------------


def test_init_follows_gpt2():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=1000, context=256, n_layer=4, n_head=4, n_embd=256, tie_weights=False)
    model = GPT(config)
    resid = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            expected = resid
        elif p.dim() == 2:
            expected = 0.02
        else:  # norms' weights 1, biases 0
            assert torch.all(p == (1.0 if name.endswith("weight") else 0.0)), name
            continue
        assert abs(p.std().item() - expected) < 0.05 * expected, (name, p.std().item(), expected)
        assert abs(p.mean().item()) < 0.05 * expected, name
    zero = GPT(config.with_(zero_init_head=True))
    assert torch.count_nonzero(zero.lm_head.weight) == 0
    assert zero.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    tied = GPT(config.with_(tie_weights=True))
    assert tied.lm_head.weight is tied.transformer.wte.weight


# --- KV cache ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_kv_cache_matches_full_forward(pos_emb):
    config = ModelConfig(**TINY, pos_emb=pos_emb, qk_norm=pos_emb == "rope")
    model = randomise(GPT(config))
    idx = tokens(batch=2, length=20)
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(config, batch=2, max_len=32, device="cpu", dtype=torch.float32)
        # prefill 11, then a block of 4 (causal within the block), then 5 one at a time
        parts = [model(idx[:, :11], cache=cache)[0], model(idx[:, 11:15], cache=cache)[0]]
        parts += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(15, 20)]
    assert cache.pos == 20
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-5


def test_forward_refuses_beyond_context():
    model = GPT(ModelConfig(**TINY))
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_flops_per_token_gpt2_small():
    # 6N (N = non-embedding matmul params + the tied head) + 12 * L * C * T, as in nanoGPT's MFU estimate.
    with torch.device("meta"):
        model = GPT(preset("gpt2-124m"))
    n = 124_475_904 - 1024 * 768  # the padded head's rows are multiplied too
    assert model.flops_per_token() == 6 * n + 12 * 12 * 768 * 1024


@pytest.mark.parametrize("tied", [True, False])
def test_export_loads_with_from_pretrained(tmp_path, tied):
    # The files an export writes (config.json + model.safetensors) open with plain transformers.
    import json

    from safetensors.torch import save_file

    config = ModelConfig(**TINY, tie_weights=tied, qkv_bias=False)
    model = randomise(GPT(config))
    (tmp_path / "config.json").write_text(json.dumps(hf.hf_config_dict(config)))
    save_file(hf.to_hf_state_dict(model.state_dict(), config), str(tmp_path / "model.safetensors"))
    ref = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert (ref.lm_head.weight is ref.transformer.wte.weight) == tied
    idx = tokens()
    with torch.no_grad():
        assert (model(idx)[0] - ref(idx).logits).abs().max().item() < 1e-4


def test_modern_presets():
    for name in ("gpt2-small-modern", "cpu-small-modern"):
        config = preset(name)
        # rotary, RMSNorm, QK-norm, relu2, softcap + documents apart, windows, value embeddings, U-net skips
        assert len(hf.exportable(config)) == 10 and not config.bias and not config.tie_weights
        assert config.zero_init_head and config.dropout == 0.0
        assert config.attn_window == config.context // 2  # the proxy's proportion
    assert preset("gpt2-small-modern").vocab_size == 50304
    assert PRESETS["cpu-small-modern"].model.vocab_size is None
    twin, base = PRESETS["cpu-small-modern"].model, PRESETS["cpu-small"].model
    assert all(getattr(twin, k) == getattr(base, k) for k in ("context", "n_layer", "n_head", "n_embd"))
    # every round-2 key: the whole set measured best (benchmarks/results/recipes-round2.md, round 3)
    every = (
        "attn_window",
        "unet_skips",
        "rope_doc_reset",
        "batch_schedule",
        "packing",
        "cautious_wd",
        "muon_ns",
    )
    for name in ("gpt2-small-modern", "cpu-small-modern", "gpt2-speedrun"):
        model, train = PRESETS[name].model, PRESETS[name].train
        assert model.attn_doc_mask and model.value_embeds >= 1 and train.normuon
        changed = {k for k, v in {**asdict(model), **asdict(train)}.items() if v != DEFAULTS[k]}
        assert all(k in changed for k in every), (name, set(every) - changed)
