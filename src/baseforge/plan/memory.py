"""The memory model of `baseforge plan`: the bytes one GPU holds to train a preset, and the largest
micro-batch that fits.

Memory per GPU, in bytes, modelled on the code that runs (the trainer keeps fp32 weights and
autocasts the matmuls; `model/gpt.py`, `model/loss.py`, `train/optim.py`):

- weights: 4 bytes per parameter (fp32 masters); gradients: 4 bytes per parameter.
- optimizer state: AdamW keeps two fp32 moments plus a 4-byte step per tensor; with Muon, the
  hidden matrices keep one fp32 momentum buffer and the rest is AdamW. FSDP divides these three
  by the number of GPUs (each tensor sharded on its first dimension, padded as FSDP pads).
  Averaged weights (ema_decay) add 4 bytes per parameter, counted with the optimizer state (its
  transient second copy while the average is evaluated comes after the step's activations are freed).
- activations, per micro-batch of B sequences of T tokens (N = B*T, width C, H heads, L blocks,
  vocabulary V, a = 2 bytes under bf16/fp16 autocast, 4 in fp32). Each block keeps for backward:
  the fp32 inputs of its two norms (4NC each) with their statistics (RMSNorm also keeps its
  normalised input); the inputs of c_attn, attention's c_proj and c_fc (3aNC); the MLP's 4C-wide
  hidden before and after its activation (8aNC); q, k, v (3aNC: copies on CPU, views of c_attn's
  output on CUDA); by attention path, the T x T probabilities and causal mask (the CPU bf16 path up
  to 512 positions) or the output and log-sum-exp (SDPA / flash); dropout masks when dropout > 0;
  fp32 copies of q and k under QK-norm. Plus autocast's low-precision copies of the block matrices
  (a bytes per weight; fp32 on CPU keeps a transposed copy, 4). The fused head + loss never builds
  the logits: it keeps grad_h (4NC) and the fp32 head gradient (4VC) from its forward, and during
  the forward holds one chunk of logits (at most 2^27 elements) and the head's transients.
  Peak = max(end of forward, start of backward + one block's backward transients). With
  activation checkpointing per block, each block keeps only its input and one block is rebuilt at
  a time. Checked against the measured peak of real CPU steps (tests/test_plan.py: within 10% for
  cpu-tiny, cpu-small, cpu-small-modern, bf16 and fp32). Not modelled: the CPU's SDPA math
  fallback for dropout > 0 beyond 512 positions (gpt2-small-seed on a CPU). Modelled but not yet
  measured: FSDP and checkpointing (the trainer has neither yet) and the CUDA paths (no GPU run).
- workspace: DDP's gradient buckets (4 bytes per parameter, on more than one GPU), FSDP's gathered
  fp32 blocks (two, for prefetch) and root parameters, and 5% allocator slack; the CUDA context
  (about 0.75 GiB) is reserved from the GPU's memory before anything fits.

Every figure is bytes the CUDA caching allocator reserves (shown in GiB): what an out-of-memory is
about, what the micro-batch search reads, and what a run logs as `peak_reserved_gib`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from baseforge.config import RunConfig
from baseforge.hardware import GPU
from baseforge.model.gpt import GPT
from baseforge.presets import preset_config
from baseforge.train.muon import neuron_moment_shape, param_groups_for_muon

GIB = 1024**3
CUDA_CONTEXT = int(0.75 * GIB)  # the CUDA context and kernels, outside PyTorch's allocator
SLACK = 0.05  # allocator fragmentation and cuBLAS workspaces, as a fraction of the rest
LOSS_CHUNK = 1 << 27  # model/loss.py CHUNK_ELEMENTS
EXPLICIT_ATTENTION_MAX_LEN = 512  # model/attention.py: CPU bf16 attention as matmuls up to this length


@dataclass
class Shape:
    """What the memory model needs to know about a model and how it is trained."""

    n_layer: int
    n_head: int
    n_embd: int
    vocab: int
    context: int
    dropout: float
    norm: str
    qk_norm: bool
    masked_attention: bool  # documents or a window: a (B, 1, T, T) mask instead of the causal rule
    value_embeds: int
    params: int  # unique parameters
    block_matrix_params: int  # parameters of the 2-D matrices inside the blocks (autocast copies)
    root_params: int  # parameters outside the blocks (embeddings, head, final norm)
    tensors: list[tuple[int, ...]]  # every parameter's shape
    muon_tensors: list[tuple[int, ...]]  # the shapes Muon owns (empty for AdamW)
    normuon: bool  # NorMuon keeps a second moment per neuron of each Muon matrix
    flops_per_token: float
    ema: bool = False  # ema_decay: an fp32 average of every weight (train/average.py)


@dataclass
class Memory:
    weights: int
    gradients: int
    optimizer: int
    activations: int  # at the micro-batch planned, with the activation checkpointing planned
    activations_no_ckpt: int
    activations_ckpt: int
    workspace: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.workspace


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def model_shape(preset: str, vocab: int | None = None) -> Shape:
    """The preset's model, built on the meta device (no memory) to count its tensors exactly."""
    run = preset_config(preset)
    return shape_of(run.with_vocab(vocab or run.model.vocab_size or 50257))


