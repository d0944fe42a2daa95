"""RUN/data.json: the data a run trained on, which is part of what the run is.

    {"path": ..., "manifest_sha256": ...,              the data the run started on
     "changes": [{"step", "path", "manifest_sha256"}]}   each later switch (--new-data), from that step

A data dir is identified by its manifest's sha256 (the manifest lists every shard with its token count
and the tokenizer's hash, so other data, or the same folder prepared again, has another one). The record
is written once when the run starts and never rewritten: a resume on other data appends a change, so
what each step trained on stays known.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from baseforge.data.manifest import MANIFEST
from baseforge.errors import UserError
from baseforge.fileio import atomic_write_json
from baseforge.records import count, read_json, text
from baseforge.rundir import RunDir

MAX_CHANGES = 10_000


@dataclass(frozen=True)
class DataUse:
    """One data dir a run trained on, from `step` on."""

    path: str
    manifest_sha256: str | None
    step: int = 0

    def short(self) -> str:
        return f"{self.path} (manifest sha256 {(self.manifest_sha256 or 'none')[:12]})"


def data_fingerprint(source: Path) -> str | None:
    """sha256 of a data dir's manifest (or of a data file); None when there is none to read."""
    source = Path(source)
    target = source / MANIFEST if source.is_dir() else source
    return hashlib.sha256(target.read_bytes()).hexdigest() if target.is_file() else None


def data_use(source: Path, step: int = 0) -> DataUse:
    return DataUse(str(Path(source).resolve()), data_fingerprint(source), step)


def read_data_history(run: RunDir | Path) -> list[DataUse] | None:
    """What RUN/data.json says the run trained on, in order (checked); None for a run that does not
    record its data (the demo run, an interrupted first start)."""
    run = RunDir.of(run)
    path = run.data_record
    if not path.exists() and not path.is_symlink():
        return None
    record = read_json(path, "data record")
    first = DataUse(text(record, "path", path) or "", text(record, "manifest_sha256", path, optional=True))
    changes = record.get("changes", [])
    if not isinstance(changes, list) or len(changes) > MAX_CHANGES:
        raise UserError(f"{path}: changes is not a list of data changes; corrupt data record")
    uses = [first]
    for i, change in enumerate(changes):
        where = Path(f"{path} changes[{i}]")
        if not isinstance(change, dict):
            raise UserError(f"{where} is not a JSON object; corrupt data record")
        step = count(change, "step", where)
        assert step is not None
        sha = text(change, "manifest_sha256", where, optional=True)
        uses.append(DataUse(text(change, "path", where) or "", sha, step))
    return uses


def record_data(run: RunDir | Path, source: Path, step: int) -> None:
    """Note the data the run trains on from `step`: the whole record for a run starting at step 0, else
    a change appended when it differs from the data the run last trained on."""
    run = RunDir.of(run)
    now = data_use(source, step)
    history = read_data_history(run) if step else None
    if not history:
        atomic_write_json(run.data_record, {"path": now.path, "manifest_sha256": now.manifest_sha256})
        return
    last = history[-1]
    if (last.path, last.manifest_sha256) == (now.path, now.manifest_sha256):
        return
    first, later = history[0], [asdict(u) for u in history[1:]]
    record = {"path": first.path, "manifest_sha256": first.manifest_sha256, "changes": [*later, asdict(now)]}
    atomic_write_json(run.data_record, record)
