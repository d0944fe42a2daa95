"""The held-out split after the stream is routed: its floor, and the tail for corpora of few documents.

The sample (docsample.py) holds out a fraction of the documents; a corpus of few long documents then
holds out too few tokens (105 Wikipedia articles at --val-fraction 0.01: one article). So val gets at
least `--min-val-tokens` (capped at VAL_CAP of the corpus): more train documents, sampled with the
same seed, move into val; with too few documents for a sample, or under `--held-out tail`, the
stream's tail is held out. The manifest records how, and prepare warns when validation is still small.
"""

from __future__ import annotations

import numpy as np

from baseforge.data.docsample import uniform
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


def finish_val(
    router: Router, *, method: str, fraction: float, seed: int, min_val_tokens: int, reach_back, eot: int, log
) -> dict | None:
    """Complete the held-out split once the stream is routed; returns the manifest's "val_floor" when
    the floor moved documents. The sample (docsample.py) tops val up to its floor with more sampled
    documents; a corpus whose sample is empty or everything, or whose documents are all too long to
    move, and the `tail` method, hold out the stream's tail instead."""
    target = val_target(fraction, min_val_tokens, router.counts.tokens)
    floor = None
    if fraction <= 0:
        return floor
    if method == "sample" and router.sampled_everything():
        router.unroute_held_out()
    elif method == "sample" and target:
        whole = router.writers["train"].tokens + router.writers["train"].buffered <= FLOOR_REACH
        moved = meet_floor(router, target, reach_back, eot, seed)
        floor = floor_record(min_val_tokens, target, moved, whole) if moved[0] else None
    if method == "tail" or router.counts.held_out_tokens == 0:
        n = val_from_tail(router, fraction, target, reach_back)
        if method == "sample" and n:
            log(
                f"held out: {router.counts.documents:,} document(s) are too few to sample "
                f"--val-fraction {fraction:g} of them from, so validation is the last {n:,} tokens of "
                "the stream instead"
            )
    return floor


def val_from_tail(router: Router, fraction: float, target: int, reach_back) -> int:
    """Validation from the stream's tail: the last `fraction` of the tokens, or `target` if that is
    more (never the whole stream); returns the tokens held out."""
    n = min(max(int(router.counts.tokens * fraction), target), router.counts.tokens - 1)
    if n < 1:
        return 0
    reach_back(n)
    router.val_from_tail(n)
    return n


# The floor samples from at most this many train tokens, read back into memory (~4 bytes each): all of
# the train split of any corpus the default floor applies to (under 1M / 0.01 = 100M tokens).
FLOOR_REACH = 100_000_000


def meet_floor(router: Router, target: int, reach_back, eot: int, seed: int) -> tuple[int, int]:
    """Move a seeded sample of whole train documents into val until val holds `target` tokens;
    returns (documents, tokens) moved.

    Documents are drawn in the order of docsample.uniform(ordinal, seed, stream 1) and taken while
    they keep val under twice the target (so never past 2 x VAL_CAP of the corpus), until it reaches
    the target; at least one document stays in train. They come from the whole train split, or its
    last FLOOR_REACH tokens for a larger one. Documents are found by their end-of-text tokens: with
    `--pack crop` a cropped document lost its end-of-text, so it moves together with the next one.
    Moving shortens the train split, also under --budget / --max-train-tokens. Moved documents go to
    val alone: the test slice is cut from the sampled documents only.
    """
    val, train = router.writers["val"], router.writers["train"]
    have = val.tokens + val.buffered
    need, window = target - have, 2 * target - have  # window: the most tokens that may move
    if need <= 0 or window <= 0:
        return 0, 0
    reach_back(FLOOR_REACH)
    stream = np.concatenate(train.buffer) if train.buffer else np.zeros(0, dtype=np.uint32)
    after_eot = np.flatnonzero(stream[:-1] == eot) + 1
    # The buffer's first token starts a document only when it is the start of the train split.
    starts = np.concatenate([[0], after_eot]) if not train.shards else after_eot
    if len(starts) < 2:
        return 0, 0
    lengths = np.diff(np.append(starts, len(stream)))
    chosen: list[int] = []
    got = 0
    for j in np.argsort(uniform(np.arange(len(starts)), seed, stream=1), kind="stable"):
        if got >= need or len(chosen) == len(starts) - 1:
            break
        if got + lengths[j] <= window:
            chosen.append(int(j))
            got += int(lengths[j])
    keep = np.ones(len(stream), dtype=bool)
    for j in sorted(chosen):  # in stream order, so val reads as the documents did
        a, b = int(starts[j]), int(starts[j] + lengths[j])
        router.to_val(stream[a:b])
        keep[a:b] = False
    kept = stream[keep]
    train.buffer, train.buffered = [kept], len(kept)
    train.documents -= len(chosen)
    return len(chosen), got


def floor_record(min_val_tokens: int, target: int, moved: tuple[int, int], whole: bool) -> dict:
    """How val was made when --min-val-tokens added to the held-out documents (the manifest's "val_floor")."""
    where = "the train documents" + ("" if whole else f" in the last {FLOOR_REACH:,} train tokens")
    return {
        "min_val_tokens": min_val_tokens,
        "target": target,
        "moved_documents": moved[0],
        "moved_tokens": moved[1],
        "from": f"a seeded sample of {where}",
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
