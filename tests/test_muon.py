"""Muon against exact references: the SVD's U V^T, a hand-written step, and bit-exact resume."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from baseforge.model import GPT, ModelConfig
from baseforge.train.muon import NS_COEFFS, Muon, orthogonalize, param_groups_for_muon

# What 5 quintic Newton-Schulz steps really give (see test_polynomial_band): singular values whose
# share of the Frobenius norm is at least ~1.3e-3 land in [0.6, 1.203]; bf16 adds a little.
BAND = (0.6, 1.21)


def test_polynomial_band():
    # The scalar map each singular value goes through, in float64: x -> a x + b x^3 + c x^5, 5 times.
    a, b, c = NS_COEFFS
    x = torch.logspace(-2.85, 0, 100_000, dtype=torch.float64)  # 1.4e-3 .. 1
    y = x.clone()
    for _ in range(5):
        y = a * y + b * y**3 + c * y**5
    assert 0.6 <= y.min() and y.max() <= 1.2025


@pytest.mark.parametrize("shape", [(128, 32), (32, 128), (256, 768), (768, 256), (288, 96), (100, 100)])
def test_orthogonalize_close_to_exact_uv(shape):
    torch.manual_seed(0)
    g = torch.randn(*shape)
    if shape[0] == shape[1]:  # a square Gaussian has near-zero singular values: use a well-conditioned one
        q, _ = torch.linalg.qr(torch.randn(*shape))
        g = q @ torch.diag(torch.linspace(0.05, 3.0, shape[0])) @ torch.linalg.qr(torch.randn(*shape))[0]
    o = orthogonalize(g).float()
    assert o.shape == g.shape
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    inner = u.mT @ o @ vh.mT  # = I for the exact U V^T; diagonal with values in BAND for Newton-Schulz
    diag = torch.diagonal(inner)
    assert BAND[0] <= diag.min() and diag.max() <= BAND[1], (diag.min(), diag.max())
    assert (inner - torch.diag(diag)).abs().max() < 0.05  # same singular vectors as the SVD
    sv = torch.linalg.svdvals(o)
    assert BAND[0] <= sv.min() and sv.max() <= BAND[1]
    # Relative to the exact orthogonal factor: within the band's width, far from the raw gradient.
    exact = u @ vh
    assert torch.linalg.matrix_norm(o - exact, ord=2) < 0.41
    assert torch.linalg.matrix_norm(g / torch.linalg.matrix_norm(g, ord=2) - exact, ord=2) > 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalize_in_fp32_lands_in_the_same_band_as_bf16(dtype):
    # fp32 is the dtype on CPUs without native bf16 (emulated bf16 matmuls are ~40x slower there)
    torch.manual_seed(0)
    g = torch.randn(3, 192, 768)
    o = orthogonalize(g, dtype=dtype)
    assert o.dtype == dtype
    sv = torch.linalg.svdvals(o.float())
    assert BAND[0] <= sv.min() and sv.max() <= BAND[1]
    other = orthogonalize(g, dtype=torch.bfloat16 if dtype == torch.float32 else torch.float32)
    assert (o.float() - other.float()).abs().max() < 0.02  # bf16's rounding, no more


def test_the_run_orthogonalizes_in_bf16_only_where_the_device_has_it(monkeypatch):
    from baseforge.config import TrainConfig
    from baseforge.train import optim

    model = GPT(ModelConfig(vocab_size=64, context=16, n_layer=1, n_head=2, n_embd=16))
    cfg = TrainConfig(optimizer="muon")
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(optim, "native_bf16", lambda device, native=native: native)
        muon = optim.build_optimizers(model, cfg, torch.device("cpu")).optimizers["muon"]
        assert isinstance(muon, Muon) and muon.ns_dtype == want
        assert "ns_dtype" not in muon.param_groups[0]  # a device property: not in checkpoints


def test_tiny_singular_values_are_not_lifted_in_five_steps():
    # Honest limit: directions with a tiny share of the norm stay small (they are mostly noise).
    torch.manual_seed(0)
    q1, q2 = torch.linalg.qr(torch.randn(64, 64))[0], torch.linalg.qr(torch.randn(64, 64))[0]
    s = torch.ones(64)
    s[-1] = 1e-5
    o = orthogonalize(q1 @ torch.diag(s) @ q2.mT).float()
    d = torch.diagonal(q1.mT @ o @ q2)
    assert d[:-1].min() >= BAND[0] and d[-1] < 0.1


def test_one_step_by_hand():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(96, 32))
    w0 = w.detach().clone()
    g = torch.randn(96, 32)
    w.grad = g.clone()
    opt = Muon([w], lr=0.05, momentum=0.9, weight_decay=0.1)
    opt.step()
    # First step: M = 0.1 g; Nesterov U = g + 0.9 (M - g) = 0.19 g; orthogonalisation ignores the scale.
    expected = w0 * (1 - 0.05 * 0.1) - 0.05 * 3**0.5 * orthogonalize(0.19 * g).float()
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-6)
    assert torch.equal(w.grad, g)  # .grad is read, never written
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], 0.1 * g)


def test_plain_momentum_without_nesterov():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 16))
    opt = Muon([w], lr=0.1, momentum=0.5, nesterov=False)
    g1, g2 = torch.randn(16, 16), torch.randn(16, 16)
    for g in (g1, g2):
        w.grad = g
        opt.step()
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], 0.25 * g1 + 0.5 * g2)


def test_refuses_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(8))])
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.zeros(4, 4))], lr=0)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(
            pos_emb="rope",
            norm="rmsnorm",
            qk_norm=True,
            mlp_act="relu2",
            tie_weights=False,
            zero_init_head=True,
            bias=False,
            qkv_bias=False,
        ),
    ],
)
def test_param_groups_for_muon(options):
    model = GPT(ModelConfig(vocab_size=64, context=16, n_layer=2, n_head=2, n_embd=16, **options))
    muon, adamw = param_groups_for_muon(model)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = sorted(names[id(p)] for p in muon)
    assert muon_names == sorted(
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    adamw_names = {names[id(p)] for p in adamw}
    assert "transformer.wte.weight" in adamw_names and all(p.ndim == 2 for p in muon)
    assert ("lm_head.weight" in adamw_names) == (not model.config.tie_weights)
    assert ("transformer.wpe.weight" in adamw_names) == (model.config.pos_emb == "learned")
    # every parameter exactly once
    assert len(muon) + len(adamw) == len(list(model.parameters()))
    assert not {id(p) for p in muon} & {id(p) for p in adamw}
    Muon(muon)  # accepted as they are


def _train(model, opt, steps, start=0):
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        idx = torch.randint(0, 64, (4, 16), generator=g)
        _, loss = model(idx, idx.roll(-1, dims=1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_resume_is_bit_exact():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, context=16, n_layer=2, n_head=2, n_embd=32, tie_weights=False)
    model = GPT(config)
    twin = copy.deepcopy(model)

    opt = Muon(param_groups_for_muon(model)[0], lr=0.02, weight_decay=0.01)
    first = _train(model, opt, 6)
    _train(model, opt, 6, start=6)

    opt_a = Muon(param_groups_for_muon(twin)[0], lr=0.02, weight_decay=0.01)
    assert _train(twin, opt_a, 6) == first
    buffer = io.BytesIO()  # through a file, as a checkpoint would
    torch.save({"model": twin.state_dict(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = GPT(config)
    resumed.load_state_dict(saved["model"])
    opt_b = Muon(param_groups_for_muon(resumed)[0], lr=0.5)  # hyperparameters come from the state dict
    opt_b.load_state_dict(saved["opt"])
    assert opt_b.param_groups[0]["lr"] == 0.02
    _train(resumed, opt_b, 6, start=6)

    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_gradient_accumulation_equals_the_full_batch():
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(24, 8))
    w2 = torch.nn.Parameter(w1.detach().clone())
    x, y = torch.randn(32, 8), torch.randn(32, 24)
    opt1, opt2 = Muon([w1], lr=0.1), Muon([w2], lr=0.1)
    ((x @ w1.T - y) ** 2).mean().backward()
    for xs, ys in zip(x.chunk(4), y.chunk(4)):  # 4 micro-batches, loss scaled by 1/4
        (((xs @ w2.T - ys) ** 2).mean() / 4).backward()
    torch.testing.assert_close(w1.grad, w2.grad)
    opt1.step()
    opt2.step()
    # bf16 orthogonalisation: grads equal to fp32 rounding may differ by one bf16 ulp in the update
    torch.testing.assert_close(w1, w2, rtol=0, atol=0.1 * 2**-7)


def test_muon_trains_a_tiny_model():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, context=16, n_layer=2, n_head=2, n_embd=32, tie_weights=False))
    muon, adamw = param_groups_for_muon(model)
    opts = [Muon(muon, lr=0.02), torch.optim.AdamW(adamw, lr=3e-3)]
    idx = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(30):
        _, loss = model(idx, idx.roll(-1, dims=1))
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _per_matrix_step(params, grads, bufs, lr, beta, wd, nesterov=True):
    """The per-matrix Muon step, written out: the reference the batched step must reproduce."""
    for p, g, buf in zip(params, grads, bufs):
        buf.lerp_(g, 1 - beta)
        update = orthogonalize(g.lerp(buf, beta) if nesterov else buf).to(p.dtype)
        p.mul_(1 - lr * wd)
        p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)


@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_step_equals_the_per_matrix_step(nesterov):
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 48), (48, 16), (32, 32), (48, 16), (16, 48)]
    params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    frozen = torch.nn.Parameter(torch.randn(48, 16))  # no grad: untouched, no state
    expected = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    opt = Muon([*params, frozen], lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=nesterov)
    before = frozen.detach().clone()
    for step in range(3):
        grads = [
            torch.randn(*s, generator=torch.Generator().manual_seed(10 * step + i))
            for i, s in enumerate(shapes)
        ]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        _per_matrix_step(expected, grads, bufs, 0.05, 0.9, 0.1, nesterov)
    for p, want, buf in zip(params, expected, bufs):
        # batched and single bf16 matmuls may round differently: one bf16 ulp of the update, times lr
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=0.05 * 3**0.5 * 2**-7)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf)
    assert torch.equal(frozen.detach(), before) and frozen not in opt.state


def test_stack_is_orthogonalized_matrix_by_matrix():
    torch.manual_seed(0)
    stack = torch.randn(5, 64, 24) * torch.logspace(-3, 2, 5)[:, None, None]  # norms far apart
    got = orthogonalize(stack).float()
    for g, o in zip(stack, got):
        torch.testing.assert_close(o, orthogonalize(g).float(), rtol=0, atol=2 * 2**-8)


def test_equal_shapes_share_one_batched_newton_schulz():
    """12 layers' worth of 4 shapes: matmul launches per step follow the shapes, not the matrices."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountMatmuls(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.bmm):
                CountMatmuls.calls += 1
            return func(*args, **(kwargs or {}))

    shapes = [(96, 32), (32, 32), (128, 32), (32, 128)] * 12
    params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = Muon(params, ns_steps=5)
    with CountMatmuls():
        opt.step()
    assert CountMatmuls.calls <= 4 * 5 * 3  # 4 shapes x 5 iterations x 3 matmuls, not x 48 matrices