def shape_of(run: RunConfig) -> Shape:
    """A run config's model (its vocabulary set), built on the meta device to count its tensors."""
    cfg = run.model
    with torch.device("meta"):
        model = GPT(cfg)
    muon = param_groups_for_muon(model)[0] if run.train.optimizer == "muon" else []
    blocks = [p for n, p in model.named_parameters() if n.startswith("transformer.h.")]
    return Shape(
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        vocab=cfg.known_vocab_size,
        context=cfg.context,
        dropout=cfg.dropout,
        norm=cfg.norm,
        qk_norm=cfg.qk_norm,
        masked_attention=cfg.masked_attention,
        value_embeds=cfg.value_embeds,
        params=model.num_params(),
        block_matrix_params=sum(p.numel() for p in blocks if p.ndim == 2),
        root_params=model.num_params() - sum(p.numel() for p in blocks),
        tensors=[tuple(p.shape) for p in model.parameters()],
        muon_tensors=[tuple(p.shape) for p in muon],
        normuon=bool(muon) and run.train.normuon,
        flops_per_token=model.flops_per_token(),
        ema=run.train.ema_decay > 0,
    )


def _sharded(shape: tuple[int, ...], shards: int) -> int:
    """Elements one rank holds when a tensor is split on dim 0 into `shards` equal padded pieces."""
    if shards == 1:
        return _numel(shape)
    return math.ceil(shape[0] / shards) * _numel(shape[1:])


def state_bytes(shape: Shape, shards: int = 1) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) bytes per rank: fp32, as the trainer keeps them."""
    weights = sum(4 * _sharded(t, shards) for t in shape.tensors)
    remaining = list(shape.tensors)
    optimizer = 0
    for t in shape.muon_tensors:  # Muon: one fp32 momentum buffer (NorMuon: and a vector)
        remaining.remove(t)
        optimizer += 4 * _sharded(t, shards)
        if shape.normuon:  # unsharded: NorMuon does not run under FSDP
            optimizer += 4 * math.prod(neuron_moment_shape(t))
    # AdamW: exp_avg and exp_avg_sq in fp32, and `step` as a 4-byte fp32 tensor per parameter.
    optimizer += sum(8 * _sharded(t, shards) + 4 for t in remaining)
    if shape.ema:  # FSDP is refused with an average: every rank keeps it whole
        optimizer += sum(4 * _numel(t) for t in shape.tensors)
    return weights, weights, optimizer


def attention_kind(device: str, precision: str, context: int, masked: bool = False) -> str:
    """Which attention code path runs (model/attention.py): 'explicit' matmuls, 'sdpa-cpu' or 'flash'
    (FlexAttention, for a masked rule on CUDA, keeps what flash keeps)."""
    if device == "cpu":
        explicit = precision == "bf16" and context <= EXPLICIT_ATTENTION_MAX_LEN and not masked
        return "explicit" if explicit else "sdpa-cpu"
    return "flash"


def _norm_saved(s: Shape, rows: int, width: int) -> int:
    """A norm's saved fp32 input and statistics; RMSNorm (F.rms_norm, a composite of plain ops in
    PyTorch) also keeps the normalised input for the gain's gradient."""
    if s.norm == "layernorm":
        return 4 * rows * width + 8 * rows  # input, mean and rstd
    return 2 * 4 * rows * width + 4 * rows  # input, normalised input, rstd


