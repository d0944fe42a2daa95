"""Which local files a source reads: a folder, walked in sorted order, and nothing outside it.

A source folder can come from anyone (a download, a colleague's corpus), and a symlink in it can
point anywhere (/etc/passwd, ~/.ssh, another corpus), so:

- a symlink whose target is inside the folder (its real path) is read, as the file it points to;
- a symlink whose target leaves it, to a file or a folder, is not read: it is listed in
  `Listing.links`, which prepare names (the first few) and records in the manifest;
- a symlinked folder is not walked, even one inside: its files are read under their own path
  already, and a link back up would loop;
- with `follow=True` (`prepare --follow-symlinks`) every link is followed and every linked folder
  walked, each real folder once (so a link to an ancestor ends).

A file given directly as a SOURCE is the user's own choice and is read wherever it points.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from baseforge.errors import UserError

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".jsonl.zstd", ".parquet")
KINDS = ".txt, .jsonl(.gz, .zst) or .parquet"  # SUFFIXES, as a message says them
SHOWN_LINKS = 3  # symlinks named in prepare's line; the manifest has the count and the first


def shown(name: object) -> str:
    """A path or name fit for a one-line message: as it is, or its repr() when it holds a line
    break, another control character or an undecodable byte (a file name can hold any of them)."""
    text = str(name)
    return text if text.isprintable() else repr(text)


@dataclass
class Listing:
    """The files a local source reads, and the symlinks it did not follow out of its folder."""

    files: list[Path]
    links: list[Path] = field(default_factory=list)


def links_line(source: str, links: list[Path]) -> str:
    """prepare's line for the symlinks it skipped in `source`: the count and the first few."""
    names = ", ".join(shown(p) for p in links[:SHOWN_LINKS])
    more = f" and {len(links) - SHOWN_LINKS:,} more" if len(links) > SHOWN_LINKS else ""
    return (
        f"skipped {len(links):,} symlink(s) in {shown(source)} that lead out of it: {names}{more} "
        "(not read; --follow-symlinks reads them)"
    )


def is_data_file(path: Path) -> bool:
    return path.name.endswith(SUFFIXES)


def _included(path: Path, root: Path, include: tuple[str, ...]) -> bool:
    """Does a glob match the file's name or its path under root ('*.py', 'pkg/*.py')?"""
    rel = path.relative_to(root).as_posix() if path != root else path.name
    return any(fnmatch.fnmatchcase(path.name, g) or fnmatch.fnmatchcase(rel, g) for g in include)


def local_files(spec: str, include: tuple[str, ...] = (), follow: bool = False) -> Listing:
    """The files of a local source; `include` globs pick any text files instead of the data suffixes."""
    path = Path(spec)
    if not path.exists():
        raise UserError(
            f"source {shown(spec)} not found: give a file ({KINDS}), a folder of them, 'builtin', an "
            "open corpus by name (`baseforge prepare --help` lists them) or 'hf:OWNER/NAME'"
        )
    wanted = (lambda p: _included(p, path, include)) if include else is_data_file
    if path.is_dir():
        listing = walk(path, wanted, follow)
        if not listing.files:
            kinds = " or ".join(include) if include else KINDS
            raise UserError(f"folder {shown(spec)} holds no {kinds} files{links_note(listing.links)}")
        return listing
    if not wanted(path):
        if include:
            raise UserError(f"{shown(spec)} matches none of --include {' '.join(include)}")
        raise UserError(
            f"{shown(spec)}: unknown file type; use {KINDS} (or --include GLOB for other text files)"
        )
    return Listing([path])


def links_note(links: list[Path]) -> str:
    """A refusal's note on the symlinks skipped, when there were some (they may be why)."""
    if not links:
        return ""
    first = shown(links[0])
    return (
        f" ({len(links):,} symlink(s) leading out of it skipped, first {first}; --follow-symlinks reads them)"
    )


def walk(
    root: Path, wanted: Callable[[Path], bool], follow: bool = False, within: Path | None = None
) -> Listing:
    """The wanted files under `root`, sorted, and the symlinks leading out of it (or out of `within`,
    a folder around it; see the module docstring). Folders that cannot be listed are passed over,
    as Path.rglob does."""
    real_root = os.path.realpath(within or root)
    files: list[Path] = []
    links: list[Path] = []
    seen = {real_root}  # with follow: the real folders walked or waiting, each walked once
    folders = [root]

    def enter(path: Path, real: str) -> None:
        if real not in seen:
            seen.add(real)
            folders.append(path)

    while folders:
        folder = folders.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in entries:
            path = folder / entry.name
            if not entry.is_symlink():
                if entry.is_dir(follow_symlinks=False):
                    enter(path, os.path.realpath(path) if follow else str(path))
                elif entry.is_file(follow_symlinks=False) and wanted(path):
                    files.append(path)  # only regular files: never a FIFO or a device
                continue
            target = os.path.realpath(path)
            out = not _under(target, real_root)
            if os.path.isdir(target):
                if follow:
                    enter(path, target)
                elif out:
                    links.append(path)
            elif out and not follow:
                if wanted(path):  # a link that would not be read anyway is no news
                    links.append(path)
            elif os.path.isfile(target) and wanted(path):
                files.append(path)
    return Listing(sorted(files), sorted(links))


def inside(path: Path, folder: Path) -> bool:
    """Is `path`, all its symlinks resolved, `folder` or under it?"""
    return _under(os.path.realpath(path), os.path.realpath(folder))


def _under(target: str, real_root: str) -> bool:
    return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)
