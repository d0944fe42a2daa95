"""The Hub path through the real huggingface_hub client, pointed (HF_ENDPOINT) at a local server on
127.0.0.1 that serves a FineWeb-shaped repo: listing, lazy downloads, only the files needed. Then
each kind of Hub failure (gated or private, not there, no network, disk full), raised by a mocked
client as huggingface_hub itself raises it, and its own one-line message."""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from baseforge.data import hub as hub_module
from baseforge.data.manifest import read_manifest
from baseforge.errors import UserError
from helpers import baseforge

REPO = "HuggingFaceFW/fineweb"


class HubServer:
    """Just enough of the Hub's HTTP API for list_repo_tree and hf_hub_download of a dataset repo."""

    def __init__(self, root, repo: str = REPO):
        self.root, self.repo, self.downloads, self.listed = root, repo, [], []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body):
                path = self.path.split("?")[0]
                files = sorted(p for p in server.root.rglob("*") if p.is_file())
                if path.startswith(f"/api/datasets/{server.repo}/tree/"):
                    # /tree/REVISION[/FOLDER, quoted whole]: the files under that folder, at any depth
                    tree = f"/api/datasets/{server.repo}/tree/"
                    _, _, folder = unquote(path[len(tree) :]).partition("/")
                    server.listed.append(folder)
                    files = [p for p in files if p.relative_to(server.root).as_posix().startswith(folder)]
                    data = json.dumps(
                        [
                            {
                                "type": "file",
                                "oid": "0",
                                "size": p.stat().st_size,
                                "path": p.relative_to(server.root).as_posix(),
                            }
                            for p in files
                        ]
                    ).encode()
                    headers = {"Content-Type": "application/json"}
                else:
                    prefix = f"/datasets/{server.repo}/resolve/main/"
                    target = server.root / path[len(prefix) :] if path.startswith(prefix) else None
                    if target is None or not target.is_file():
                        self.send_response(404)
                        self.end_headers()
                        return
                    data = target.read_bytes()
                    headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": "a" * 40}
                    if body:
                        server.downloads.append(path[len(prefix) :])
                self.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "sample" / "10BT").mkdir(parents=True)
    for k in range(2):
        rows = [f"Document {k}-{i} about the weather in town {i}." * 8 for i in range(200)]
        pq.write_table(
            pa.table({"text": rows, "id": [f"<urn:{k}-{i}>" for i in range(200)]}),
            root / "sample" / "10BT" / f"00{k}_00000.parquet",
        )
    (root / "README.md").write_text("a dataset card, not data")
    server = HubServer(root)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.close()