# --- refinements: Polar Express, NorMuon, cautious weight decay -----------------------------------


def test_polar_express_orthogonalizes_closer_than_the_fixed_quintic():
    """Polar Express's five steps put the singular values nearer 1 than the fixed quintic's five."""
    from baseforge.train.muon import POLAR_EXPRESS

    torch.manual_seed(0)
    g = torch.randn(256, 96)
    s_jordan = torch.linalg.svdvals(orthogonalize(g).float())
    s_polar = torch.linalg.svdvals(orthogonalize(g, method="polar_express").float())
    assert (s_polar - 1).abs().max() < (s_jordan - 1).abs().max()
    assert (s_polar - 1).abs().max() < 0.25
    assert len(POLAR_EXPRESS) == 5


def test_normuon_equalises_neurons_and_keeps_the_update_norm():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(64, 32))
    g = torch.randn(64, 32) * torch.linspace(0.1, 3, 64)[:, None]  # rows of very different scale
    w.grad = g.clone()
    opt = Muon([w], lr=1.0, momentum=0.0, nesterov=False, normuon=True, normuon_beta2=0.0)
    opt.step()
    update = -w.detach() / (64 / 32) ** 0.5  # undo lr and the shape factor
    plain = orthogonalize(g).float()
    assert opt.state[w]["neuron_second_moment"].shape == (64, 1)
    torch.testing.assert_close(update.norm(), plain.norm(), rtol=1e-3, atol=0)
    rows = update.square().mean(-1)
    assert rows.max() / rows.min() < 1.01  # with beta2 = 0 every neuron moves by the same amount
    assert (plain.square().mean(-1).max() / plain.square().mean(-1).min()) > 1.05


