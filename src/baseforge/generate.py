"""Sampling from a GPT with its KV cache: the prompt is run once, then each new token costs one position.

When prompt + new tokens outgrow the model's context, the window is cropped to the last `context`
tokens and re-run from an empty cache (positions restart at 0, as for a fresh prompt). From then on
every token pays a full `context`-long forward: exactly what recomputing the whole cropped window
would give, which is what the tests compare against. A model trained at context T was never shown
positions beyond T, so a sliding window is the honest thing to do.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Callable

import torch

from baseforge.errors import UserError
from baseforge.model.gpt import GPT, KVCache


def check_sampling(temperature: float, top_k: int | None = None) -> None:
    """Refuse (UserError, one line) a temperature that is not a finite number >= 0 (nan, inf, -1)
    or a top_k below 1: nan would otherwise reach the sampler as nan probabilities."""
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"temperature must be a finite number >= 0 (0 = greedy), not {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be >= 1, not {top_k}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One token id from a (vocab,) row of logits. temperature 0 = greedy (argmax)."""
    check_sampling(temperature, top_k)
    logits = logits.float()
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # Draw on the CPU with a CPU generator so a seed gives the same stream on any device.
    probs = torch.softmax(logits, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    eot_id: int | None = None,
    stop_at_eot: bool = False,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Continue `prompt_ids` by up to `max_new_tokens` tokens; returns the new ids only.

    temperature 0 is greedy; `top_k` keeps the k most likely tokens; `seed` makes sampling
    reproducible (None = fresh randomness). With `stop_at_eot`, generation ends at `eot_id`,
    which is not returned. `device` is where the model lives (default: its parameters' device);
    `autocast_dtype` (e.g. torch.bfloat16) runs the forward under autocast. `on_token` is called
    with each new id as soon as it is sampled (for streaming output). The model runs in eval mode
    without gradients; its training mode is restored afterwards.
    """
    check_sampling(temperature, top_k)  # before any work: a bad temperature is one line, not a trace
    if not prompt_ids:
        raise ValueError("generate needs a non-empty prompt (start with the end-of-text token if needed)")
    if stop_at_eot and eot_id is None:
        raise ValueError("stop_at_eot needs eot_id")
    device = _device_of(model, device)
    context = model.config.context
    generator = _seeded_generator(seed)
    amp = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    cache_dtype = autocast_dtype or next(model.parameters()).dtype

    ids = list(prompt_ids)
    new: list[int] = []
    with _inference(model), amp:
        cache = KVCache(model.config, batch=1, max_len=context, device=device, dtype=cache_dtype)
        cache.pos = context  # empty slot count is zero: forces the first prefill below
        for _ in range(max_new_tokens):
            logits, _ = model(_next_input(ids, cache, device), cache=cache)
            token = sample_next(logits[0, -1], temperature, top_k, generator)
            if stop_at_eot and token == eot_id:
                break
            ids.append(token)
            new.append(token)
            if on_token is not None:
                on_token(token)
    return new


def _next_input(ids: list[int], cache: KVCache, device: torch.device) -> torch.Tensor:
    """The next forward's input: the last context's ids when the cache is full (the first step, or the
    window has filled: crop and prefill again), else the newest id alone."""
    context = cache.max_len
    if cache.pos == context:
        cache.pos = 0  # stale entries are overwritten before they are read
        return torch.tensor([ids[-context:]], dtype=torch.long, device=device)
    return torch.tensor([[ids[-1]]], dtype=torch.long, device=device)


def generate_batch(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    done: Callable[[int, list[int]], bool] | None = None,
    device: torch.device | str | None = None,
) -> list[list[int]]:
    """Continue several prompts of the same length at once, through one batched KV cache.

    Returns each row's new ids. `done(row, new_ids)` is asked after each token; a row that is done
    stops growing, and the loop ends when every row is (or after `max_new_tokens`). Prompt plus
    new tokens must fit the model's context: the caller crops the prompts (no sliding window
    here, unlike `generate`). Rows of one batch share positions, hence the equal lengths.
    """
    check_sampling(temperature, top_k)
    if not prompts or len({len(p) for p in prompts}) != 1 or not prompts[0]:
        raise ValueError("generate_batch needs non-empty prompts of one length")
    context = model.config.context
    if len(prompts[0]) + max_new_tokens > context:
        raise ValueError(
            f"{len(prompts[0])} prompt + {max_new_tokens} new tokens exceed the context {context}"
        )
    device = _device_of(model, device)
    generator = _seeded_generator(seed)
    dtype = next(model.parameters()).dtype
    new: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    with _inference(model):
        cache = KVCache(model.config, batch=len(prompts), max_len=context, device=device, dtype=dtype)
        x = torch.tensor(prompts, dtype=torch.long, device=device)
        for _ in range(max_new_tokens):
            logits, _ = model(x, cache=cache)
            tokens = [sample_next(row, temperature, top_k, generator) for row in logits[:, -1]]
            for i, token in enumerate(tokens):
                if not finished[i]:
                    new[i].append(token)
                    finished[i] = done is not None and done(i, new[i])
            if all(finished):
                break
            x = torch.tensor([[t] for t in tokens], dtype=torch.long, device=device)
    return new


def _device_of(model: GPT, device: torch.device | str | None) -> torch.device:
    """`device`, or where the model's parameters are."""
    return torch.device(device) if device is not None else next(model.parameters()).device


def _seeded_generator(seed: int | None) -> torch.Generator:
    """A CPU generator for sampling (see sample_next): seeded, or fresh randomness for None."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@contextlib.contextmanager
def _inference(model: GPT) -> Iterator[None]:
    """The model in eval mode without gradients; its training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
