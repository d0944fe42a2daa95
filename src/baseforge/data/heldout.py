"""The held-out split's floor: validation gets at least enough tokens for a run's evaluation.

The document rule (prepare.py) holds out a fraction of the documents; a corpus of few long documents
then holds out too few tokens (105 Wikipedia articles at --val-fraction 0.01: one article). So val gets
at least `--min-val-tokens` (capped at VAL_CAP of the corpus): whole documents move from the end of the
train stream into val, or, with too few documents for the rule, the stream's tail is held out; the
manifest records how, and prepare warns when validation is still small.
"""

from __future__ import annotations

import numpy as np

from baseforge.data.packing import Router

# Validation's token floor (--min-val-tokens): the trainer's default eval_tokens, so a run with the
# default settings evaluates on as many tokens as it asks for; at most VAL_CAP of the corpus.
MIN_VAL_TOKENS = 1_048_576
VAL_CAP = 0.1
NOISY_VAL_TOKENS = 65_536  # the small presets' eval_tokens: fewer held-out tokens than this warn


def val_target(fraction: float, min_val_tokens: int, tokens: int) -> int:
    """The held-out tokens a corpus of `tokens` gets at least: --min-val-tokens, capped at VAL_CAP of
    the corpus (a tiny corpus keeps most of its tokens for training); 0 when there is no val split."""
    return 0 if fraction <= 0 else min(min_val_tokens, int(tokens * VAL_CAP))


def val_from_tail(router: Router, fraction: float, target: int, reach_back, log) -> None:
    """Validation from the stream's tail: the document rule picked no document (too few of them).
    The tail is the last `fraction` of the tokens, or `target` if that is more."""
    n, docs = max(int(router.counts.tokens * fraction), target), router.counts.documents
    if n < 1:
        return
    reach_back(n)
    router.val_from_tail(n)
    log(
        f"held out: {docs:,} document(s) are too few for --val-fraction {fraction:g} (1 in "
        f"{1 / fraction:.0f} documents), so validation is the last {n:,} tokens of the stream instead"
    )


def meet_floor(router: Router, target: int, reach_back, eot: int) -> tuple[int, int]:
    """Move whole documents from the end of the train stream into val until val holds `target`
    tokens; returns (documents, tokens) moved.

    It takes the fewest last documents that reach the target; when those would take val past twice
    the target (so never past 2 x VAL_CAP of the corpus), the last documents that fit under that
    (perhaps none). Documents are found by their end-of-text tokens: with `--pack crop` a cropped
    document lost its end-of-text, so it moves together with the one before it and the count of
    documents moved is low by the cropped ones among them. Moving shortens the train split, also
    under --budget / --max-train-tokens.
    """
    val, train = router.writers["val"], router.writers["train"]
    have = val.tokens + val.buffered
    need = target - have
    window = 2 * target - have  # the most tokens that may move
    if need <= 0 or window <= 0:
        return 0, 0
    reach_back(window)
    stream = np.concatenate(train.buffer) if train.buffer else np.zeros(0, dtype=np.uint32)
    end = len(stream)
    lo = max(end - window, 1)  # never the whole train split
    starts = np.flatnonzero(stream[lo - 1 : end - 1] == eot) + lo  # documents that begin in the window
    if not len(starts):
        return 0, 0
    reaching = starts[end - starts >= need]
    cut = int(reaching[-1]) if len(reaching) else int(starts[0])
    moving = stream[cut:]
    train.buffer, train.buffered = [stream[:cut]], cut
    ends = np.flatnonzero(moving == eot) + 1
    docs = np.split(moving, ends[ends < len(moving)])
    for doc in docs:
        router.hold_out(doc)
    train.documents -= len(docs)
    return len(docs), len(moving)


def floor_record(min_val_tokens: int, target: int, moved: tuple[int, int]) -> dict:
    """How val was made when --min-val-tokens added to the held-out documents (the manifest's "val_floor")."""
    return {
        "min_val_tokens": min_val_tokens,
        "target": target,
        "moved_documents": moved[0],
        "moved_tokens": moved[1],
        "from": "end of the train stream",
    }


def val_warning(fraction: float, min_val_tokens: int, tokens: int, splits: dict) -> str | None:
    """One `warning:` line when val is under the floor it could have (--min-val-tokens, capped at
    VAL_CAP of the corpus: whole documents did not fit), or under NOISY_VAL_TOKENS."""
    if fraction <= 0:
        return None
    val = splits.get("val", {}).get("tokens", 0)
    target = val_target(fraction, min_val_tokens, tokens)
    reasons = []
    if val < target:
        capped = f", capped at {VAL_CAP:.0%} of the corpus" if target < min_val_tokens else ""
        reasons.append(
            f"under the floor of {target:,} (--min-val-tokens {min_val_tokens:,}{capped}): "
            "no more whole documents fit"
        )
    if val < NOISY_VAL_TOKENS:
        reasons.append(
            f"under {NOISY_VAL_TOKENS:,} tokens a held-out loss is noisy and a run's eval_tokens "
            "is cut to what there is"
        )
    if not reasons:
        return None
    return f"warning: validation has only {val:,} tokens; " + "; ".join(reasons)