def test_cautious_weight_decay_only_where_the_update_points_to_zero():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(32, 32))
    w0 = w.detach().clone()
    w.grad = torch.randn(32, 32)
    opt = Muon([w], lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.5, cautious_wd=True)
    opt.step()
    o = orthogonalize(w.grad).float()
    expected = w0 - 0.1 * 0.5 * w0 * (o * w0 > 0) - 0.1 * o
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-6)


def test_refinements_resume_bit_exactly_through_the_trainer_state():
    """NorMuon's second moments are optimizer state: saved, loaded (shape-checked) and continued."""
    from baseforge.overrides import resolve_config
    from baseforge.train.optim import build_optimizers

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, context=16, n_layer=2, n_head=2, n_embd=32, tie_weights=False)
    cfg = resolve_config(
        "cpu-tiny", None, ["optimizer=muon", "normuon=true", "muon_ns=polar_express", "cautious_wd=true",
                           "muon_weight_decay=0.1"],
    ).train  # fmt: skip
    model = GPT(config)
    twin = copy.deepcopy(model)
    opt = build_optimizers(model, cfg, torch.device("cpu"))
    _train(model, opt, 4)
    _train(model, opt, 4, start=4)
    opt_a = build_optimizers(twin, cfg, torch.device("cpu"))
    _train(twin, opt_a, 4)
    buffer = io.BytesIO()
    torch.save({"model": twin.state_dict(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = GPT(config)
    resumed.load_state_dict(saved["model"])
    opt_b = build_optimizers(resumed, cfg, torch.device("cpu"))
    opt_b.load_state_dict(saved["opt"])
    _train(resumed, opt_b, 4, start=4)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
