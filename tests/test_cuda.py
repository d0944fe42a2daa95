"""CUDA paths, proven on a GPU; every test here is marked `cuda` and skipped cleanly without one.

Run on a GPU with `pytest -m cuda` (benchmarks/gpu_suite.py --part tests does); the attention
rule's CPU twins (through a stand-in for FlexAttention) are in test_cuda_path.py. Model-level tests use
the model, the fused loss and the optimizers directly; trainer-level tests drive `baseforge train`
in a subprocess and compare what it writes (metrics.jsonl, model.safetensors), so they do not
depend on the Trainer's internals. Where bit-exact comparisons need it, the subprocess runs with
deterministic kernels (math attention, `use_deterministic_algorithms`): the comparison is then about
what the trainer restores, not about atomics in flash attention's backward.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from baseforge.model import GPT, ModelConfig
from baseforge.model.loss import linear_cross_entropy
from baseforge.train.checkpoint.format import find_checkpoint
from baseforge.train.metrics import read_metrics
from baseforge.train.muon import Muon, param_groups_for_muon
from conftest import build_data_dir
from helpers import TINY, cli_env, sets

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = ["device=cuda"]
# Deterministic kernels in the trainer's process, for bit-exact comparisons between runs.
DETERMINISTIC = (
    "import torch\n"
    "torch.backends.cuda.enable_flash_sdp(False)\n"
    "torch.backends.cuda.enable_mem_efficient_sdp(False)\n"
    "torch.backends.cuda.enable_cudnn_sdp(False)\n"
    "torch.use_deterministic_algorithms(True, warn_only=True)\n"
)


def cli(prelude: str, *args, env: dict | None = None, popen: bool = False):
    """`baseforge ARGS` in a fresh Python that first runs `prelude` (set-up the CLI has no flag for)."""
    code = (
        f"{prelude}\nimport sys\nfrom baseforge.cli import main\nsys.exit(main({[str(a) for a in args]!r}))"
    )
    full_env = {**cli_env(), "CUBLAS_WORKSPACE_CONFIG": ":4096:8", **(env or {})}
    cmd = [sys.executable, "-c", code]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def final_weights(run: Path) -> dict:
    return load_file(str(find_checkpoint(run) / "model.safetensors"))


def train_rows(run: Path) -> list[tuple]:
    return [(r.step, r.loss, r.val_loss, r.grad_norm) for r in read_metrics(run)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A corpus from the running Python's own standard library: no ../shared, no network needed."""
    files = sorted(Path(os.__file__).parent.glob("*.py"))
    text = "\n\n".join(f.read_text(errors="ignore") for f in files)[:400_000]
    return build_data_dir(tmp_path_factory.mktemp("cuda-data") / "stdlib", text)


def tiny_model(seed: int = 0, **changes) -> GPT:
    torch.manual_seed(seed)
    shape = dict(vocab_size=512, context=128, n_layer=2, n_head=2, n_embd=128)
    return GPT(ModelConfig(**{**shape, **changes})).cuda()


