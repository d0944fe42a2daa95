"""The judge's HTTP client: OpenAI-compatible chat completions or Ollama, with bounded retries.

Rate limits (429, honouring Retry-After up to a cap), server errors, timeouts, refused connections and
malformed replies are retried with exponential backoff and jitter by the caller (eval/judge.py); this
module makes one request. Its timeout bounds the whole request (connect, headers and body), not each
socket read; redirects are refused (they would re-send the key); the API key is redacted from every
message and reply text.

Why not the `openai` client (as an optional extra): it would not keep these guarantees. Its timeout
is httpx's, per phase and per attempt (each read may wait the whole timeout, each retry starts a new
one), not a deadline for the request; it honours Retry-After only up to 60 s and otherwise retries
after its own backoff of seconds, where our loop waits what the server asks up to
`--max-retry-after`; it does not retry a malformed reply; and it does not speak Ollama's /api/chat.
It would also bring httpx, pydantic and more for one POST, which the standard library makes here.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from baseforge.errors import UserError
from baseforge.records import excerpt


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would re-send the Authorization header to another URL: treat it as an error."""

    def redirect_request(self, *args, **kwargs):
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


def check_api_key(key: str, source: str) -> str:
    """`key` without surrounding whitespace (the newline `echo` or a file leaves on it). A key holding
    anything but printable ASCII inside cannot travel in an HTTP header: UserError, naming the
    character's position and kind, never the key."""
    key = key.strip()
    if not key:
        raise UserError(f"the API key in {source} is empty: set it to the key")
    for i, ch in enumerate(key):
        if not "!" <= ch <= "~":
            named = {" ": "a space", "\t": "a tab", "\n": "a line break", "\r": "a carriage return"}
            kind = "a control character" if ord(ch) < 32 or ord(ch) == 127 else "a non-ASCII character"
            what = named.get(ch, f"{kind} (U+{ord(ch):04X})")
            raise UserError(
                f"the API key in {source} holds {what} at position {i + 1} of {len(key)}, which no "
                "HTTP header can carry: set it to the key alone"
            )
    return key


def check_base_url(url: str) -> str:
    """An http:// or https:// address (urllib would fail on anything else with a bare ValueError)."""
    if not url.startswith(("http://", "https://")) or any(not "!" <= ch <= "~" for ch in url):
        raise UserError(f"--base-url {excerpt(url, 80)} is not an http:// or https:// address")
    return url


def parse_retry_after(value) -> float | None:
    """A Retry-After header's seconds, or None for an HTTP date or anything that is not a number >= 0."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class Malformed(ValueError):
    pass


class Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Backend:
    kind: str  # "openai" or "ollama"
    model: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)  # no repr: a printed Backend shows no key
    timeout: float = 60.0  # seconds for the whole request: connect, headers and body

    def __post_init__(self):
        check_base_url(self.base_url)
        if self.api_key:
            self.api_key = check_api_key(self.api_key, "the judge's key")

    def redact(self, text: str) -> str:
        return redact(text, [self.api_key])

    def request(self, prompt: str) -> str:
        """The judge's reply text. The API key is redacted from it and from the message of whatever
        this raises, the exceptions no handler below expected (a bug: their traceback is kept) too."""
        try:
            return self.redact(self._request(prompt))
        except (Transient, Malformed, UserError) as exc:
            exc.args = tuple(self.redact(a) if isinstance(a, str) else a for a in exc.args)
            raise
        except Exception as exc:  # noqa: BLE001 - whatever it is, its message may quote the key
            raise RuntimeError(self.redact(f"judge request failed: {type(exc).__name__}: {exc}")) from None

    def _chat_request(self, prompt: str) -> tuple[str, urllib.request.Request]:
        """The chat endpoint's URL and the POST that asks it for one deterministic reply to `prompt`."""
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
        return url, urllib.request.Request(url, json.dumps(body).encode(), headers)

    def _http_error(self, exc: urllib.error.HTTPError, deadline: _Deadline, url: str) -> Exception:
        """What an HTTP error status means: try again later (429, 5xx; with the server's Retry-After),
        or a UserError quoting the start of the answer's body, redacted."""
        if exc.code == 429 or exc.code >= 500:
            return Transient(f"HTTP {exc.code}", parse_retry_after(exc.headers.get("Retry-After")))
        try:
            with deadline:
                text = exc.read(65536).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            text = ""
        # Redact before cutting: a cut key could otherwise leave its first bytes in the excerpt.
        excerpt = self.redact(text)[:200]
        return UserError(f"judge backend answered HTTP {exc.code} at {url}: {excerpt!r}")

    def _request(self, prompt: str) -> str:
        url, req = self._chat_request(prompt)
        deadline = _Deadline(self.timeout)
        try:
            with deadline, deadline.opener.open(req, timeout=self.timeout) as resp:
                data = resp.read()
            reply = json.loads(data.decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, deadline, url) from None
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
                content = reply["choices"][0]["message"]["content"]
            else:
                content = reply["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise Malformed("the reply has no message content") from None
        if not isinstance(content, str):  # null, a number, a list, an object: not a reply to parse
            raise Malformed(f"the reply's message content is {type(content).__name__}, not text")
        return content
