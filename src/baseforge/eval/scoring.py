"""The log-probability of a continuation given its context: the one scorer under HellaSwag and the
lm-eval adapter's loglikelihood requests.

Only the continuation's positions are normalised: their rows of the logits are picked out and
log-softmaxed (in float32), so no (batch, time, vocab) log-softmax is made beside the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Scored:
    logprob: float  # total log-probability of the scored continuation tokens
    greedy: bool  # whether greedy decoding would produce every one of them
    tokens: int  # how many were scored: fewer than the continuation's when it is longer than the window


@torch.no_grad()
def score_tokens(
    model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8, device="cpu"
) -> list[Scored]:
    """Score each (context tokens, continuation tokens) pair, in padded batches.

    The input is the last `context` tokens of context + continuation minus the final one (as
    lm-eval's models truncate): past the model's context the oldest context tokens are dropped, and
    a continuation longer than the window is scored by its tail. Longest first, so a batch pads little.
    """
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
    out: list[Scored | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, scored in zip(chunk, _score_batch(model, [pairs[i] for i in chunk], device)):
            out[i] = scored
    return out  # type: ignore[return-value]


def _score_batch(model, pairs: list[tuple[list[int], list[int]]], device) -> list[Scored]:
    limit = model.config.context
    inputs = [(context + cont)[-(limit + 1) :][:-1] for context, cont in pairs]
    conts = [cont[len(cont) - min(len(cont), len(x)) :] for (_, cont), x in zip(pairs, inputs)]
    batch = torch.zeros(len(inputs), max(len(x) for x in inputs), dtype=torch.long)
    for row, x in enumerate(inputs):
        batch[row, : len(x)] = torch.tensor(x)
    logits, _ = model(batch.to(device))
    # The positions that predict a continuation token: the last len(cont) of each row's input.
    rows = [row for row, cont in enumerate(conts) for _ in cont]
    positions = [p for x, cont in zip(inputs, conts) for p in range(len(x) - len(cont), len(x))]
    logp = F.log_softmax(logits[rows, positions].float(), dim=-1)  # (continuation tokens, vocab)
    targets = torch.tensor([t for cont in conts for t in cont], dtype=torch.long)
    picked = logp.gather(1, targets[:, None].to(logp.device)).cpu()
    hits = (logp.argmax(-1).cpu() == targets).tolist()
    out, at = [], 0
    for cont in conts:
        n = len(cont)
        total = picked[at : at + n].sum().item() if n else 0.0
        out.append(Scored(total, all(hits[at : at + n]), n))
        at += n
    return out
