"""The judge's limits, against a loopback HTTP server on 127.0.0.1: Retry-After capped, the timeout
per request (not per socket read), the API key redacted from every message, labels for any number
of models, and a bad cache row as one line."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from baseforge.eval import judge as judge_mod
from baseforge.eval.judge import Cache, build_prompt, judge, load_answers
from baseforge.eval.judge_api import Backend, Transient
from helpers import assert_clean_error, baseforge

KEY = "sk-test-0123456789abcdefghijklmnopqrstuvwxyz"


class Server:
    """Scores each answer 50; `mode` scripts the first reply(ies)."""

    def __init__(self):
        self.mode: list[str] = []
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                mode = server.mode.pop(0) if server.mode else None
                if mode == "429-long":
                    self.send_response(429)
                    self.send_header("Retry-After", "100000")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if mode and mode.startswith("401-echo"):
                    pad = int(mode.split(":")[1])
                    echo = "x" * pad + f"Authorization: {self.headers['Authorization']}\n" + "y" * 300
                    data = echo.encode()
                    self.send_response(401)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if mode == "trickle":  # headers at once, then the body at one byte per 0.5 s
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    self.wfile.flush()
                    try:
                        for _ in range(16):  # bounded, so old code ends too (in ~8 s, not ~2 s)
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(0.5)
                    except OSError:
                        pass
                    return
                prompt = body["messages"][0]["content"]
                labels = re.findall(r"^\[([A-Z]+)\]$", prompt, re.M)
                content = json.dumps({label: 50 for label in labels})
                data = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": content}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def answers(tmp_path, models: int, items: int = 1):
    paths = []
    for m in range(models):
        path = tmp_path / f"m{m:02d}.jsonl"
        rows = [
            {
                "id": f"t{i}",
                "model": f"model-{m:02d}",
                "instruction": "Say hi",
                "input": "",
                "reference": "hi",
                "answer": f"hi from {m}",
            }  # fmt: skip
            for i in range(items)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths


def test_retry_after_is_capped_and_the_cap_is_said(server, tmp_path, monkeypatch):
    server.mode = ["429-long"]
    slept, lines = [], []
    monkeypatch.setattr(judge_mod.time, "sleep", slept.append)
    backend = Backend("openai", "jm", server.url, None, timeout=5)
    result = judge(
        load_answers(answers(tmp_path, 2)), backend, Cache(tmp_path / "c.jsonl"),
        max_retry_after_s=3.0, log=lines.append,
    )  # fmt: skip
    assert result.failed == {} and len(slept) == 1
    assert slept[0] <= 3.0
    assert any("100000" in line and "cap" in line for line in lines), lines


def test_the_default_retry_after_cap_is_a_few_minutes(server, tmp_path, monkeypatch):
    server.mode = ["429-long"]
    slept = []
    monkeypatch.setattr(judge_mod.time, "sleep", slept.append)
    judge(
        load_answers(answers(tmp_path, 2)), Backend("openai", "jm", server.url), Cache(tmp_path / "c.jsonl")
    )
    assert slept and 60 <= slept[0] <= 300


def test_timeout_is_per_request_not_per_socket_read(server):
    server.mode = ["trickle"]
    backend = Backend("openai", "jm", server.url, None, timeout=2)
    start = time.monotonic()
    with pytest.raises(Transient, match="2 s"):
        backend.request("hello")
    assert time.monotonic() - start < 4


@pytest.mark.parametrize("pad", [0, 170])  # the key inside the 200-byte excerpt, and straddling its end
def test_a_401_echoing_the_authorization_header_never_prints_the_key(server, tmp_path, pad):
    server.mode = [f"401-echo:{pad}"]
    paths = answers(tmp_path, 2)
    result = baseforge(
        "judge", *paths, "--judge", "jm", "--base-url", server.url, "--api-key-env", "JUDGE_TEST_KEY",
        env={"JUDGE_TEST_KEY": KEY},
    )  # fmt: skip
    assert_clean_error(result, "HTTP 401")
    out = result.stdout + result.stderr
    for n in range(8, len(KEY) + 1):  # not the key, nor any piece of it from its start
        assert KEY[:n] not in out, out
    assert "[REDACTED]" in out or pad > 0


def test_labels_for_any_number_of_models(server, tmp_path):
    items = load_answers(answers(tmp_path, 27))
    prompt, labels = build_prompt("t0", items["t0"], seed=0)
    assert len(labels) == 27 and sorted(labels.values()) == sorted(items["t0"]["answers"])
    result = judge(items, Backend("openai", "jm", server.url), Cache(tmp_path / "c.jsonl"))
    assert result.failed == {} and len(result.scores["t0"]) == 27

    from baseforge.eval.judge import answer_labels

    assert answer_labels(28)[25:] == ["Z", "AA", "AB"]
    assert len(set(answer_labels(800))) == 800


def test_a_cache_row_without_labels_is_one_line(server, tmp_path):
    paths = answers(tmp_path, 2)
    items = load_answers(paths)
    prompt, labels = build_prompt("t0", items["t0"], seed=0)
    key = hashlib.sha256(json.dumps(["openai", "jm", prompt]).encode()).hexdigest()
    cache = tmp_path / "judge-cache.jsonl"
    cache.write_text(json.dumps({"key": key, "id": "t0", "scores": {label: 50 for label in labels}}) + "\n")
    result = baseforge(
        "judge", *paths, "--judge", "jm", "--base-url", server.url, "--api-key-env", "NONE", "--cache", cache
    )
    assert_clean_error(result, str(cache), "labels")