def batch(model: GPT, size: int = 8, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    c = model.config
    x = torch.randint(0, c.vocab_size, (size, c.context), device="cuda", generator=g)
    return x, x.roll(-1, dims=1)


# --- model level ------------------------------------------------------------------------------------
@pytest.mark.parametrize("softcap", [0.0, 15.0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fused_head_loss_matches_cross_entropy(dtype, softcap):
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(4096, 256, device="cuda", generator=g).requires_grad_()  # 2 chunks at V = 50257
    w = (0.05 * torch.randn(50257, 256, device="cuda", generator=g)).requires_grad_()
    targets = torch.randint(0, 50257, (4096,), device="cuda", generator=g)
    targets[::9] = -100
    scale = 1024.0  # a loss scale, as GradScaler applies

    def loss_and_grads(fn):
        with torch.autocast("cuda", dtype=dtype):
            loss = fn()
        return loss.detach(), [x / scale for x in torch.autograd.grad(loss * scale, (h, w))]

    def reference():
        z = (h @ w.t()).float()
        if softcap:
            z = softcap * torch.tanh(z / softcap)
        return F.cross_entropy(z, targets, ignore_index=-100)

    got, got_grads = loss_and_grads(lambda: linear_cross_entropy(h, w, targets, softcap))
    want, want_grads = loss_and_grads(reference)
    assert abs(got.item() - want.item()) < 2e-3 * want.item()
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    for a, b in zip(got_grads, want_grads):
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        assert ((a - b).norm() / b.norm()).item() < tol


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_sdpa_runs_a_fused_kernel_in_training(pos_emb):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = tiny_model(dropout=0.1, pos_emb=pos_emb, context=256, n_embd=128, n_head=2).train()
    x, y = batch(model)
    # Restricted to the fused kernels: raises if training (dropout, causal, bf16) needs the math path.
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)[1]
        loss.backward()
    # Unrestricted, as the trainer runs it: the profiler sees a fused op and no math attention.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)[1]
        loss.backward()
    names = {e.name for e in prof.events()}
    assert any("flash_attention" in n or "efficient_attention" in n for n in names), sorted(names)
    assert not any("attention_math" in n for n in names)


def test_compiled_model_with_the_fused_loss():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_model()
    compiled = torch.compile(model)
    x, y = batch(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(x, y)[1]
        loss = compiled(x, y)[1]
    loss.backward()
    assert abs(loss.item() - eager.item()) < 1e-2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    breaks = sum(counters["graph_break"].values())
    assert breaks <= 1, dict(counters["graph_break"])  # at most the fused loss, which runs eagerly


def _optimizers(model: GPT, kind: str) -> list[torch.optim.Optimizer]:
    if kind == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)]
    muon, adamw = param_groups_for_muon(model)
    return [Muon(muon, lr=0.02), torch.optim.AdamW(adamw, lr=3e-3, fused=True)]


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_fp16_grad_scaler_trains_and_clips_after_unscale(kind):
    model = tiny_model(tie_weights=False)
    x, y = batch(model)
    reference = copy.deepcopy(model)
    reference(x, y)[1].backward()  # fp32 gradients: the norm the unscaled fp16 ones must match
    ref_norm = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()]).item()
    opts = _optimizers(model, kind)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    losses = []
    for step in range(60):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x, y)[1]
        scaler.scale(loss).backward()
        for o in opts:
            scaler.unscale_(o)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        if step == 0:
            assert abs(norm - ref_norm) < 0.05 * ref_norm, (norm, ref_norm)  # unscaled, not x 1024
            clipped = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
            assert clipped <= 1.0 + 1e-3
        for o in opts:
            scaler.step(o)
        scaler.update()
        for o in opts:
            o.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses[-10:])))
    assert losses[-1] < 0.5 * losses[0]
    assert scaler.get_scale() >= 1.0


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_kv_cache_generation_equals_recompute_on_cuda(pos_emb):
    from baseforge.generate import generate, sample_next

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=97, context=24, n_layer=2, n_head=2, n_embd=32, pos_emb=pos_emb))
    with torch.no_grad():  # peaked, varied logits: no argmax near-ties
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() == 2 else 0.1)
    model = model.cuda().eval()
    prompt, ids = [5, 17, 3, 88, 41, 2, 60], [5, 17, 3, 88, 41, 2, 60]
    with torch.no_grad():
        for _ in range(40):  # past the context: crosses the crop and keeps sliding
            window = torch.tensor([ids[-24:]], device="cuda")
            ids.append(sample_next(model(window)[0][0, -1], 0.0, None, None))
    assert generate(model, prompt, 40, temperature=0) == ids[len(prompt) :]


def test_no_host_device_sync_inside_a_micro_step():
    model = tiny_model(dropout=0.1).train()
    x, y = batch(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(x, y)[1].backward()  # warm-up: allocator, kernels, lazy init
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)[1]
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