def test_fineweb_through_the_real_hub_client(hub, tmp_path, monkeypatch, gpt2_available):
    result = baseforge(
        "prepare",
        "fineweb",
        "--out",
        tmp_path / "all",
        "--tokenizer",
        "bpe:300",
        "--val-fraction",
        "0.05",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert read_manifest(tmp_path / "all").documents == 400
    assert sorted(hub.downloads) == ["sample/10BT/000_00000.parquet", "sample/10BT/001_00000.parquet"]
    assert hub.listed == ["sample/10BT"]  # only the sample's folder is listed, not the whole repo
    # Run again: every file is in the Hub cache, nothing is fetched twice.
    hub.downloads.clear()
    again = baseforge(
        "prepare", "fineweb", "--out", tmp_path / "again", "--tokenizer", "bpe:300", timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert hub.downloads == []
    # A small token budget, with an empty cache, downloads only the files it needs: the first one.
    # (GPT-2's tokenizer: a bpe:N tokenizer is trained on a sample of all the text first. One worker:
    # a pool reads a bounded window of documents ahead, up to 4 x workers x 64 documents.)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "fresh-cache"))
    result = baseforge(
        "prepare",
        "fineweb",
        "--out",
        tmp_path / "some",
        "--tokenizer",
        "gpt2",
        "--max-tokens",
        "2000",
        "--val-fraction",
        "0",
        "--workers",
        "1",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert read_manifest(tmp_path / "some").documents < 200
    assert hub.downloads == ["sample/10BT/000_00000.parquet"]


def test_dclm_zstd_shards_are_listed_from_one_folder_and_fetched_as_needed(
    tmp_path, monkeypatch, gpt2_available
):
    """DCLM-Baseline as it is on the Hub: JSON lines compressed with zstd, two folders deep. Only the
    default folder is listed, and a small --max-tokens fetches only its first shard."""
    import pyarrow as pa

    root = tmp_path / "repo"
    default = "global-shard_01_of_10/local-shard_0_of_10"
    shards = [f"{default}/shard_0000000{k}_processed.jsonl.zstd" for k in range(2)]
    for k, name in enumerate(
        [*shards, "global-shard_02_of_10/local-shard_0_of_10/shard_00000000_processed.jsonl.zstd"]
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        with pa.output_stream(str(root / name), compression="zstd") as f:
            for i in range(200):
                line = {"text": f"Page {k}-{i} about the weather in town {i}." * 8, "url": f"http://x/{i}"}
                f.write((json.dumps(line) + "\n").encode())
    server = HubServer(root, "mlfoundations/dclm-baseline-1.0")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        args = ["--tokenizer", "gpt2", "--val-fraction", "0", "--workers", "1"]
        some = baseforge(
            "prepare", "dclm", "--out", tmp_path / "some", "--max-tokens", "2000", *args, timeout=120
        )
        assert some.returncode == 0, some.stderr
        assert server.listed == [default] and server.downloads == shards[:1]
        assert read_manifest(tmp_path / "some").documents < 200
        every = baseforge("prepare", "dclm", "--out", tmp_path / "all", *args, timeout=120)
        assert every.returncode == 0, every.stderr
        assert read_manifest(tmp_path / "all").documents == 400 and server.downloads == shards
    finally:
        server.close()


# --- failures, each told apart ------------------------------------------------------------------------

TOKEN = "hf_" + "x7" * 17  # a token-shaped secret that no message may show
API = "https://huggingface.co/api/datasets/org/name/tree/main/sample%2F10BT"


def http_error(status: int, error_code: str | None = None, url: str = API) -> Exception:
    """What huggingface_hub raises for an HTTP answer: its own hf_raise_for_status on a response of the
    HTTP client it is built on (requests before 1.0, httpx from 1.0, httpx2 from 2.0)."""
    from huggingface_hub.utils import HfHubHTTPError, hf_raise_for_status

    client = next(
        c.__module__.split(".")[0]
        for c in HfHubHTTPError.__mro__
        if c.__module__.split(".")[0] in ("requests", "httpx", "httpx2")
    )
    headers = {"X-Error-Code": error_code} if error_code else {}
    if client == "requests":
        import requests

        response = requests.Response()
        response.status_code, response.url, response._content = status, url, b""
        response.headers.update(headers)
        response.request = requests.Request("GET", url).prepare()
    else:
        http = importlib.import_module(client)
        response = http.Response(status, headers=headers, request=http.Request("GET", url))
    with pytest.raises(HfHubHTTPError) as caught:
        hf_raise_for_status(response)
    return caught.value


def connection_error() -> Exception:
    """The installed HTTP client's own 'connection refused' (huggingface_hub lets it through)."""
    for module, name in (
        ("httpx2", "ConnectError"),
        ("httpx", "ConnectError"),
        ("requests", "ConnectionError"),
    ):
        try:
            return getattr(importlib.import_module(module), name)("[Errno 111] Connection refused")
        except ImportError:
            continue
    return ConnectionRefusedError(111, "Connection refused")


@pytest.fixture
def client(monkeypatch):
    """A mocked Hub client: the host resolves, and `client.listing` / `client.download` are what
    list_repo_tree and hf_hub_download raise (an exception) or return."""
    import huggingface_hub

    class Client:
        listing: object = []
        download: object = "/nowhere"

    def answer(value):
        if isinstance(value, BaseException):
            raise value
        return value

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub_module.socket, "getaddrinfo", lambda *a, **k: [])
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", lambda *a, **k: answer(Client.listing))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: answer(Client.download))
    return Client


def message(call) -> str:
    with pytest.raises(UserError) as caught:
        call()
    text = str(caught.value)
    assert "\n" not in text and TOKEN not in text and caught.value.__suppress_context__, text
    return text


def listing_fails(client, exc) -> str:
    client.listing = exc
    return message(lambda: hub_module.hub_files("hf:org/name", sample="sample/10BT"))


def download_fails(client, exc) -> str:
    client.download = exc
    return message(lambda: hub_module.LazyFile("org/name", "sample/10BT/000.parquet").fetch())


def test_gated_or_private_repo_says_log_in_and_accept_the_licence(client):
    gated = listing_fails(client, http_error(403, "GatedRepo"))
    assert "is gated" in gated and "accept its licence at https://huggingface.co/datasets/org/name" in gated
    assert "HF_TOKEN" in gated and "login" in gated
    assert "gated" in download_fails(client, http_error(401, "GatedRepo"))
    # Without a token the Hub answers 401 "not found" for private and gated repos (and missing ones).
    private = listing_fails(client, http_error(401, "RepoNotFound"))
    assert "HTTP 401" in private and "private or gated" in private and "HF_TOKEN" in private, private
    assert "check the repo name" in private


def test_a_name_that_is_not_there_says_check_it(client):
    missing = listing_fails(client, http_error(404, "RepoNotFound"))
    assert "org/name is not on the Hugging Face Hub (HTTP 404): check the repo name" in missing
    assert "log in" not in missing
    no_folder = listing_fails(client, http_error(404, "EntryNotFound"))
    assert "no such file or folder" in no_folder and "--sample" in no_folder and "sample/10BT" in no_folder
    revision = download_fails(client, http_error(404, "RevisionNotFound"))
    assert "no such revision" in revision, revision


def test_no_network_says_use_local(client, monkeypatch):
    offline = listing_fails(client, connection_error())
    assert "cannot reach the Hugging Face Hub" in offline and "--local DIR" in offline
    # hf_hub_download turns a connection error into "not in the local cache" (raised from it).
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        try:
            raise connection_error()
        except Exception as exc:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file") from exc
    except LocalEntryNotFoundError as exc:
        not_cached = download_fails(client, exc)
    assert "cannot reach the Hugging Face Hub" in not_cached and "--local DIR" in not_cached
    assert "Connection refused" in not_cached  # the cause, not the wrapper's long message

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(hub_module.socket, "getaddrinfo", no_dns)
    unresolved = message(lambda: hub_module.hub_files("fineweb"))
    assert "cannot reach the Hugging Face Hub" in unresolved and "--local DIR" in unresolved


def test_disk_full_says_free_space_or_move_hf_home(client):
    full = download_fails(client, OSError(errno.ENOSPC, "No space left on device"))
    assert full.startswith("the disk is full: cannot download org/name") and "HF_HOME" in full, full


def test_other_failures_keep_their_first_line_without_the_token(client):
    other = listing_fails(client, RuntimeError(f"bad answer from Bearer {TOKEN}\nsecond line"))
    assert "RuntimeError: bad answer from Bearer [REDACTED]" in other, other
    server = listing_fails(client, http_error(503))
    assert "HTTP 503" in server and "try again later" in server


def test_the_listing_asks_for_one_folder(client, monkeypatch):
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    asked = {}

    def list_repo_tree(self, repo_id, path_in_repo=None, **kwargs):
        asked.update(repo_id=repo_id, path_in_repo=path_in_repo, **kwargs)
        return [
            RepoFolder(type="directory", oid="0", path="sample/10BT/sub"),
            RepoFile(type="file", oid="0", size=1, path="sample/10BT/b.parquet"),
            RepoFile(type="file", oid="0", size=1, path="sample/10BT/a.parquet"),
            RepoFile(type="file", oid="0", size=1, path="sample/10BT/notes.md"),
        ]

    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_tree", list_repo_tree)
    files = hub_module.hub_files("fineweb", max_files=5)
    assert [f.filename for f in files] == ["sample/10BT/a.parquet", "sample/10BT/b.parquet"]
    assert asked == dict(
        repo_id="HuggingFaceFW/fineweb", path_in_repo="sample/10BT", recursive=True, repo_type="dataset"
    )
