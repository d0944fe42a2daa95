"""HellaSwag, completion style (as in llm.c / nanoGPT's eval): pick the ending the model finds likeliest.

For each item, the context and each of its four endings (with a leading space) are scored by the
log-probabilities of the ending's tokens given the context. `acc` picks the ending with the
highest total log-probability; `acc_norm` the highest mean log-probability per ending token (llm.c
averages the loss over completion tokens; OpenAI GPT-2 124M scores acc_norm 0.2955 that way).
Random guessing scores 0.25. Rows are read from the rowanz/hellaswag jsonl (ctx, endings, label).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F

from baseforge.errors import UserError
from baseforge.fileio import read_jsonl

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"


def default_path() -> Path:
    return Path.home() / ".cache" / "baseforge" / "hellaswag_val.jsonl"


def download(path: Path) -> Path:
    from baseforge.fileio import atomic_write_bytes

    try:
        with urllib.request.urlopen(URL, timeout=30) as resp:
            atomic_write_bytes(path, resp.read())
    except OSError as exc:
        raise UserError(
            f"cannot download HellaSwag ({exc}); offline, pass --data with a local hellaswag_val.jsonl(.gz)"
        ) from None
    return path


def load_items(path: Path | None, limit: int | None = None) -> list[dict]:
    if path is None:
        path = default_path()
        if not path.is_file():
            download(path)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"HellaSwag file {path} not found")
    items = []
    for lineno, row in read_jsonl(path):
        if limit is not None and len(items) >= limit:
            break
        try:
            items.append({"ctx": row["ctx"], "endings": list(row["endings"]), "label": int(row["label"])})
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}:{lineno}: not a HellaSwag row (ctx, endings, label)") from None
    return items


@torch.no_grad()
def score_item(model, tokenizer, item: dict, device="cpu") -> tuple[list[float], list[float]]:
    """(sum, mean) log-probability of each ending's tokens given the context."""
    ctx = tokenizer.encode(item["ctx"])
    endings = [tokenizer.encode(" " + e) for e in item["endings"]]
    limit = model.config.context
    rows, spans = [], []
    for ending in endings:
        seq = (ctx + ending)[-limit:]  # keep the ending; drop the oldest context if too long
        rows.append(seq)
        spans.append((len(seq) - len(ending), len(seq)))
    width = max(len(r) for r in rows)
    batch = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = torch.tensor(r)
    logits, _ = model(batch.to(device))
    logprobs = F.log_softmax(logits.float(), dim=-1).cpu()
    sums, means = [], []
    for i, (start, end) in enumerate(spans):
        targets = batch[i, start:end]
        lp = logprobs[i, start - 1 : end - 1].gather(1, targets[:, None]).squeeze(1)
        sums.append(lp.sum().item())
        means.append(lp.mean().item())
    return sums, means


def evaluate_hellaswag(
    model, tokenizer, path: Path | None = None, limit: int | None = None, device="cpu", progress=None
) -> dict:
    """{"acc", "acc_norm", "items"} over the first `limit` items (all by default)."""
    items = load_items(path, limit)
    model.eval()
    correct = correct_norm = 0
    for n, item in enumerate(items, 1):
        sums, means = score_item(model, tokenizer, item, device)
        correct += int(max(range(4), key=lambda i: sums[i]) == item["label"])
        correct_norm += int(max(range(4), key=lambda i: means[i]) == item["label"])
        if progress and n % 100 == 0:
            progress(f"hellaswag {n}/{len(items)}: acc_norm {correct_norm / n:.4f}")
    return {"acc": correct / len(items), "acc_norm": correct_norm / len(items), "items": len(items)}
