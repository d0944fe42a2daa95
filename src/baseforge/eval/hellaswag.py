"""HellaSwag, completion style: pick the ending the model finds likeliest, under two protocols.

Every ending is scored by the log-probabilities of its tokens given a context. Two protocols are
in use in published figures, and they disagree item by item, so both are reported:

- lm-evaluation-harness (`acc`, `acc_norm`): the figures papers and leaderboards quote (the Open
  LLM Leaderboard, Pythia, OPT, Llama model cards...). The text is cleaned as lm-eval's hellaswag
  task does (lm_eval/tasks/hellaswag/utils.py): context = activity_label + ": " + ctx_a + " " +
  ctx_b.capitalize(), then strip, " [title]" -> ". ", bracketed text removed, double spaces made
  single; endings cleaned alike and scored with a leading space. `acc` picks the highest total
  log-probability; `acc_norm` the highest total divided by the ending's length in characters.
- llm.c / nanoGPT (`acc_norm_tok`): raw `ctx`, raw endings, the highest mean log-probability per
  ending token (OpenAI GPT-2 124M scores 0.2955 this way in llm.c's README).

Random guessing scores 0.25. Rows are read from the rowanz/hellaswag jsonl
(activity_label, ctx_a, ctx_b, ctx, endings, label).
"""

from __future__ import annotations

import math
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from baseforge.errors import UserError
from baseforge.eval.scoring import score_tokens
from baseforge.fileio import atomic_write_bytes, read_jsonl
from baseforge.progress import Progress

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"


@dataclass
class Item:
    ctx: str  # raw context (llm.c's protocol)
    endings: list[str]  # raw endings
    query: str  # lm-eval's cleaned context
    choices: list[str]  # lm-eval's cleaned endings
    label: int


def preprocess(text: str) -> str:
    """lm-eval's hellaswag text cleaning (WikiHow rows carry bracketed artifacts such as [title])."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


class BadLabel(ValueError):
    pass


def item_from_row(row: dict) -> Item:
    query = preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
    if not isinstance(row["endings"], list) or len(row["endings"]) < 2:
        raise ValueError("endings is not a list of at least two endings")
    endings = [str(e) for e in row["endings"]]
    label = row["label"]
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)  # the rowanz files store it as a number; a digit string means the same
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
        raise BadLabel(f"label {str(label)[:20]!r} is not the index of one of its {len(endings)} endings")
    return Item(row["ctx"], endings, query, [preprocess(e) for e in endings], label)


def default_path() -> Path:
    return Path.home() / ".cache" / "baseforge" / "hellaswag_val.jsonl"


def download(path: Path) -> Path:
    try:
        with urllib.request.urlopen(URL, timeout=30) as resp:
            atomic_write_bytes(path, resp.read())
    except OSError as exc:
        raise UserError(
            f"cannot download HellaSwag ({exc}); offline, pass --data with a local hellaswag_val.jsonl(.gz)"
        ) from None
    return path


def load_items(path: Path | None, limit: int | None = None) -> list[Item]:
    if path is None:
        path = default_path()
        if not path.is_file():
            download(path)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"HellaSwag file {path} not found")
    items: list[Item] = []
    for lineno, row in read_jsonl(path):
        if limit is not None and len(items) >= limit:
            break
        try:
            items.append(item_from_row(row))
        except BadLabel as exc:
            raise UserError(f"{path}:{lineno}: {exc}; fix or remove that row") from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UserError(
                f"{path}:{lineno}: not a HellaSwag row (activity_label, ctx_a, ctx_b, ctx, endings, label)"
            ) from None
    if not items:
        raise UserError(
            f"HellaSwag file {path} holds no rows"
            + (" (--limit 0)" if limit == 0 else "; pass a hellaswag_val.jsonl(.gz) with --data")
        )
    return items


def score_continuations(
    model, tokenizer, pairs: list[tuple[str, str]], device="cpu"
) -> list[tuple[float, int]]:
    """(total log-probability, token count) of each continuation given its context, in one batch.

    Context and continuation are tokenized separately (the continuation carries its leading
    space); past the model's context the oldest context tokens are dropped, and an ending longer
    than the window is scored by its tail (eval.scoring.score_tokens).
    """
    tokens = [(tokenizer.encode(context), tokenizer.encode(continuation)) for context, continuation in pairs]
    return [(s.logprob, s.tokens) for s in score_tokens(model, tokens, len(tokens), device)]


def score_item(model, tokenizer, item: Item, device="cpu") -> dict[str, list[float]]:
    """Per-ending scores: "ll" (lm-eval's total), "ll_per_char" (lm-eval's acc_norm score),
    "ll_per_token" (llm.c's mean over the raw ending's tokens)."""
    pairs = [(item.query, " " + c) for c in item.choices] + [(item.ctx, " " + e) for e in item.endings]
    scores = score_continuations(model, tokenizer, pairs, device)
    lm_eval, llmc = scores[: len(item.choices)], scores[len(item.choices) :]
    return {
        "ll": [total for total, _ in lm_eval],
        "ll_per_char": [total / max(len(c), 1) for (total, _), c in zip(lm_eval, item.choices)],
        "ll_per_token": [total / n for total, n in llmc],
    }


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # the first of ties, as numpy's argmax


def binomial_stderr(accuracy: float, items: int) -> float:
    """The standard error of an accuracy over `items` items, sqrt(p(1-p)/n): 50 items at 0.3 give
    0.065, so a 95% interval of about ±0.13; a figure without it reads as more exact than it is."""
    return math.sqrt(accuracy * (1 - accuracy) / items) if items > 0 else float("nan")


def evaluate_hellaswag(
    model, tokenizer, path: Path | None = None, limit: int | None = None, device="cpu", show_progress=False
) -> dict:
    """{"acc", "acc_norm", "acc_norm_tok", "items", "stderr": {metric: standard error}} over the first
    `limit` items (all by default); stderr as lm-eval's (harness.py), which the report shows as ±.

    acc and acc_norm follow lm-evaluation-harness (compare with published lm-eval figures);
    acc_norm_tok follows llm.c (compare with llm.c / nanoGPT figures).
    """
    items = load_items(path, limit)
    model.eval()
    hits = {"acc": 0, "acc_norm": 0, "acc_norm_tok": 0}
    keys = {"acc": "ll", "acc_norm": "ll_per_char", "acc_norm_tok": "ll_per_token"}
    with Progress(len(items), "hellaswag", "item", enabled=show_progress, every_s=10) as bar:
        for n, item in enumerate(items, 1):
            scores = score_item(model, tokenizer, item, device)
            for metric, key in keys.items():
                hits[metric] += int(_argmax(scores[key]) == item.label)
            bar.update(1, acc_norm=f"{hits['acc_norm'] / n:.4f}")
    accuracy = {k: v / len(items) for k, v in hits.items()}
    stderr = {k: binomial_stderr(v, len(items)) for k, v in accuracy.items()}
    return {**accuracy, "items": len(items), "stderr": stderr}
