"""The Hub path through the real huggingface_hub client, pointed (HF_ENDPOINT) at a local server on
127.0.0.1 that serves a FineWeb-shaped repo: listing, lazy downloads, only the files needed."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from baseforge.data.shards import read_manifest
from helpers import baseforge

REPO = "HuggingFaceFW/fineweb"


class HubServer:
    """Just enough of the Hub's HTTP API for list_repo_files and hf_hub_download of a dataset repo."""

    def __init__(self, root):
        self.root, self.downloads = root, []
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
                if path.startswith(f"/api/datasets/{REPO}/tree/"):
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
                    prefix = f"/datasets/{REPO}/resolve/main/"
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
    assert read_manifest(tmp_path / "all")["documents"] == 400
    assert sorted(hub.downloads) == ["sample/10BT/000_00000.parquet", "sample/10BT/001_00000.parquet"]
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
    assert read_manifest(tmp_path / "some")["documents"] < 200
    assert hub.downloads == ["sample/10BT/000_00000.parquet"]
