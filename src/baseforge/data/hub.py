"""Hugging Face Hub datasets: FineWeb, FineWeb-Edu, or any repo of parquet files with a text column.

Files are listed with `huggingface_hub` and downloaded one at a time, only when tokenization
reaches them (so `--max-tokens` fetches only what it needs), into the Hub cache, resumably.
`--local DIR` reads a local copy laid out like the repo (DIR/sample/10BT/*.parquet) instead:
for offline machines and mirrors.
"""

from __future__ import annotations

from pathlib import Path

from baseforge.errors import UserError

REPOS = {"fineweb": "HuggingFaceFW/fineweb", "fineweb-edu": "HuggingFaceFW/fineweb-edu"}
DEFAULT_SAMPLE = "sample-10BT"


def sample_folder(sample: str) -> str:
    """'sample-10BT' -> 'sample/10BT' (the repo's folder for that config)."""
    if sample.startswith("sample-"):
        return "sample/" + sample[len("sample-") :]
    return sample.strip("/")


LOCAL_HINT = (
    "offline, download the parquet files elsewhere and pass --local DIR (a folder laid out like the "
    "repo, e.g. DIR/sample/10BT/000_00000.parquet)"
)


def _offline_error(spec: str, exc: Exception, hint: str = LOCAL_HINT) -> UserError:
    return UserError(
        f"cannot reach the Hugging Face Hub for {spec} ({type(exc).__name__}: {str(exc)[:60]}); {hint}"
    )


def check_reachable(spec: str, hint: str = LOCAL_HINT) -> None:
    """Fail at once when the Hub's host does not resolve (huggingface_hub would retry for ~20 s)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise _offline_error(spec, RuntimeError("HF_HUB_OFFLINE is set"), hint)
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise _offline_error(spec, exc, hint) from None


class LazyFile:
    """One parquet file of a Hub repo, downloaded on first use."""

    def __init__(self, repo: str, filename: str):
        self.repo, self.filename = repo, filename

    def fetch(self) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.repo, self.filename, repo_type="dataset"))
        except Exception as exc:  # noqa: BLE001 - network and Hub errors come in many types
            raise _offline_error(self.repo, exc) from None

    def __repr__(self) -> str:
        return f"{self.repo}/{self.filename}"


def hub_files(
    spec: str, *, local: str | None = None, sample: str | None = None, max_files: int | None = None
) -> list:
    """The parquet files of a Hub source, in the repo's sorted order (local Paths or LazyFiles)."""
    repo = REPOS.get(spec) or spec[len("hf:") :]
    if spec in REPOS:
        folder = sample_folder(sample or DEFAULT_SAMPLE)
    else:
        folder = sample_folder(sample) if sample else ""
    if local:
        root = Path(local)
        if not root.is_dir():
            raise UserError(f"--local {local}: no such folder")
        files = sorted((root / folder).rglob("*.parquet")) if (root / folder).is_dir() else []
        if not files:
            raise UserError(
                f"--local {local}: no parquet files under {root / folder} "
                f"(expected the repo's layout, e.g. {folder or '.'}/000_00000.parquet)"
            )
        return files[:max_files]
    from huggingface_hub import HfApi

    check_reachable(spec)
    try:
        names = HfApi().list_repo_files(repo, repo_type="dataset")
    except Exception as exc:  # noqa: BLE001
        raise _offline_error(spec, exc) from None
    found = sorted(n for n in names if n.endswith(".parquet") and (not folder or n.startswith(folder + "/")))
    if not found:
        raise UserError(f"{repo} has no parquet files under {folder or 'its root'}; check --sample")
    return [LazyFile(repo, n) for n in found[:max_files]]