def trainer_on_gpu(data: Path, run: Path, *keys: str):
    """A set-up in-process Trainer on the GPU (helpers.TINY with `keys`)."""
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer

    trainer = Trainer(resolve_config("cpu-tiny", None, [*TINY, *CUDA, *keys]), data, run, log=lambda *_: None)
    trainer.setup()
    return trainer


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_step_micro_steps_do_not_sync(data_dir, tmp_path, precision):
    """TrainStep's micro-steps (accumulation 4, pinned prefetched batches, fp16's scaler, dropout):
    no host-device sync; the step's one sync (loss and grad norm) comes after them."""
    trainer = trainer_on_gpu(
        data_dir, tmp_path / "run", f"precision={precision}", "micro_batch=2", "dropout=0.1"
    )
    step = trainer.built.train_step
    step(0, trainer.data)  # warm-up: allocator, kernels, lazy init
    torch.cuda.synchronize()
    micro_step = step.forward_backward

    def checked(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return micro_step(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    step.forward_backward = checked
    assert step(1, trainer.data).applied
    x, y = step.prefetch.get(trainer.data, 2, 0, step.batches.at(2))
    assert x.is_pinned() and y.is_pinned()  # so .to(cuda, non_blocking=True) is really asynchronous


def test_precision_auto_and_tf32_on_this_gpu():
    from baseforge.train.precision import resolve_precision, setup_precision

    native = torch.cuda.get_device_capability() >= (8, 0)
    assert resolve_precision("auto", torch.device("cuda")) == ("bf16" if native else "fp16")
    a, b = torch.randn(2048, 2048, device="cuda"), torch.randn(2048, 2048, device="cuda")
    exact = (a.double() @ b.double()).float()
    setup_precision("fp32", torch.device("cuda"))
    fp32_error = ((a @ b) - exact).abs().max().item()
    setup_precision("bf16" if native else "fp16", torch.device("cuda"))
    mixed_error = ((a @ b) - exact).abs().max().item()
    setup_precision("fp32", torch.device("cuda"))
    assert fp32_error < 1e-2  # ieee fp32: ~1e-4 here; TF32's 10-bit mantissa gives ~1e-1
    if native:
        assert mixed_error > 10 * fp32_error  # TF32 really on for a mixed-precision run


def test_ddp_over_nccl_with_one_process(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model, twin = tiny_model(), tiny_model()
        ddp = DDP(model, device_ids=[torch.cuda.current_device()], gradient_as_bucket_view=True)
        x, y = batch(model)
        ddp(x, y)[1].backward()
        twin(x, y)[1].backward()
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a.grad, b.grad)  # world 1: the all-reduced mean is the grad
    finally:
        dist.destroy_process_group()


# --- trainer level, through the CLI -----------------------------------------------------------------
def settings(*extra: str) -> list[str]:
    """helpers.TINY on the GPU, with `extra` keys replacing TINY's."""
    merged = dict(item.split("=", 1) for item in [*TINY, *CUDA, "precision=bf16", *extra])
    return sets(*(f"{k}={v}" for k, v in merged.items()))


def train(prelude: str, data: Path, run: Path, *keys: str, env: dict | None = None) -> str:
    return ok(cli(prelude, "train", "--data", data, "--out", run, *settings(*keys), env=env))


# Marks the end of the trainer's compile warm-up on stderr, where torch's recompile logs also go.
AFTER_WARM_UP = "--- compile warm-up done ---"
MARK_WARM_UP = (
    "import sys\n"
    "import baseforge.train.device as _device\n"
    "_compile = _device.compile_for_training\n"
    "def _marked(*args, **kwargs):\n"
    "    out = _compile(*args, **kwargs)\n"
    f"    print({AFTER_WARM_UP!r}, file=sys.stderr, flush=True)\n"
    "    return out\n"
    "_device.compile_for_training = _marked\n"
)


def test_compiled_training_does_not_recompile(data_dir, tmp_path):
    """Steps and evaluations (the last eval batch partial: 1000 tokens in 512-token batches) compile
    nothing after the warm-up, which compiles each of those shapes on purpose (as the CPU twin in
    test_train_step counts graphs after setup)."""
    result = cli(
        MARK_WARM_UP,
        "train",
        "--data",
        data_dir,
        "--out",
        tmp_path / "run",
        *settings("compile=true", "max_steps=12", "eval_every=4", "eval_tokens=1000"),
        env={"TORCH_LOGS": "recompiles,graph_breaks"},
    )
    out = ok(result)
    assert "training eager" not in out  # torch.compile really ran
    assert result.stderr.count(AFTER_WARM_UP) == 1, result.stderr[-3000:]
    after = result.stderr.split(AFTER_WARM_UP, 1)[1].splitlines()
    recompiles = [line for line in after if "Recompiling function" in line]
    breaks = [line for line in after if "Graph break" in line]
    assert not recompiles, "\n".join(recompiles + breaks)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_fp16_training_through_the_cli(data_dir, tmp_path, optimizer):
    run = tmp_path / "run"
    train("", data_dir, run, "precision=fp16", f"optimizer={optimizer}", "max_steps=40", "eval_every=40")
    rows = [r for r in read_metrics(run) if r.loss is not None]
    assert rows[-1].skipped <= 5  # GradScaler's first scales may overflow, then it settles
    assert all(torch.isfinite(torch.tensor([r.loss, r.grad_norm])).all() for r in rows)
    assert rows[-1].loss < rows[0].loss


def test_micro_batch_auto_recovers_from_oom_and_reproduces(data_dir, tmp_path):
    """Capped at 2.5 GB the search must hit an OOM; the auto run then equals a run given the found
    size (RNG, weights and grads restored), a second auto run, and does not keep the search's peak."""
    cap = 2.5e9 / torch.cuda.get_device_properties(0).total_memory
    prelude = DETERMINISTIC + f"torch.cuda.set_per_process_memory_fraction({cap})\n"
    keys = ["micro_batch=auto", "global_batch=64", "context=1024", "n_layer=6", "n_embd=512", "n_head=8"]
    keys += ["max_steps=3", "eval_every=3", "eval_tokens=8192", "dropout=0.1"]
    out = train(prelude, data_dir, tmp_path / "a", *keys)
    found = int(re.search(r"micro_batch auto: (\d+) fits", out)[1])
    assert found < 64, "no out-of-memory during the search: lower the cap"
    train(prelude, data_dir, tmp_path / "b", *keys)
    train(prelude, data_dir, tmp_path / "c", *keys, f"micro_batch={found}")
    assert train_rows(tmp_path / "a") == train_rows(tmp_path / "b") == train_rows(tmp_path / "c")
    a, c = final_weights(tmp_path / "a"), final_weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in c)
    peak = {
        n: max(r.peak_reserved_gib for r in read_metrics(tmp_path / n) if r.loss is not None) for n in "ac"
    }
    assert peak["a"] <= 1.05 * peak["c"] + 0.01, peak


def test_checkpoint_moves_between_gpu_and_cpu(data_dir, tmp_path):
    run = tmp_path / "run"
    train("", data_dir, run, "schedule=constant", "checkpoint_every=2", "max_steps=4")
    on_gpu = final_weights(run)
    resume = ["train", "--data", data_dir, "--out", run, "--resume"]
    ok(cli("", *resume, *sets("device=cpu", "precision=fp32", "max_steps=6")))
    on_cpu = final_weights(run)
    ok(cli("", *resume, *sets("device=cuda", "max_steps=8")))
    rows = [r for r in read_metrics(run) if r.loss is not None]
    assert [r.step for r in rows] == list(range(1, 9))
    assert all(torch.isfinite(torch.tensor(r.loss)) for r in rows)
    assert set(on_gpu) == set(on_cpu) == set(final_weights(run))
    assert any(not torch.equal(on_gpu[k], on_cpu[k]) for k in on_gpu)  # the CPU steps really trained


def test_exact_resume_on_gpu_with_dropout(data_dir, tmp_path):
    """Killed after its first checkpoint and resumed: equal to the uninterrupted run, bit for bit
    (CUDA generator included: dropout 0.1 draws its masks on the GPU)."""
    keys = ["max_steps=200", "checkpoint_every=4", "dropout=0.1", "eval_every=50"]
    train(DETERMINISTIC, data_dir, tmp_path / "ref", *keys)
    run = tmp_path / "run"
    proc = cli(DETERMINISTIC, "train", "--data", data_dir, "--out", run, *settings(*keys), popen=True)
    latest = run / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    step = int(latest.read_text().strip().split("_")[1])
    assert 4 <= step < 200, f"the kill landed at step {step}"
    ok(cli(DETERMINISTIC, "train", "--data", data_dir, "--out", run, "--resume"))
    assert train_rows(run) == train_rows(tmp_path / "ref")
    ref = final_weights(tmp_path / "ref")
    assert all(torch.equal(v, ref[k]) for k, v in final_weights(run).items())


def test_torchrun_one_process_trains_and_checkpoints(data_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    cmd += ["-m", "baseforge", "train", "--data", str(data_dir), "--out", str(run)]
    result = subprocess.run(cmd + settings("max_steps=6"), capture_output=True, text=True, env=cli_env())
    ok(result)
    assert find_checkpoint(run).name.endswith("6")
    assert [r.step for r in read_metrics(run) if r.loss is not None][-1] == 6


# --- document masking, windows and FlexAttention --------------------------------------------------------
MASKS = [(True, 0), (False, 48), (True, 48), (True, "tensor")]
MASK_IDS = ["docs", "window", "both", "warmup"]


def doc_ids(B: int = 4, T: int = 256, seed: int = 0) -> torch.Tensor:
    """Token ids with an end-of-text (0) about every 40 positions: several documents per row."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    ids = torch.randint(1, 512, (B, T), device="cuda", generator=g)
    return ids.masked_fill(torch.rand(B, T, device="cuda", generator=g) < 0.025, 0)


@pytest.mark.parametrize("doc, window", MASKS, ids=MASK_IDS)
def test_flex_equals_sdpa_with_the_same_mask_forward_and_backward(doc, window):
    """The training kernel (FlexAttention with the block mask, compiled) against SDPA with the boolean
    mask of the same rule, in bf16: outputs and the gradients of q, k and v."""
    from baseforge.model import attention as attn

    ids = doc_ids()
    B, T = ids.shape
    d = attn.documents(ids, 0) if doc else None
    w = attn.window_tensor(48, "cuda") if window == "tensor" else window
    vis = attn.Visibility(doc=d, window=w, block_mask=attn.flex_block_mask(d, w, B, T, "cuda"))
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(B, 4, T, 64, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    grads = []
    for kernel in ("flex", "sdpa"):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        if kernel == "flex":
            out = attn.FLEX(*leaves, vis)
            assert out is not None, attn.FLEX.broken
        else:
            out = F.scaled_dot_product_attention(*leaves, attn_mask=vis.allowed(T, "cuda"))
        out.float().square().sum().backward()
        grads.append([out, *(t.grad for t in leaves)])
    for got, want in zip(*grads):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("doc, window", MASKS, ids=MASK_IDS)
def test_a_masked_model_with_value_embeddings_and_skips_compiles_to_the_eager_result(doc, window):
    """The whole model compiled (FlexAttention inside its graph, value embeddings, U-net skips) against
    eager (FlexAttention compiled alone): loss and gradients agree in bf16."""
    from baseforge.model import attention as attn

    torch._dynamo.reset()
    model = tiny_model(pos_emb="rope", norm="rmsnorm", attn_doc_mask=doc, doc_token=0, value_embeds=1,
                       unet_skips=True, attn_window=0 if window == "tensor" else window)  # fmt: skip
    ids = doc_ids(T=128)
    w = {"window": attn.window_tensor(48, "cuda")} if window == "tensor" else {}
    results = []
    for run in (model, torch.compile(model, dynamic=False)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = run(ids, ids.roll(-1, dims=1), **w)[1]
        loss.backward()
        results.append([loss.detach(), *(p.grad.clone() for p in model.parameters())])
    for got, want in zip(*results):
        torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-3)
    assert not attn.FLEX.broken


def test_flex_compiles_once_per_training_shape_through_a_run(data_dir, tmp_path, monkeypatch):
    """Search, training under a window warmup and after it, evaluation and the sample, eager: Dynamo's
    graphs are FlexAttention's own, one per training shape (evaluation and sampling take SDPA)."""
    from torch._dynamo.utils import counters

    from baseforge.model import attention as attn
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(attn, "FLEX", attn.FlexKernel())  # its count starts with Dynamo's, at 0
    keys = [*CUDA, "compile=false", "pos_emb=rope", "attn_doc_mask=true", "attn_window=64", "n_layer=2"]
    keys += ["attn_window_warmup=0.5", "micro_batch=auto", "global_batch=16", "max_steps=4", "context=256"]
    keys += ["eval_every=4", "eval_tokens=4096", "sample_tokens=8", "checkpoint_every=100", "log_every=1"]
    Trainer(resolve_config("cpu-tiny", None, keys), data_dir, tmp_path / "run", log=print).run()
    made = attn.FLEX.compiles
    assert 2 <= made <= attn.FLEX_COMPILE_LIMIT and not attn.FLEX.broken
    assert counters["stats"]["unique_graphs"] == made, dict(counters["stats"])
