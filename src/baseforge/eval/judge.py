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
import http.client
import json
import math
import os
import random
import re
import socket
import string
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from baseforge.errors import UserError
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


# --- answers --------------------------------------------------------------------------------------
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


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would re-send the Authorization header to another URL: treat it as an error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Deadline:
    """An opener whose connections are shut down when `timeout_s` has passed since `start`: a
    server that trickles its headers or body (one byte per second) cannot stretch one request
    past its timeout, as a per-read socket timeout alone would let it."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.sockets: list[socket.socket] = []
        self.expired = False
        self.lock = threading.Lock()
        deadline = self

        def connection(cls):
            class Watched(cls):
                def connect(self):
                    super().connect()
                    # Kept here: urllib drops conn.sock once the headers are in, the body still
                    # reads from this socket.
                    with deadline.lock:
                        deadline.sockets.append(self.sock)
                        if deadline.expired:
                            deadline._shutdown(self.sock)

            return Watched

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(connection(http.client.HTTPConnection), req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req):  # the default TLS context (certificates and host names checked)
                return self.do_open(connection(http.client.HTTPSConnection), req, context=self._context)

        self.opener = urllib.request.build_opener(_RefuseRedirects, HTTP, HTTPS)

    @staticmethod
    def _shutdown(sock) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read at once
        except OSError:
            pass

    def _expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                self._shutdown(sock)

    def __enter__(self):
        self.timer = threading.Timer(self.timeout_s, self._expire)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        return False


def redact(text: str, secrets) -> str:
    """`text` with every secret (an API key) replaced by [REDACTED]."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return text


class Malformed(ValueError):
    pass


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


# --- backends -------------------------------------------------------------------------------------
class Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Backend:
    kind: str  # "openai" or "ollama"
    model: str
    base_url: str
    api_key: str | None = None
    timeout: float = 60.0  # seconds for the whole request: connect, headers and body

    def redact(self, text: str) -> str:
        return redact(text, [self.api_key])

    def request(self, prompt: str) -> str:
        """The judge's reply text (the API key redacted from it, as from every error message)."""
        return self.redact(self._request(prompt))

    def _request(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        if self.kind == "openai":
            url = self.base_url.rstrip("/") + "/chat/completions"
            body = {"model": self.model, "messages": messages, "temperature": 0}
        else:
            url = self.base_url.rstrip("/") + "/api/chat"
            body = {"model": self.model, "messages": messages, "stream": False, "options": {"temperature": 0}}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, json.dumps(body).encode(), headers)
        deadline = _Deadline(self.timeout)
        try:
            with deadline, deadline.opener.open(req, timeout=self.timeout) as resp:
                data = resp.read()
            reply = json.loads(data.decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                retry = exc.headers.get("Retry-After")
                raise Transient(
                    f"HTTP {exc.code}", float(retry) if retry and retry.replace(".", "").isdigit() else None
                ) from None
            try:
                with deadline:
                    text = exc.read(65536).decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                text = ""
            # Redact before cutting: a cut key could otherwise leave its first bytes in the excerpt.
            excerpt = self.redact(text)[:200]
            raise UserError(f"judge backend answered HTTP {exc.code} at {url}: {excerpt!r}") from None
        except (
            urllib.error.URLError,
            TimeoutError,
            ConnectionError,
            OSError,
            http.client.HTTPException,
        ) as exc:
            if deadline.expired:
                raise Transient(f"timed out: no complete reply within {self.timeout:g} s") from None
            raise Transient(self.redact(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            if deadline.expired:
                raise Transient(f"timed out: no complete reply within {self.timeout:g} s") from None
            raise Malformed("the reply body is not JSON") from None
        try:
            if self.kind == "openai":
                return reply["choices"][0]["message"]["content"]
            return reply["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise Malformed("the reply has no message content") from None


# --- the judging loop -------------------------------------------------------------------------------
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
    for item_id, item in sorted(items.items()):
        prompt, labels = build_prompt(item_id, item, seed)
        key = hashlib.sha256(json.dumps([backend.kind, backend.model, prompt]).encode()).hexdigest()
        entry = cache.entries.get(key)
        error = None
        for attempt in range(retries + 1):
            if entry is not None:
                break
            try:
                result.requests += 1
                text = backend.request(prompt)
                entry = {
                    "key": key,
                    "id": item_id,
                    "labels": labels,
                    "scores": parse_scores(text, labels),
                    "reply": text,
                }
                cache.put(entry)
            except (Transient, Malformed) as exc:
                error = str(exc)
                if attempt < retries:
                    asked = getattr(exc, "retry_after", None)
                    wait = (asked or backoff_s * 2**attempt) * (1 + 0.25 * random.random())
                    if wait > max_retry_after_s:
                        if log is not None and asked and asked > max_retry_after_s:
                            log(
                                f"judge: item {item_id}: the server asks to wait {asked:g} s (Retry-After); "
                                f"waiting {max_retry_after_s:g} s, the cap (--max-retry-after)"
                            )
                        wait = max_retry_after_s
                    time.sleep(wait)
        if entry is None:
            result.failed[item_id] = error or "unknown error"
        else:
            result.scores[item_id] = {
                entry["labels"][label]: score for label, score in entry["scores"].items()
            }
        bar.update(1, failed=len(result.failed), requests=result.requests)
    bar.close()
    return result


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