def _block_saved(s: Shape, b: int, a: int, attention: str) -> int:
    """Bytes one transformer block keeps for backward at micro-batch b."""
    n, c, t, h = b * s.context, s.n_embd, s.context, s.n_head
    total = 2 * _norm_saved(s, n, c)  # the two norms and their fp32 residual inputs
    total += 3 * a * n * c  # inputs of c_attn, attention's c_proj and c_fc
    total += 2 * a * n * 4 * c  # the MLP hidden before and after its activation
    total += 3 * a * n * c  # q, k, v (copies on CPU, views of the c_attn output on CUDA)
    if attention == "explicit":
        total += a * b * h * t * t + t * t  # softmax probabilities and the causal mask
        if s.dropout:
            total += b * h * t * t * (1 + a)  # dropout mask and the dropped probabilities
    else:
        total += a * n * c + 4 * b * h * t  # output and log-sum-exp
    if s.qk_norm:  # fp32 copies of q and k, normalised per head
        total += 2 * _norm_saved(s, n * h, c // h)
    if s.dropout:
        total += 2 * n * c  # bool masks of the two residual dropouts
    return total


def _block_backward(s: Shape, b: int, a: int, attention: str) -> int:
    """Transient bytes of one block's backward beyond what it saved: gradients in flight."""
    n, c, t, h = b * s.context, s.n_embd, s.context, s.n_head
    mlp = 2 * 4 * n * c + 2 * a * n * 4 * c + a * 4 * c * c  # residual grads, hidden grads, weight grad
    # Gradients of q, k, v, then their concatenation into the c_attn output's gradient.
    attn = 2 * 4 * n * c + 2 * 3 * a * n * c + (2 * a * b * h * t * t if attention == "explicit" else 0)
    return max(mlp, attn)


def _head_forward(s: Shape, b: int, a: int, device: str) -> int:
    """Transients of the fused head + loss forward (model/loss.py) at its peak, beyond what it keeps."""
    n, c, v = b * s.context, s.n_embd, s.vocab
    rows = max(1, min(n, LOSS_CHUNK // v))
    total = 4 * n * c + a * rows * v + a * rows * c  # ln_f output, the logits chunk, one grad_h chunk
    total += 4 * v * c  # the transposed fp32 head gradient before its final copy
    if a < 4:
        total += a * n * c + 2 * a * v * c  # low-precision copies of h and the head, the last partial
    return total


def activation_bytes(s: Shape, b: int, precision: str, device: str, checkpoint: bool = False) -> int:
    """Peak bytes of one micro-batch's forward + backward beyond weights, gradients and optimizer."""
    a = 4 if precision == "fp32" else 2
    n, c, v = b * s.context, s.n_embd, s.vocab
    attention = attention_kind(device, precision, s.context, s.masked_attention)
    block = _block_saved(s, b, a, attention)
    # Autocast's low-precision copies of the block matrices; in fp32 on CPU, the matmuls keep a
    # transposed copy of each weight instead (measured: torch 2.13, oneDNN).
    casts = s.block_matrix_params * a if a < 4 or device == "cpu" else 0
    if checkpoint:  # each block keeps its input; one block at a time is rebuilt with its casts
        casts = casts // s.n_layer
        blocks = s.n_layer * 4 * n * c + block
    else:
        blocks = s.n_layer * block
    embedding = n * c if s.dropout else 0  # the embedding dropout's mask
    # Value embeddings: each table's fp32 lookup lives through the forward; the 2N blocks that mix one
    # in keep it and their values in low precision for the mix's backward.
    embedding += s.value_embeds * (4 * n * c + 2 * 2 * a * n * c)
    if s.masked_attention and attention != "flash":  # one boolean mask, shared by the layers
        embedding += b * s.context * s.context
    final = _norm_saved(s, n, c) + 4 * n * c + 4 * v * c  # ln_f, grad_h, the head's fp32 gradient
    kept = blocks + casts + embedding + final
    forward_peak = kept + _head_forward(s, b, a, device)
    backward_peak = kept + max(4 * v * c + 4 * n * c, _block_backward(s, b, a, attention))
    return max(forward_peak, backward_peak)


@dataclass
class Setup:
    """How a plan trains: the preset, the GPUs and the parallelism."""

    preset: str
    gpu: GPU
    gpus: int = 1
    parallel: str = "ddp"
    micro_batch: int | None = None  # None: the largest that fits
    activation_checkpointing: str = "none"
    precision: str = ""  # "" = bf16 where the GPU has it, else fp16
    vocab: int | None = None


def _workspace(s: Shape, setup: Setup, a: int, resident: int) -> int:
    extra = 0
    if setup.parallel == "ddp" and setup.gpus > 1:
        extra += 4 * s.params  # DDP's gradient buckets (gradient_as_bucket_view is off)
    if setup.parallel == "fsdp":
        block = (s.params - s.root_params) // s.n_layer
        # Gathered fp32 blocks (this one and the prefetched next; autocast casts, as under DDP), the
        # unsharded root (embeddings, head) through forward and backward, one block's full gradient
        # to reduce-scatter.
        extra += 2 * 4 * block + 4 * s.root_params + 4 * block
    return extra + int(SLACK * (resident + extra))


def memory(s: Shape, setup: Setup, micro_batch: int) -> Memory:
    shards = setup.gpus if setup.parallel == "fsdp" else 1
    weights, grads, optimizer = state_bytes(s, shards)
    a = 4 if setup.precision == "fp32" else 2
    plain = activation_bytes(s, micro_batch, setup.precision, "cuda")
    ckpt = activation_bytes(s, micro_batch, setup.precision, "cuda", checkpoint=True)
    acts = ckpt if setup.activation_checkpointing == "blocks" else plain
    work = _workspace(s, setup, a, weights + grads + optimizer + acts)
    return Memory(weights, grads, optimizer, acts, plain, ckpt, work)


def largest_micro_batch(s: Shape, setup: Setup, usable: int, limit: int = 1024) -> int:
    """The largest micro-batch whose memory fits in `usable` bytes (0 if not even 1)."""
    if memory(s, setup, 1).total > usable:
        return 0
    lo, hi = 1, 2
    while hi <= limit and memory(s, setup, hi).total <= usable:
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if memory(s, setup, mid).total <= usable else (lo, mid)
    return lo
