"""The judge against a local HTTP server on 127.0.0.1 that speaks OpenAI's and Ollama's protocols,
including malformed replies, 429, 500 and timeouts."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from baseforge.eval.judge import Cache, build_prompt, judge, load_answers, parse_scores, summarize
from baseforge.eval.judge_api import Backend
from helpers import assert_clean_error, baseforge


class JudgeServer:
    """Scores each answer by its length (capped at 100), unless a scripted fault comes first."""

    def __init__(self):
        self.faults: list[str] = []  # consumed one per request: "500", "429", "garbage", "missing", "slow"
        self.requests = 0
        self.paths: list[str] = []
        self.auth: list[str | None] = []  # each request's Authorization header
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                server.paths.append(self.path)
                server.auth.append(self.headers.get("Authorization"))
                fault = server.faults.pop(0) if server.faults else None
                if fault in ("500", "429", "429-odd"):
                    self.send_response(int(fault[:3]))
                    if fault.startswith("429"):  # 429-odd: a Retry-After that is no number
                        self.send_header("Retry-After", "0.01" if fault == "429" else "1.2.3")
                    self.end_headers()
                    return
                if fault == "redirect":  # to another path: the Authorization header must not follow
                    self.send_response(307)
                    self.send_header("Location", "/elsewhere/chat/completions")
                    self.end_headers()
                    return
                if fault == "slow":
                    time.sleep(1.0)
                prompt = body["messages"][0]["content"]
                answers = dict(
                    re.findall(r"\[([A-Z])\]\n(.*?)(?=\n\n\[[A-Z]\]|\n\nScore every)", prompt, re.S)
                )
                scores = {label: min(100, len(text)) for label, text in answers.items()}
                if fault == "missing":
                    scores.pop(next(iter(scores)))
                content = "Here you go:\n```json\n" + json.dumps(scores) + "\n```"
                if fault == "garbage":
                    content = "I think they are all fine."
                if fault and fault.startswith("content="):  # a reply whose content is this JSON value
                    content = json.loads(fault.removeprefix("content="))
                reply = (
                    {"choices": [{"message": {"role": "assistant", "content": content}}]}
                    if self.path.endswith("/chat/completions")
                    else {"message": {"role": "assistant", "content": content}, "done": True}
                )
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = JudgeServer()
    yield s
    s.close()


def write_answers(tmp_path, model, answers):
    path = tmp_path / f"{model}.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"test-{i:04d}",
                    "model": model,
                    "instruction": f"Say {i}",
                    "input": "" if i % 2 else "context",
                    "reference": "ref",
                    "answer": a,
                }
            )
            + "\n"
            for i, a in enumerate(answers)
        )
    )
    return path


@pytest.fixture
def answer_files(tmp_path):
    return [
        write_answers(tmp_path, "short", ["x" * 10, "x" * 20, "x" * 30]),
        write_answers(tmp_path, "long", ["y" * 40, "y" * 60, "y" * 80]),
    ]


@pytest.mark.parametrize("kind,prefix", [("openai", "/v1"), ("ollama", "")])
def test_scores_reach_the_right_model_despite_shuffling(server, answer_files, tmp_path, kind, prefix):
    items = load_answers(answer_files)
    backend = Backend(
        kind, "judge-model", server.url + prefix, "key" if kind == "openai" else None, timeout=5
    )
    result = judge(items, backend, Cache(tmp_path / "cache.jsonl"), seed=1, backoff_s=0.01)
    assert result.failed == {}
    assert result.scores["test-0001"] == {"short": 20, "long": 60}
    orders = {tuple(build_prompt(i, items[i], seed=1)[1].values()) for i in items}
    assert len(orders) == 2  # the shuffle really put both models first somewhere
    rows = {r["model"]: r for r in summarize(result)}
    assert rows["long"]["mean"] == 60 and rows["short"]["mean"] == 20
    # Hand-computed t-interval: scores 10, 20, 30 -> sd 10, half-width 4.303 * 10 / sqrt(3) = 24.84.
    assert rows["short"]["ci95"] == pytest.approx(4.303 * 10 / 3**0.5)
    assert server.paths[0] == ("/v1/chat/completions" if kind == "openai" else "/api/chat")


def test_faults_are_retried_and_the_cache_means_no_second_payment(server, answer_files, tmp_path):
    server.faults = ["500", "429", "garbage", "missing", "slow"]
    backend = Backend("openai", "judge-model", server.url, "key", timeout=0.3)
    cache = tmp_path / "cache.jsonl"
    result = judge(load_answers(answer_files), backend, Cache(cache), retries=6, backoff_s=0.01)
    assert result.failed == {} and len(result.scores) == 3
    assert result.requests == 3 + 5  # one success per item plus one request per scripted fault
    before = server.requests
    again = judge(load_answers(answer_files), backend, Cache(cache), retries=6, backoff_s=0.01)
    assert server.requests == before and again.requests == 0
    assert again.scores == result.scores
    # A torn last line (a kill mid-append) is ignored, the rest of the cache still counts.
    with open(cache, "a") as f:
        f.write('{"key": "abc", "sco')
    assert len(Cache(cache).entries) == 3


def test_items_failing_after_all_retries_are_reported_not_lost(server, answer_files, tmp_path):
    server.faults = ["500"] * 3
    backend = Backend("ollama", "j", server.url, timeout=5)
    result = judge(
        load_answers(answer_files), backend, Cache(tmp_path / "c.jsonl"), retries=2, backoff_s=0.01
    )
    assert list(result.failed) == ["test-0000"] and "HTTP 500" in result.failed["test-0000"]
    assert sorted(result.scores) == ["test-0001", "test-0002"]


def test_parse_scores_accepts_fenced_json_and_rejects_bad_scores():
    assert parse_scores('```json\n{"A": 70, "B": 12.6}\n```', ["A", "B"]) == {"A": 70, "B": 13}
    with pytest.raises(ValueError):
        parse_scores('{"A": 170, "B": 1}', ["A", "B"])
    with pytest.raises(ValueError):
        parse_scores('{"A": 70}', ["A", "B"])


def test_cli_end_to_end_and_errors(server, answer_files, tmp_path):
    server.faults = ["429"]
    args = [
        "judge",
        *answer_files,
        "--judge",
        "j",
        "--base-url",
        server.url,
        "--api-key-env",
        "NONE",
        "--backoff",
        "0.01",
        "--cache",
        tmp_path / "c.jsonl",
        "--json",
        "--out",
        tmp_path / "scores.jsonl",
    ]
    result = baseforge(*args)
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert [r["model"] for r in table["models"]] == ["long", "short"] and table["failed"] == {}
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 3
    kept = (tmp_path / "scores.jsonl").read_text()  # a second judge onto it: refused before any request
    assert_clean_error(baseforge(*args), "scores.jsonl already exists", "--overwrite")
    assert (tmp_path / "scores.jsonl").read_text() == kept
    server.faults = ["500"] * 50
    (tmp_path / "c.jsonl").unlink()
    failing = baseforge(*args[:-5], "--retries", "1", "--cache", tmp_path / "c2.jsonl")
    assert (
        failing.returncode == 1
        and "failed after 1 retries" in failing.stderr
        and "test-0000" in failing.stderr
    )
    assert_clean_error(
        baseforge("judge", tmp_path / "nope.jsonl", "--judge", "j", "--api-key-env", "NONE"), "not found"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    assert_clean_error(
        baseforge("judge", bad, "--judge", "j", "--api-key-env", "NONE"), "bad.jsonl:1", "model"
    )
    env_missing = baseforge(
        "judge", *answer_files, "--judge", "j", "--api-key-env", "BASEFORGE_TEST_NO_SUCH_KEY"
    )
    assert_clean_error(env_missing, "no API key")


def test_progress_lines_go_through_log_when_not_a_terminal(server, answer_files, tmp_path, capsys):
    # pytest's captured stderr is not a terminal: plain lines (no bar, no carriage returns) via `log`.
    backend = Backend("ollama", "j", server.url, timeout=5)
    lines = []
    judge(load_answers(answer_files), backend, Cache(tmp_path / "c.jsonl"), backoff_s=0.01, log=lines.append)
    assert lines[0].startswith("judge 1/3 item")
    assert lines[-1].startswith("judge 3/3 item (100%) | failed 0 | requests 3")
    assert not any("\r" in line for line in lines)
    quiet = judge(load_answers(answer_files), backend, Cache(tmp_path / "c.jsonl"))  # no log: no progress
    assert quiet.requests == 0 and capsys.readouterr().err == ""


def test_redirects_are_refused_so_the_api_key_goes_nowhere_else(server):
    from baseforge.errors import UserError

    server.faults = ["redirect"]
    with pytest.raises(UserError, match="HTTP 307"):
        Backend("openai", "judge-model", server.url, "key", timeout=5).request("score this")
    assert server.paths == ["/chat/completions"]  # nothing was sent to the redirect's target


def test_report_html_escapes_every_metrics_value(tmp_path):
    from baseforge.eval.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"preset": "cpu-tiny", "model": {}, "train": {}}))
    # Values are numbers (a row with a string for one is not a row); an evaluator's name is text.
    row = {"step": 1, "tokens": 2, "loss": 3.0, "val_loss": 2.5, "<script>x</script>": 0.5}
    torn = {"step": 2, "tokens": 4, "loss": "<b>1</b>"}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(torn) + "\n")
    build_report(run)
    page = (run / "report.html").read_text()
    assert "<script>x" not in page and "&lt;script&gt;" in page and "<b>1</b>" not in page
    # The Markdown page too: a renderer shows raw HTML in it, and a fence in a sample ends the block.
    (run / "config.json").write_text(json.dumps({"preset": "a`b", "model": {}, "train": {}}))
    (run / "sample.txt").write_text("before\n```\n<img src=x onerror=alert(1)>\n")
    build_report(run)
    md = (run / "report.md").read_text()
    assert "<script>x" not in md and "&lt;script&gt;" in md
    assert "Preset ``a`b``." in md and "````\nbefore\n```\n<img" in md  # held inside a longer fence


NOT_TEXT = ["content=7", "content=[1, 2]", "content=null", 'content={"A": 50}']


def test_a_reply_whose_content_is_not_text_is_malformed_and_retried(server, answer_files, tmp_path):
    server.faults = list(NOT_TEXT)
    backend = Backend("openai", "j", server.url, "key", timeout=5)
    result = judge(load_answers(answer_files), backend, Cache(tmp_path / "c.jsonl"), retries=4, backoff_s=0)
    assert result.failed == {} and len(result.scores) == 3
    assert result.requests == 3 + len(NOT_TEXT)
    server.faults = ["content=7"] * 2
    failed = judge(load_answers(answer_files), backend, Cache(tmp_path / "c2.jsonl"), retries=1, backoff_s=0)
    assert failed.failed == {"test-0000": "the reply's message content is int, not text"}


def test_a_key_with_a_trailing_newline_is_sent_without_it(server, answer_files, tmp_path):
    args = ["judge", *answer_files, "--judge", "j", "--base-url", server.url, "--api-key-env", "JUDGE_KEY"]
    result = baseforge(*args, "--cache", tmp_path / "c.jsonl", env={"JUDGE_KEY": "sk-abc123xyz\n"})
    assert result.returncode == 0, result.stderr
    assert server.auth == ["Bearer sk-abc123xyz"] * 3


@pytest.mark.parametrize("key", ["sk-abc 123xyz", "sk-abc\n123xyz", "sk-abc\x07123xyz", "sk-abc\u2014123xyz"])
def test_a_key_no_header_can_carry_is_one_line_that_never_shows_it(server, answer_files, key):
    args = ["judge", *answer_files, "--judge", "j", "--base-url", server.url, "--api-key-env", "JUDGE_KEY"]
    result = baseforge(*args, env={"JUDGE_KEY": key})
    assert_clean_error(result, "$JUDGE_KEY", "position 7 of 13")
    assert "sk-abc" not in result.stderr and "123xyz" not in result.stderr
    assert server.requests == 0


def test_any_error_inside_a_request_has_the_key_redacted(server, monkeypatch):
    key = "sk-abc123xyz"

    def broken(self, prompt):  # an error nobody expected, quoting what it was given (as http.client does)
        raise ValueError(f"Invalid header value b'Bearer {self.api_key}'")

    monkeypatch.setattr(Backend, "_chat_request", broken)
    with pytest.raises(RuntimeError) as caught:
        Backend("openai", "j", server.url, key, timeout=5).request("x")
    assert key not in str(caught.value) and "[REDACTED]" in str(caught.value)
    assert key not in repr(Backend("openai", "j", server.url, key))


def test_a_retry_after_that_is_not_a_number_falls_back_to_the_backoff(server, answer_files, tmp_path):
    server.faults = ["429-odd"]
    backend = Backend("openai", "j", server.url, "key", timeout=5)
    result = judge(load_answers(answer_files), backend, Cache(tmp_path / "c.jsonl"), backoff_s=0)
    assert result.failed == {} and result.requests == 4

    from baseforge.eval.judge_api import parse_retry_after

    assert parse_retry_after("1.5") == 1.5 and parse_retry_after("0") == 0
    for value in ("1.2.3", "Wed, 21 Oct 2015 07:28:00 GMT", "-1", "nan", "inf", "", None):
        assert parse_retry_after(value) is None, value
