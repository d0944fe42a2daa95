"""RUN/data.json: the data a run trained on, which is part of what the run is.

    {"path": ..., "manifest_sha256": ...,              the data the run started on
     "changes": [{"step", "path", "manifest_sha256"}]}   each later switch (--new-data), from that step

A mixture of data dirs (data/mixture.py) is recorded as "sources": [{"path", "manifest_sha256",
"weight"}, ...] in place of "path" and "manifest_sha256", at the start and in a change alike.

A data dir is identified by its manifest's sha256 (the manifest lists every shard with its token count
and the tokenizer's hash, so other data, or the same folder prepared again, has another one). The record
is written once when the run starts and never rewritten: a resume on other data appends a change, so
what each step trained on stays known.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from baseforge.data.manifest import MANIFEST
from baseforge.data.mixture import MAX_SOURCES, resolve
from baseforge.errors import UserError
from baseforge.fileio import atomic_write_json
from baseforge.records import count, number, read_json, text
from baseforge.rundir import RunDir

MAX_CHANGES = 10_000


@dataclass(frozen=True)
class Part:
    """One data dir of what a run trained on, with its share of the training windows."""

    path: str
    manifest_sha256: str | None
    weight: float = 1.0

    def short(self) -> str:
        return f"{self.path} (manifest sha256 {(self.manifest_sha256 or 'none')[:12]})"


@dataclass(frozen=True)
class DataUse:
    """The data a run trained on from `step` on: one data dir, or a weighted mixture of several."""

    parts: tuple[Part, ...]
    step: int = 0

    def short(self) -> str:
        if len(self.parts) == 1:
            return self.parts[0].short()
        return " + ".join(f"{p.short()} at weight {p.weight:.3g}" for p in self.parts)

    def same_data(self, other: DataUse) -> bool:
        """The same dirs with the same contents and weights, exactly: a weight a bit off routes windows
        differently (a resume takes the recorded weights as they are)."""
        return self.parts == other.parts

    def to_json(self) -> dict:
        if len(self.parts) == 1:
            return {"path": self.parts[0].path, "manifest_sha256": self.parts[0].manifest_sha256}
        return {"sources": [asdict(p) for p in self.parts]}


def data_fingerprint(source: Path) -> str | None:
    """sha256 of a data dir's manifest (or of a data file); None when there is none to read."""
    source = Path(source)
    target = source / MANIFEST if source.is_dir() else source
    return hashlib.sha256(target.read_bytes()).hexdigest() if target.is_file() else None


def data_use(sources, step: int = 0) -> DataUse:
    """What `sources` (mixture.Source list, or one path) are now, identified by content."""
    if isinstance(sources, (str, Path)):
        return DataUse((Part(str(Path(sources).resolve()), data_fingerprint(Path(sources))),), step)
    parts = tuple(Part(str(resolve(s.path)), data_fingerprint(s.path), s.weight) for s in sources)
    return DataUse(parts if len(parts) > 1 else (Part(parts[0].path, parts[0].manifest_sha256),), step)


def _parts(record: dict, where: Path) -> tuple[Part, ...]:
    """A record's or a change's data: its "sources" list, or its "path" and "manifest_sha256"."""
    if "sources" not in record:
        return (
            Part(text(record, "path", where) or "", text(record, "manifest_sha256", where, optional=True)),
        )
    sources = record["sources"]
    if not isinstance(sources, list) or not 1 < len(sources) <= MAX_SOURCES:
        raise UserError(
            f"{where}: sources is not a list of 2 to {MAX_SOURCES} data dirs; corrupt data record"
        )
    parts = []
    for i, item in enumerate(sources):
        at = Path(f"{where} sources[{i}]")
        if not isinstance(item, dict):
            raise UserError(f"{at} is not a JSON object; corrupt data record")
        weight = number(item, "weight", at, optional=False)
        if weight is None or not 0 < weight <= 1:
            raise UserError(f"{at}: weight is not in (0, 1]; corrupt data record")
        if not 0 < len(text(item, "path", at) or "") or "\x00" in (text(item, "path", at) or ""):
            raise UserError(f"{at}: path is empty or holds a NUL; corrupt data record")
        sha = text(item, "manifest_sha256", at, optional=True)
        parts.append(Part(text(item, "path", at) or "", sha, weight))
    if not math.isclose(sum(p.weight for p in parts), 1.0, abs_tol=1e-6):
        raise UserError(f"{where}: the sources' weights do not add up to 1; corrupt data record")
    return tuple(parts)


def read_data_history(run: RunDir | Path) -> list[DataUse] | None:
    """What RUN/data.json says the run trained on, in order (checked); None for a run that does not
    record its data (the demo run, an interrupted first start)."""
    run = RunDir.of(run)
    path = run.data_record
    if not path.exists() and not path.is_symlink():
        return None
    record = read_json(path, "data record")
    changes = record.get("changes", [])
    if not isinstance(changes, list) or len(changes) > MAX_CHANGES:
        raise UserError(f"{path}: changes is not a list of data changes; corrupt data record")
    uses = [DataUse(_parts(record, path))]
    for i, change in enumerate(changes):
        where = Path(f"{path} changes[{i}]")
        if not isinstance(change, dict):
            raise UserError(f"{where} is not a JSON object; corrupt data record")
        step = count(change, "step", where)
        assert step is not None
        uses.append(DataUse(_parts(change, where), step))
    return uses


def record_data(run: RunDir | Path, sources, step: int) -> None:
    """Note the data the run trains on from `step`: the whole record for a run starting at step 0, else
    a change appended when it differs from the data the run last trained on."""
    run = RunDir.of(run)
    now = data_use(sources, step)
    history = read_data_history(run) if step else None
    if not history:
        atomic_write_json(run.data_record, now.to_json())
        return
    if history[-1].same_data(now):
        return
    later = [{"step": u.step, **u.to_json()} for u in [*history[1:], now]]
    atomic_write_json(run.data_record, {**history[0].to_json(), "changes": later})
