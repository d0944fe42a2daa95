"""Attention's rule and kernels: the explicit CPU path against SDPA, documents that do not see each
other, sliding windows, rotary positions per document, and FlexAttention's block mask against the
boolean mask it replaces."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from baseforge.model import GPT, KVCache, ModelConfig, attention

EOT = 7
TINY = dict(vocab_size=64, context=48, n_layer=2, n_head=4, n_embd=32, doc_token=EOT)


def randomise(model: GPT, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def window_of_documents(*lengths: int, seed: int = 1) -> torch.Tensor:
    """One window of documents of these lengths; each after the first starts with EOT, as packed
    data does (documents are joined by <|endoftext|>)."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for i, n in enumerate(lengths):
        body = torch.randint(8, 64, (n,), generator=g)
        if i:
            body[0] = EOT
        parts.append(body)
    return torch.cat(parts)[None]


def logits(config: ModelConfig, idx: torch.Tensor, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return randomise(GPT(config), seed)(idx)[0]


# --- the explicit CPU path --------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_explicit_attention_matches_sdpa(dtype, tol):
    """The CPU bf16 fast path computes what scaled_dot_product_attention(is_causal=True) computes."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16, dtype=dtype, requires_grad=True) for _ in range(3))
    got = attention.explicit_attention(q, k, v)
    grads = torch.autograd.grad(got.float().square().sum(), (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    want_grads = torch.autograd.grad(want.float().square().sum(), (q, k, v))
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol * 10)


def test_bf16_model_takes_explicit_attention_and_agrees_with_sdpa(monkeypatch):
    config = ModelConfig(vocab_size=300, context=32, n_layer=2, n_head=4, n_embd=32)
    model = randomise(GPT(config))
    idx = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    calls = []
    real = attention.explicit_attention
    monkeypatch.setattr(attention, "explicit_attention", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast, _ = model(idx)
        monkeypatch.setattr(attention, "EXPLICIT_ATTENTION_MAX_LEN", 0)  # force the fused kernel
        fused, _ = model(idx)
    assert len(calls) == config.n_layer
    assert (fast.float() - fused.float()).abs().max().item() < 0.1


# --- documents that do not see each other -------------------------------------------------------


@pytest.mark.parametrize("band", [0.0, 1.0], ids=["mask", "banded"])
@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_a_token_does_not_see_the_previous_document(pos_emb, band, monkeypatch):
    """Changing the first document (same length) leaves the second's logits alone with the mask on,
    through either CPU kernel (the boolean mask, the banded one), and changes them with it off."""
    monkeypatch.setattr(attention, "BAND_MAX_FRACTION", band)
    first, other = window_of_documents(15, 20, seed=1), window_of_documents(15, 20, seed=2)
    other[:, 15:] = first[:, 15:]  # the same second document after a different first one
    assert not torch.equal(first[:, :15], other[:, :15])
    masked = ModelConfig(**TINY, pos_emb=pos_emb, attn_doc_mask=True)
    a, b = logits(masked, first), logits(masked, other)
    torch.testing.assert_close(a[:, 15:], b[:, 15:], rtol=0, atol=1e-6)
    assert (a[:, :15] - b[:, :15]).abs().max() > 1e-3
    plain = ModelConfig(**TINY, pos_emb=pos_emb)
    assert (logits(plain, first)[:, 15:] - logits(plain, other)[:, 15:]).abs().max() > 1e-3


def test_with_rotary_reset_a_document_reads_as_if_it_began_the_window():
    """Document mask + rotary positions restarting at each document: the second document's logits are
    those of the same document alone at the window's start."""
    idx = window_of_documents(13, 22)
    config = ModelConfig(**TINY, pos_emb="rope", attn_doc_mask=True, rope_doc_reset=True)
    packed, alone = logits(config, idx), logits(config, idx[:, 13:])
    torch.testing.assert_close(packed[:, 13:], alone, rtol=0, atol=1e-5)
    learned = ModelConfig(**TINY, attn_doc_mask=True)  # absolute positions: the offset shows
    assert (logits(learned, idx)[:, 13:] - logits(learned, idx[:, 13:])).abs().max() > 1e-3


def test_positions_in_document():
    ids = torch.tensor([[1, 2, EOT, 4, 5, EOT, EOT, 3]])
    assert attention.positions_in_document(ids, EOT).tolist() == [[0, 1, 0, 1, 2, 0, 0, 1]]
    assert attention.documents(ids, EOT).tolist() == [[0, 0, 1, 1, 1, 2, 3, 3]]


def test_sliding_window_limits_how_far_back_a_token_sees():
    """With attn_window=W, position t's logits depend on tokens t-W+1..t only."""
    W = 6
    idx = window_of_documents(30)
    changed = idx.clone()
    changed[0, 10] = 8 + (changed[0, 10] - 7) % 56  # another token, not EOT
    config = ModelConfig(**{**TINY, "doc_token": None, "n_layer": 1}, attn_window=W)
    a, b = logits(config, idx), logits(config, changed)
    # one layer: position t sees 10 only when t - 10 < W
    torch.testing.assert_close(a[:, 10 + W :], b[:, 10 + W :], rtol=0, atol=1e-6)
    assert (a[:, 10 : 10 + W] - b[:, 10 : 10 + W]).abs().amax(-1).min() > 1e-4


@pytest.mark.parametrize(
    "config", [dict(attn_doc_mask=True), dict(attn_window=5), dict(attn_doc_mask=True, attn_window=9)]
)
def test_masked_kv_cache_matches_the_full_forward(config):
    config = ModelConfig(**TINY, pos_emb="rope", rope_doc_reset="attn_doc_mask" in config, **config)
    model = randomise(GPT(config))
    idx = torch.cat([window_of_documents(9, 7, 14, seed=s) for s in (1, 2)])
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(config, batch=2, max_len=48, device="cpu", dtype=torch.float32)
        parts = [model(idx[:, :11], cache=cache)[0], model(idx[:, 11:15], cache=cache)[0]]
        parts += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(15, 30)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("doc, window", [(True, 0), (False, 7), (True, 7), (False, torch.tensor(7))])
def test_flex_block_mask_is_the_boolean_rule(doc, window):
    """The block mask CUDA runs uses computes what the boolean mask computes (FlexAttention unfused, on
    the CPU: the rule, not the kernel's speed, is what is checked here), a window warmup's tensor
    window included."""
    ids = torch.cat([window_of_documents(100, 60, 96, seed=s) for s in (1, 2)])
    B, T = ids.shape
    d = attention.documents(ids, EOT) if doc else None
    vis = attention.Visibility(doc=d, window=window)
    q, k, v = (torch.randn(B, 2, T, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=vis.allowed(T, "cpu"))
    block_mask = attention.flex_block_mask(d, window, B, T, "cpu")
    with warnings.catch_warnings():  # "called without torch.compile": that is the point here
        warnings.simplefilter("ignore")
        got = flex_attention(q, k, v, block_mask=block_mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_masked_backend_is_named_for_each_device():
    assert attention.masked_backend("cuda", 0.0) == "flex"
    assert attention.masked_backend("cuda", 0.1) == "sdpa"  # FlexAttention has no dropout
    assert attention.masked_backend("cpu", 0.0) == "band"  # nor a backward on the CPU


# --- the banded CPU kernel ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths, doc, window",
    [
        ((30, 20, 25, 31, 22, 9), True, 0),  # 137 positions: padded to 5 blocks of 32
        ((70, 66), False, 32),  # a window alone
        ((40, 31, 26, 40), True, 20),  # both: the window is the band
        ((1, 31, 1, 31, 32, 32, 1), True, 0),  # one-token documents; some ending at a block's end
    ],
)
def test_the_banded_kernel_computes_the_boolean_rule(lengths, doc, window):
    """Forward and gradients of the banded kernel equal SDPA's under the same boolean mask."""
    ids = torch.cat([window_of_documents(*lengths, seed=s) for s in (1, 2)])
    B, T = ids.shape
    d = attention.documents(ids, EOT) if doc else None
    band = attention.band_for(d, window, T)
    assert band == 32
    vis = attention.Visibility(doc=d, window=window)
    q, k, v = (torch.randn(B, 2, T, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)] + [t.clone().requires_grad_() for t in (q, k, v)]
    want = torch.nn.functional.scaled_dot_product_attention(*leaves[:3], attn_mask=vis.allowed(T, "cpu"))
    got = attention.banded_attention(*leaves[3:], d, window, band)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    for a, b in zip(leaves[:3], leaves[3:]):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5)


def test_the_band_is_the_longest_document_or_the_window_and_only_when_it_is_small():
    ids = window_of_documents(10, 33, 20, 65)  # 128 positions, the longest document 65
    d = attention.documents(ids, EOT)
    assert attention.band_for(d, 0, 128) == 0  # 96 > 25% of 128: the dense mask
    assert attention.band_for(d, 20, 128) == 32  # the window bounds what a query sees
    assert attention.band_for(None, 20, 128) == 32
    long = window_of_documents(*[16] * 32)  # 512 positions of 16-token documents
    assert attention.band_for(attention.documents(long, EOT), 0, 512) == 32


def test_a_masked_model_on_the_cpu_takes_the_band_when_documents_are_short_and_sdpa_when_not(monkeypatch):
    """The model's choice, per forward: short documents go to the banded kernel, a long one to SDPA
    with the mask, and both give the same logits as the mask through SDPA alone."""
    config = ModelConfig(**{**TINY, "context": 128}, attn_doc_mask=True)
    model = randomise(GPT(config))
    used = []
    banded = attention.banded_attention
    monkeypatch.setattr(attention, "banded_attention", lambda *a, **k: used.append(a[5]) or banded(*a, **k))
    short, long = window_of_documents(*[16] * 8), window_of_documents(16, 100, 12)
    for idx, band in ((short, 32), (long, None)):
        used.clear()
        with torch.no_grad():
            got = model(idx)[0]
        assert used == ([band] * config.n_layer if band else [])
        with torch.no_grad(), monkeypatch.context() as m:
            m.setattr(attention, "BAND_MAX_FRACTION", 0.0)  # never the band: the mask through SDPA
            want = model(idx)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_masked_model_trains_in_bf16_on_the_cpu():
    """Under bf16 autocast on CPU the masked rule (here through the banded kernel) gives the fp32
    model's loss to bf16 precision, with gradients everywhere."""
    config = ModelConfig(**TINY, attn_doc_mask=True, attn_window=11)
    idx = torch.cat([window_of_documents(9, 17, 22, seed=s) for s in (1, 2)])
    losses = []
    for dtype in (torch.float32, torch.bfloat16):
        model = randomise(GPT(config)).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 0.05


def test_doc_options_need_a_doc_token_and_rope():
    with pytest.raises(ValueError, match="doc_token"):
        GPT(ModelConfig(**{**TINY, "doc_token": None}, attn_doc_mask=True))(
            torch.zeros(1, 4, dtype=torch.long)
        )
    with pytest.raises(Exception, match="rope_doc_reset needs pos_emb = rope"):
        ModelConfig(**TINY, rope_doc_reset=True)
    with pytest.raises(Exception, match="attn_window"):
        ModelConfig(**TINY, attn_window=-1)
    with pytest.raises(Exception, match="doc_token 64"):
        ModelConfig(**{**TINY, "doc_token": 64})


def test_the_window_warmup_grows_to_the_full_window():
    from baseforge.train.schedule import attention_window

    sizes = [attention_window(s, 100, 512, 0.5) for s in range(100)]
    assert sizes[0] == 128 and sizes[49:] == [None] * 51  # grown: the model's own window
    grown = [w for w in sizes if w is not None]
    assert grown == sorted(grown) and all(w % 64 == 0 for w in grown)
    assert attention_window(10, 100, 512, 0.0) is None  # no warmup: the model's own window
    assert [attention_window(s, 8, 64, 0.5) for s in range(8)] == [16, 32, 48] + [None] * 5


def test_a_forward_window_overrides_the_configured_one():
    config = ModelConfig(**{**TINY, "doc_token": None}, attn_window=0)
    model = randomise(GPT(config))
    idx = window_of_documents(40)
    with torch.no_grad():
        narrowed = model(idx, window=5)[0]
        windowed = randomise(GPT(config.with_(attn_window=5)))(idx)[0]
        full = model(idx, window=40)[0]  # as long as the sequence: the plain causal model
    torch.testing.assert_close(narrowed, windowed, rtol=0, atol=1e-6)
    torch.testing.assert_close(full, model(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("band", [0.0, 1.0], ids=["mask", "banded"])
@pytest.mark.parametrize("doc_mask", [False, True])
def test_a_window_given_as_a_tensor_is_the_same_rule(band, doc_mask, monkeypatch):
    """A window warmup passes its window as a 0-dim tensor (one compiled graph for every size): the
    logits equal those of the same window as an int, through either CPU kernel, also when the window
    is as long as the sequence (a tensor is a rule whatever its value)."""
    monkeypatch.setattr(attention, "BAND_MAX_FRACTION", band)
    config = ModelConfig(**TINY, pos_emb="rope", attn_doc_mask=doc_mask)
    model = randomise(GPT(config))
    idx = window_of_documents(12, 20, 8)
    with torch.no_grad():
        for size in (5, 16, 40):
            torch.testing.assert_close(
                model(idx, window=torch.tensor(size))[0], model(idx, window=size)[0], rtol=0, atol=1e-6
            )
