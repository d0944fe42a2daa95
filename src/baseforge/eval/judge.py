"""The LLM judge of the instruction-following test: every model's answer to one question, in one prompt.

Answers files (written by `baseforge answer`) hold one JSON object per line:

    {"id": "test-0007", "model": "seed-163m", "instruction": "...", "input": "...",
     "reference": "<the dataset's output>", "answer": "<the model's response>"}

For each item id, the answers of all models go into ONE prompt, labelled A, B, C, ... (AA, AB, ...
after Z, for any number of models) in an order shuffled by (seed, id), and the judge returns a JSON
object of integer scores 0-100 per label. Scoring side by side keeps every model on the same scale
(the write-up's final form).

Backends: OpenAI-compatible chat completions (`POST {base}/chat/completions`, bearer key from an
environment variable) and Ollama (`POST {base}/api/chat`). Rate limits (429, honouring
Retry-After up to a cap, `max_retry_after_s`), server errors, timeouts, refused connections and
malformed replies are retried with exponential backoff and jitter. The timeout bounds each whole
request (connect, headers and body), not each socket read. The API key is redacted from every
message, and from every reply text kept in the cache. Every judged item is appended to a cache
(JSON lines, keyed by a hash of backend, judge model and prompt), so a rerun never pays twice and
an interrupted run resumes. Items that still fail are reported by id and left out of the means,
never dropped silently.

The table gives each model's mean score with a 95% t-interval (mean ± t(0.975, n-1) · s / √n).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import string
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from baseforge.errors import UserError
from baseforge.eval.judge_api import Backend, Malformed, Transient
from baseforge.fileio import read_append_log, read_jsonl
from baseforge.progress import progress_bar

FIELDS = ("id", "model", "instruction", "input", "reference", "answer")
PROMPT = """You are grading answers to an instruction against a reference answer.

### Instruction:
{instruction}
{input_block}
### Reference answer:
{reference}

### Answers to grade:
{answers}

Score every answer from 0 to 100 for correctness and helpfulness against the reference (100 = as good
as the reference). Reply with only a JSON object mapping each label to an integer score, for example
{example}"""


def load_answers(paths: list[Path]) -> dict[str, dict]:
    """{item id: {"instruction", "input", "reference", "answers": {model: answer}}} from answers files."""
    items: dict[str, dict] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"answers file {path} not found")
        for lineno, row in read_jsonl(path):
            missing = [k for k in FIELDS if not isinstance(row.get(k), str)]
            if missing:
                raise UserError(f"{path}:{lineno}: missing or non-string field(s) {', '.join(missing)}")
            item = items.setdefault(
                row["id"],
                {
                    "instruction": row["instruction"],
                    "input": row["input"],
                    "reference": row["reference"],
                    "answers": {},
                },
            )
            if row["model"] in item["answers"]:
                raise UserError(f"{path}:{lineno}: model {row['model']!r} answers item {row['id']} twice")
            item["answers"][row["model"]] = row["answer"]
    if not items:
        raise UserError("the answers files hold no answers")
    return items


def answer_labels(n: int) -> list[str]:
    """A, B, ..., Z, AA, AB, ..., AZ, BA, ...: `n` distinct labels, as spreadsheet columns."""
    labels = []
    for i in range(n):
        label, k = "", i + 1
        while k:
            k, r = divmod(k - 1, 26)
            label = string.ascii_uppercase[r] + label
        labels.append(label)
    return labels


def build_prompt(item_id: str, item: dict, seed: int) -> tuple[str, dict[str, str]]:
    """(prompt, {label: model}) with the models in an order shuffled by (seed, item id)."""
    models = sorted(item["answers"])
    random.Random(f"{seed}:{item_id}").shuffle(models)
    labels = dict(zip(answer_labels(len(models)), models))
    answers = "\n\n".join(f"[{label}]\n{item['answers'][model]}" for label, model in labels.items())
    example = json.dumps({label: 50 for label in labels})
    input_block = f"\n### Input:\n{item['input']}\n" if item["input"] else ""
    return PROMPT.format(
        instruction=item["instruction"],
        input_block=input_block,
        reference=item["reference"],
        answers=answers,
        example=example,
    ), labels


def parse_scores(text: str, labels) -> dict[str, int]:
    """The judge's {label: score}; JSON may sit in a code fence or among other text."""
    for candidate in re.findall(r"\{[^{}]*\}", text, flags=re.S):
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and set(labels) <= set(obj):
            scores = {}
            for label in labels:
                value = obj[label]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                    raise Malformed(f"score for {label} is {value!r}, not a number from 0 to 100")
                scores[label] = int(round(value))
            return scores
    raise Malformed(f"no JSON object with scores for {', '.join(labels)} in the reply")


