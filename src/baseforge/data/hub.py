"""Hugging Face Hub datasets: the corpora known by name (corpora.py), or any repo of parquet files.

Files are listed with `huggingface_hub` (only the folder of the chosen sample) and downloaded one at
a time, only when tokenization reaches them (so `--max-tokens` fetches only what it needs), into the
Hub cache, resumably. `--local DIR` reads a local copy laid out like the repo
(DIR/sample/10BT/*.parquet for FineWeb) instead: for offline machines and mirrors.

A failure is told apart by `hub_error` and said in one line (no token in it) with what to do: a
gated or private repo (log in, accept the licence), a name that is not there (check it, or
--sample), no network (--local DIR), a full disk (free space, or HF_HOME elsewhere).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
from pathlib import Path

from baseforge.data.corpora import Corpus, hub_source
from baseforge.data.files import Listing, inside, links_note, shown, walk
from baseforge.errors import UserError


def local_hint(example: str = "sample/10BT/000_00000.parquet") -> str:
    """What to do offline: a local copy, holding `example` (a data file's path in the repo)."""
    return (
        "offline, download the files elsewhere and pass --local DIR (a folder laid out like the "
        f"repo, e.g. DIR/{example})"
    )


LOCAL_HINT = local_hint()


def _hub_class(name: str) -> type[BaseException]:
    """huggingface_hub's exception class `name`, wherever this version keeps it (`errors` from 0.24,
    `utils` before); a class nothing raises when this version has none."""
    import importlib

    for module in ("huggingface_hub.errors", "huggingface_hub.utils"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls
    return type(name, (Exception,), {})


def _network_errors() -> tuple[type[BaseException], ...]:
    """A refused or dropped connection, a timeout or an unresolved name, as raised by whichever HTTP
    client this huggingface_hub uses (requests before 1.0, httpx from 1.0, httpx2 from 2.0). A client
    not yet imported cannot have raised anything, so it is not imported here."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, names in (
        ("requests.exceptions", ("ConnectionError", "Timeout")),
        ("httpx", ("TransportError",)),
        ("httpx2", ("TransportError",)),
    ):
        for name in names:
            cls = getattr(sys.modules.get(module), name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from (huggingface_hub wraps a connection error, say)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 10:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _status(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _redact(text: str) -> str:
    """`text` without Hub tokens: the environment's, and anything shaped like one."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        secret = os.environ.get(var)
        if secret:
            text = text.replace(secret, "[REDACTED]")
    text = re.sub(r"hf_[A-Za-z0-9]{6,}", "[REDACTED]", text)
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1[REDACTED]", text)


def describe(exc: BaseException, limit: int = 80) -> str:
    """'Type: the first line of its message', token-free and cut to `limit` characters (a Hub error's
    message runs to several lines, with URLs and request ids)."""
    lines = str(exc).strip().splitlines()
    text = _redact(lines[0] if lines else "")  # redact before cutting: no token's first bytes left
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


def login_hint() -> str:
    """How to log in with the installed huggingface_hub (`hf auth login` from 0.34)."""
    import huggingface_hub

    version = tuple(int(n) for n in re.findall(r"\d+", huggingface_hub.__version__)[:2])
    command = "hf auth login" if version >= (0, 34) else "huggingface-cli login"
    return f"log in with `{command}` or set HF_TOKEN"


def repo_page(repo: str, repo_type: str = "dataset") -> str:
    from huggingface_hub import constants

    kind = "datasets/" if repo_type == "dataset" else ""
    return f"{constants.ENDPOINT.rstrip('/')}/{kind}{repo}"


def hub_error(
    what: str,
    exc: BaseException,
    *,
    hint: str = LOCAL_HINT,
    missing: str = "check the file name",
    repo_type: str = "dataset",
) -> UserError:
    """The one-line UserError for `exc`, raised by huggingface_hub while getting `what` (a repo id):
    what went wrong (gated or private, not there, no network, disk full) and what to do. `hint` is
    the way round a Hub out of reach, `missing` what to check when the repo has no such file, folder
    or revision."""
    chain = _chain(exc)
    check_name = f"check the {'repo' if repo_type == 'dataset' else repo_type} name"

    if any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in chain):
        return _disk_full(what)
    if (refused := _refused(what, chain, repo_page(what, repo_type), check_name)) is not None:
        return refused
    local = _hub_class("LocalEntryNotFoundError")  # "not in the cache, and the Hub out of reach"
    not_there = [_hub_class("RevisionNotFoundError"), _hub_class("EntryNotFoundError")]
    if found := next(
        (e for e in chain if isinstance(e, tuple(not_there)) and not isinstance(e, local)), None
    ):
        thing = "revision" if isinstance(found, not_there[0]) else "file or folder"
        return UserError(f"{what} has no such {thing} on the Hugging Face Hub (HTTP 404): {missing}")
    if (found := _first(chain, _hub_class("HFValidationError"))) is not None:
        return UserError(f"{what} is not a valid Hub repo name ({describe(found)}); {check_name}")
    http = _hub_class("HfHubHTTPError")
    if (found := next((e for e in chain if isinstance(e, http) and _status(e)), None)) is not None:
        return UserError(f"the Hugging Face Hub answered HTTP {_status(found)} for {what}; try again later")
    offline = (local, _hub_class("OfflineModeIsEnabled"), *_network_errors())
    if (found := _first(chain, *offline)) is not None:
        cause = next((e for e in reversed(chain) if isinstance(e, offline)), found)
        return UserError(f"cannot reach the Hugging Face Hub for {what} ({describe(cause, 60)}); {hint}")
    return UserError(f"cannot get {what} from the Hugging Face Hub ({describe(exc)}); {hint}")


def _disk_full(what: str) -> UserError:
    from huggingface_hub import constants

    return UserError(
        f"the disk is full: cannot download {what} into the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}); free disk space, or set HF_HOME to a folder on a disk with room"
    )


def _first(chain: list[BaseException], *classes: type[BaseException]) -> BaseException | None:
    return next((e for e in chain if isinstance(e, classes)), None)


def _refused(what: str, chain: list[BaseException], page: str, check_name: str) -> UserError | None:
    """The error when the Hub refused the repo (gated, private, or not there); None otherwise."""
    if (found := _first(chain, _hub_class("GatedRepoError"))) is not None:
        return UserError(
            f"{what} is gated on the Hugging Face Hub (HTTP {_status(found)}): accept its licence at "
            f"{page} and {login_hint()}"
        )
    if (found := _first(chain, _hub_class("RepositoryNotFoundError"))) is not None:
        if _status(found) in (401, 403):  # the Hub's answer to a private or gated repo without a token
            return UserError(
                f"the Hugging Face Hub refused {what} (HTTP {_status(found)}): it is private or gated "
                f"and you are not logged in, or it does not exist; {login_hint()} (and accept its "
                f"licence at {page}), or {check_name}"
            )
        return UserError(f"{what} is not on the Hugging Face Hub (HTTP {_status(found)}): {check_name}")
    return None


def check_reachable(spec: str, hint: str = LOCAL_HINT) -> None:
    """Fail at once when the Hub's host does not resolve (huggingface_hub would retry for ~20 s)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise UserError(f"cannot reach the Hugging Face Hub for {spec} (HF_HUB_OFFLINE is set); {hint}")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise UserError(
            f"cannot reach the Hugging Face Hub for {spec} ({describe(exc, 60)}); {hint}"
        ) from None


class LazyFile:
    """One data file of a Hub repo, downloaded on first use; `hint` is what to do offline."""

    def __init__(self, repo: str, filename: str, hint: str = LOCAL_HINT):
        self.repo, self.filename, self.hint = repo, filename, hint

    def fetch(self) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.repo, self.filename, repo_type="dataset"))
        except Exception as exc:  # noqa: BLE001 - network and Hub errors come in many types
            raise hub_error(
                self.repo,
                exc,
                hint=self.hint,
                missing=f"{self.filename} was listed a moment ago, so the repo changed: run again",
            ) from None

    def __repr__(self) -> str:
        return f"{self.repo}/{self.filename}"


def _corpus(spec: str) -> Corpus:
    corpus = hub_source(spec)
    if corpus is None:  # open_source sends only Hub sources here
        raise UserError(f"{shown(spec)} is not a Hub source: a corpus name or hf:OWNER/NAME")
    return corpus


def mirror_files(
    spec: str, local: str, *, sample: str | None = None, max_files: int | None = None, follow: bool = False
) -> Listing:
    """The data files of a Hub source's local copy (--local DIR, laid out like the repo); symlinks
    out of DIR are not read unless `follow` (files.py: a copy is as untrusted as any folder)."""
    corpus = _corpus(spec)
    folder = corpus.folder(sample)
    root = Path(local)
    if not root.is_dir():
        raise UserError(f"--local {shown(local)}: no such folder")
    where = root / folder
    if where.is_dir() and not follow and not inside(where, root):
        raise UserError(
            f"--local {shown(local)}: {shown(where)} leads out of it (a symlink, or '..' in --sample); "
            "--follow-symlinks reads it"
        )
    listing = (
        walk(where, lambda p: p.name.endswith(corpus.suffixes), follow, within=root)
        if where.is_dir()
        else None
    )
    listing = listing or Listing([])
    if not listing.files:
        raise UserError(
            f"--local {shown(local)}: no {corpus.kinds} files under {shown(where)} (expected the "
            f"repo's layout, e.g. {corpus.example_in(folder)}){links_note(listing.links)}"
        )
    return Listing(listing.files[:max_files], listing.links)


def hub_files(spec: str, *, sample: str | None = None, max_files: int | None = None) -> list:
    """The data files of a Hub source, in the repo's sorted order (LazyFiles, downloaded on first use)."""
    corpus = _corpus(spec)
    repo, folder = corpus.repo, corpus.folder(sample)
    hint = local_hint(corpus.example_in(folder))
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    check_reachable(spec, hint)
    where = f"it names the folder {folder}" if folder else "none given: the repo's root"
    try:
        # Only the sample's folder: FineWeb's whole tree is tens of thousands of files.
        entries = list(
            HfApi().list_repo_tree(repo, path_in_repo=folder or None, recursive=True, repo_type="dataset")
        )
    except Exception as exc:  # noqa: BLE001 - network and Hub errors come in many types
        raise hub_error(repo, exc, hint=hint, missing=f"check --sample ({where})") from None
    found = sorted(e.path for e in entries if isinstance(e, RepoFile) and e.path.endswith(corpus.suffixes))
    if not found:
        raise UserError(f"{repo} has no {corpus.kinds} files under {folder or 'its root'}; check --sample")
    return [LazyFile(repo, n, hint) for n in found[:max_files]]
