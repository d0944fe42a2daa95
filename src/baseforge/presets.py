"""Every preset whole: the model's shape and the training recipe, under one name.

A preset is the starting point of a run's config (`preset_config`); a TOML file and `--set key=value`
change it (overrides.py). Each is built once, as a typed `ModelConfig` and `TrainConfig`, so a preset
with a key or value the configs do not accept fails on import, not in a user's run. The shapes and
recipes below are written as the keys each one changes. `vocab_size=None` means "take it from the
data's tokenizer".

"The write-up" below is the run described in the README (its title, author and link are there):
GPT-2 small's shape, untied head, no QKV bias, dropout 0.1, AdamW 4e-4, 20 tokens per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from baseforge.config import RunConfig, TrainConfig
from baseforge.errors import UserError
from baseforge.model.config import ModelConfig


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str  # what it is for and the hardware it is meant for, in one line
    model: ModelConfig
    train: TrainConfig

    @classmethod
    def of(cls, name: str, summary: str, model: dict, train: dict) -> Preset:
        return cls(name, summary, ModelConfig(**model), TrainConfig(**train))


# --- shapes ------------------------------------------------------------------------------------
_GPT2 = dict(vocab_size=50257, context=1024, qkv_bias=True, bias=True, tie_weights=True, dropout=0.0)
_GPT2_SMALL = dict(_GPT2, n_layer=12, n_head=12, n_embd=768)
# The 124M used against nanoGPT and llm.c: the head padded from 50257 to 50304 rows (a multiple of
# 64), which keeps cuBLAS on its fast kernels for the head's third of the FLOPs, as both peers do.
_GPT2_124M = dict(_GPT2_SMALL, vocab_size=50304)
_CPU_TINY = dict(
    vocab_size=None,
    context=128,
    n_layer=4,
    n_head=4,
    n_embd=128,
    dropout=0.0,
    qkv_bias=False,
    tie_weights=True,
)
_CPU_SMALL = dict(
    vocab_size=None,
    context=256,
    n_layer=6,
    n_head=6,
    n_embd=384,
    dropout=0.0,
    qkv_bias=False,
    tie_weights=True,
)
# The modern options together (as in modded-nanogpt / nanochat): rotary positions, RMSNorm,
# QK-norm, squared-ReLU MLP, an untied zero-initialised head, soft-capped logits, no biases.
# Not exportable as HF GPT-2 (see model.hf.exportable).
_MODERN_SHAPE = dict(
    pos_emb="rope",
    norm="rmsnorm",
    qk_norm=True,
    mlp_act="relu2",
    tie_weights=False,
    zero_init_head=True,
    logit_softcap=15.0,
    qkv_bias=False,
    bias=False,
    dropout=0.0,
)

# --- recipes -----------------------------------------------------------------------------------
_WRITEUP = dict(
    lr=4e-4,
    weight_decay=0.1,
    schedule="cosine",
    warmup_fraction=0.05,
    min_lr_ratio=0.1,
    grad_clip=1.0,
    micro_batch="auto",
    global_batch=32,
    tokens_per_param=20.0,
    eval_every=500,
    eval_tokens=10_485_760,
    checkpoint_every=1000,
    checkpoint_minutes=30.0,
    log_every=10,
)
_CPU = dict(
    lr=2e-3,
    weight_decay=0.1,
    schedule="cosine",
    warmup_steps=30,
    min_lr_ratio=0.1,
    grad_clip=1.0,
    micro_batch=16,
    global_batch=16,
    eval_every=100,
    eval_tokens=65_536,
    checkpoint_every=200,
    log_every=10,
)
# Muon for the hidden matrices, AdamW for embeddings/head/gains, warmup-stable-decay. CPU values: the
# best of a small grid in benchmarks/bench_recipes.py, seed 0 (muon_lr 0.02/0.03/0.05 at lr 3e-3,
# then lr 3e-3/6e-3 at muon_lr 0.03).
_MODERN_RECIPE = dict(
    optimizer="muon",
    muon_lr=0.03,
    muon_momentum=0.95,
    lr=6e-3,
    schedule="wsd",
    warmup_steps=0,
    warmup_fraction=0.02,
    decay_fraction=0.3,
    min_lr_ratio=0.0,
)
# Every round-2 key: on the CPU proxy the whole set ended 0.08 below the three keys that each earned
# their place alone (p = 0.004, 3 seeds: benchmarks/results/recipes-round2.md) and 0.37 below round 1's
# modern recipe in round 3 (benchmarks/results/recipes-round3.md), so the modern presets take it whole.
# value_embeds is 1 table (first and last block) at 4-6 layers, as measured, and 3 at 12 (modded-nanogpt's
# layout). The window is half the context and the batch schedule a quarter and then half the batch for
# the first 8% and 24% of the tokens: the proxy's proportions. The measured reference carried Muon
# weight decay 0.01, so the recipe keeps it.
_EVERY_MODEL = dict(attn_doc_mask=True, rope_doc_reset=True, value_embeds=1, unet_skips=True)
_EVERY_RECIPE = dict(
    normuon=True,
    muon_weight_decay=0.01,
    muon_ns="polar_express",
    cautious_wd=True,
    packing="bestfit",
    attn_window_warmup=0.3,
)

_ALL = [
    Preset.of(
        "gpt2-small-seed",
        "the write-up's 163M model and recipe (GPT-2 small shape, untied head, dropout 0.1); one GPU",
        dict(_GPT2_SMALL, qkv_bias=False, tie_weights=False, dropout=0.1),
        _WRITEUP,
    ),
    Preset.of(
        "gpt2-124m",
        "OpenAI GPT-2 small's layout (tied head, biases), the write-up's recipe; one GPU; head padded "
        "to 50304 rows (GPT-2's tokenizer; the 47 extra rows are never targets), as nanoGPT and llm.c",
        _GPT2_124M,
        _WRITEUP,
    ),
    Preset.of(
        "gpt2-medium",
        "GPT-2 medium (355M); one 24 GB GPU",
        dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
        dict(_WRITEUP, lr=3e-4),
    ),
    Preset.of(
        "gpt2-large",
        "GPT-2 large (774M); one 24 GB GPU at small micro-batches, or more memory",
        dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
        dict(_WRITEUP, lr=2.5e-4),
    ),
    Preset.of(
        "gpt2-xl",
        "GPT-2 XL (1.56B); FSDP on 2+ GPUs of 24 GB, or one 80 GB GPU",
        dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
        dict(_WRITEUP, lr=2e-4),
    ),
    Preset.of(
        "gpt2-small-modern",
        "GPT-2 small's shape, modern recipe (rotary, RMSNorm, Muon, WSD and every measured key: documents "
        "apart, sliding windows, value embeddings, U-net skips, a batch schedule), 0.81B tokens; one GPU",
        # Vocabulary padded from 50257 to 50304 (a multiple of 128) for faster matmuls.
        dict(
            _GPT2_SMALL,
            **{**_MODERN_SHAPE, **_EVERY_MODEL, "value_embeds": 3},
            vocab_size=50304,
            attn_window=512,
        ),
        dict(
            _WRITEUP,
            **{**_MODERN_RECIPE, "muon_lr": 0.02, "lr": 3e-3},
            **_EVERY_RECIPE,
            global_batch=64,
            batch_schedule="16@6.5e7,32@1.95e8",
            # 5 tokens per parameter of the 162M that work on every token: the 116M of value-embedding
            # tables are lookups, and counting them would stretch the run 1.7x for no more compute.
            max_tokens=811_000_000,
        ),
    ),
    # Every measured key, as gpt2-small-modern, at context 2048: a window of half the context, a quarter
    # and then half the batch for the first 5% and 15% of the tokens.
    Preset.of(
        "gpt2-speedrun",
        "GPT-2 small's shape with every measured modern key (documents apart, sliding windows, value "
        "embeddings, U-net skips, a batch schedule; context 2048): GPT-2 quality in hours on one GPU",
        dict(
            _GPT2_SMALL,
            **{**_MODERN_SHAPE, **_EVERY_MODEL, "value_embeds": 3},
            vocab_size=50304,
            context=2048,
            attn_window=1024,
        ),
        dict(
            _WRITEUP,
            **{**_MODERN_RECIPE, "muon_lr": 0.02, "lr": 3e-3},
            **_EVERY_RECIPE,
            global_batch=128,  # 262k tokens a step, after 32 and 64 sequences for the first 150M tokens
            batch_schedule="32@5e7,64@1.5e8",
            max_tokens=1_000_000_000,
        ),
    ),
    Preset.of(
        "cpu-tiny",
        "1.3M parameters that visibly learn on 2 CPU cores (the built-in demo; time: README)",
        _CPU_TINY,
        dict(_CPU, max_steps=1500, global_batch=16, micro_batch=16, eval_every=250, checkpoint_every=500),
    ),
    Preset.of(
        "cpu-small",
        "12M parameters for a CPU or a small GPU, 600 steps",
        _CPU_SMALL,
        dict(_CPU, max_steps=600, lr=1.5e-3),
    ),
    Preset.of(
        "cpu-small-modern",
        "cpu-small's shape with the modern recipe and every measured key, 2.46M tokens",
        dict(_CPU_SMALL, **_MODERN_SHAPE, **_EVERY_MODEL, attn_window=128),
        dict(
            dict(_CPU, lr=1.5e-3),
            **_MODERN_RECIPE,
            **{**_EVERY_RECIPE, "attn_window_warmup": 0.0},  # its window is the warmup's first, 128
            # cpu-small's 600 steps of 16 x 256 in tokens, so the schedule's smaller steps train on as many
            max_tokens=2_457_600,
            batch_schedule="4@2e5,8@6e5",
        ),
    ),
]
PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_config(name: str) -> RunConfig:
    """A run's config as preset `name` starts it."""
    preset = get_preset(name)
    return RunConfig(name, preset.model, preset.train)