class Cache:
    """Append-only JSON lines; a torn last line (a killed run) is ignored."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        for entry in read_append_log(self.path):
            if "key" in entry:
                self.entries[entry["key"]] = self._checked(entry)

    def _checked(self, entry: dict) -> dict:
        """A cached entry with a label-to-model map and a score for each label; else UserError."""
        labels, scores = entry.get("labels"), entry.get("scores")
        ok = (
            isinstance(labels, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
            and isinstance(scores, dict)
            and set(scores) == set(labels)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in scores.values())
        )
        if not ok:
            what = "labels" if not isinstance(labels, dict) else "labels or scores"
            item = str(entry.get("id", "?"))[:60]
            raise UserError(
                f"judge cache {self.path}: the entry for item {item!r} has no valid '{what}'; "
                "delete that line (the item is judged again) or the cache file"
            )
        return entry

    def put(self, entry: dict) -> None:
        self.entries[entry["key"]] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("\n" + json.dumps(entry) + "\n")  # leading newline: never glue onto a torn line
            f.flush()
            os.fsync(f.fileno())


@dataclass
class Result:
    scores: dict[str, dict[str, int]] = field(default_factory=dict)  # item id -> {model: score}
    failed: dict[str, str] = field(default_factory=dict)  # item id -> last error
    requests: int = 0


def judge(
    items: dict[str, dict],
    backend: Backend,
    cache: Cache,
    *,
    seed: int = 0,
    retries: int = 5,
    backoff_s: float = 1.0,
    max_retry_after_s: float = 300.0,
    log=None,
) -> Result:
    """Scores for every item (cached replies reused). Progress shows when `log` is given: a bar on a
    terminal, else plain periodic lines through `log`. A server's Retry-After is honoured up to
    `max_retry_after_s` seconds (and said so through `log` when it asks for more)."""
    result = Result()
    bar = progress_bar(len(items), desc="judge", unit="item", enabled=log is not None, write=log)
    pause = partial(_retry_wait, backoff_s=backoff_s, cap=max_retry_after_s, log=log)
    for item_id, item in sorted(items.items()):
        prompt, labels = build_prompt(item_id, item, seed)
        key = hashlib.sha256(json.dumps([backend.kind, backend.model, prompt]).encode()).hexdigest()
        entry, error = cache.entries.get(key), None
        if entry is None:
            record = {"key": key, "id": item_id, "labels": labels}
            entry, error = _ask(backend, prompt, record, cache, result, retries, pause)
        if entry is None:
            result.failed[item_id] = error or "unknown error"
        else:
            result.scores[item_id] = {
                entry["labels"][label]: score for label, score in entry["scores"].items()
            }
        bar.update(1, failed=len(result.failed), requests=result.requests)
    bar.close()
    return result


def _ask(
    backend: Backend, prompt: str, record: dict, cache: Cache, result: Result, retries: int, pause
) -> tuple[dict | None, str | None]:
    """Ask `backend` until its reply parses (the entry, `record` with scores and reply, is cached) or
    `retries` retries are spent: (entry, None), or (None, the last error)."""
    error = None
    for attempt in range(retries + 1):
        try:
            result.requests += 1
            text = backend.request(prompt)
            entry = {**record, "scores": parse_scores(text, record["labels"]), "reply": text}
            cache.put(entry)
            return entry, None
        except (Transient, Malformed) as exc:
            error = str(exc)
            if attempt < retries:
                time.sleep(pause(exc, attempt, record["id"]))
    return None, error


def _retry_wait(exc: Exception, attempt: int, item_id: str, *, backoff_s: float, cap: float, log) -> float:
    """Seconds before the next try: the server's Retry-After, else exponential backoff; jittered, at
    most `cap` (said through `log` when the server asked for more)."""
    asked = getattr(exc, "retry_after", None)
    wait = (asked or backoff_s * 2**attempt) * (1 + 0.25 * random.random())
    if wait <= cap:
        return wait
    if log is not None and asked and asked > cap:
        log(
            f"judge: item {item_id}: the server asks to wait {asked:g} s (Retry-After); "
            f"waiting {cap:g} s, the cap (--max-retry-after)"
        )
    return cap


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile (exact table for small df, Cornish-Fisher expansion beyond)."""
    table = {
        1: 12.706,
        2: 4.303,
        3: 3.182,
        4: 2.776,
        5: 2.571,
        6: 2.447,
        7: 2.365,
        8: 2.306,
        9: 2.262,
        10: 2.228,
    }
    if df in table:
        return table[df]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def summarize(result: Result) -> list[dict]:
    """Per model: mean, n, 95% CI half-width and bounds; sorted by mean, best first."""
    per_model: dict[str, list[int]] = defaultdict(list)
    for scores in result.scores.values():
        for model, score in scores.items():
            per_model[model].append(score)
    rows = []
    for model, values in per_model.items():
        n = len(values)
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
        half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
        rows.append(
            {"model": model, "mean": mean, "n": n, "ci95": half, "low": mean - half, "high": mean + half}
        )
    return sorted(rows, key=lambda r: -r["mean"])
