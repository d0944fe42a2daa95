"""A run dir's files that the report shows (besides metrics.jsonl), read without trusting them, and the
evaluation results a run keeps for it (RUN/evals/NAME.json, written with `--save-to RUN`).

The report embeds what it reads in a page that may be shared, so it reads only plain files inside the
run dir: a symlink (or a file under a symlinked folder) could pull any file of the machine into the page.
Such a file, and a torn or misshapen one, is left out with a note saying why, and the page is made from
the rest: a run with one bad file still gets its report, naming what is missing from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from baseforge.errors import UserError
from baseforge.fileio import atomic_write_json
from baseforge.records import MAX_RECORD_BYTES, inside, read_json
from baseforge.rundir import RunDir
from baseforge.train.metrics import read_resumes

MAX_SAMPLE_BYTES = 1 << 20  # sample.txt holds a few hundred tokens; more is not a sample to embed


class RunReader:
    """Reads the report's files of one run dir; `left_out` collects (file, why) for each one skipped."""

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self.left_out: list[tuple[str, str]] = []

    def _plain(self, path: Path) -> bool:
        """Whether `path` is there to read: a plain file inside the run dir (else noted, unless absent)."""
        name = path.relative_to(self.run_dir.path).as_posix()
        if not path.exists() and not path.is_symlink():
            return False
        try:
            inside(self.run_dir.path, name, "the report")  # no symlink anywhere below the run dir
        except UserError:
            self.left_out.append((name, "a symlink; the report reads only plain files inside the run dir"))
            return False
        if not path.is_file():
            self.left_out.append((name, "not a plain file"))
            return False
        return True

    def record(self, path: Path, what: str) -> dict:
        """A JSON object file (config.json, summary.json) through records.read_json; {} when left out."""
        if not self._plain(path):
            return {}
        try:
            return read_json(path, what)
        except (UserError, RecursionError) as exc:
            self._note(path, exc)
            return {}

    def text(self, path: Path) -> str | None:
        """A text file (sample.txt), undecodable bytes replaced; None when absent or left out."""
        if not self._plain(path):
            return None
        size = path.stat().st_size
        if size > MAX_SAMPLE_BYTES:
            self._note(path, f"{size:,} bytes, more than a sample ({MAX_SAMPLE_BYTES:,} at most)")
            return None
        return path.read_bytes().decode("utf-8", "replace")

    def evals(self) -> dict[str, object]:
        """{name: result} of RUN/evals/*.json, in name order: any JSON value (the report shows a list of
        per-model rows as a table, anything else as JSON)."""
        folder = self.run_dir.evals
        if folder.is_symlink():
            self.left_out.append(("evals", "a symlink; the report reads only plain files inside the run dir"))
            return {}
        if not folder.is_dir():
            return {}
        results = {}
        for path in sorted(folder.glob("*.json")):
            if self._plain(path):
                try:
                    results[path.stem] = _load_json(path)
                except (UserError, RecursionError) as exc:
                    self._note(path, exc)
        return results

    def resumes(self) -> list[int]:
        """The steps the run was resumed from (train/metrics.py reads them); [] when left out."""
        path = self.run_dir.resumes
        return read_resumes(self.run_dir.path) if self._plain(path) else []

    def _note(self, path: Path, why) -> None:
        if isinstance(why, RecursionError):
            why = "nested too deeply to be one of baseforge's files"
        # The page may be shared: the run dir's own path (a home folder, a user name) stays off it.
        why = str(why).replace(f"{self.run_dir.path}{os.sep}", "")
        self.left_out.append((path.relative_to(self.run_dir.path).as_posix(), why))


def _load_json(path: Path) -> object:
    """Any JSON value from a plain file (records.read_json wants an object; a saved evaluation is a list)."""
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise UserError(f"{path} is {path.stat().st_size:,} bytes, too large to be an evaluation's results")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{path} is not readable JSON ({type(exc).__name__}): torn or not baseforge's"
        ) from None


def check_save_to(run: Path | str, name: str, overwrite: bool = False) -> Path:
    """Where `save_eval` will keep `name`'s results for run dir `run`, checked before any work: a run dir
    (its report shows them), evals/ no symlink, and no results there already unless `overwrite`."""
    run_dir = RunDir(run)
    if not run_dir.path.is_dir() or not run_dir.config.is_file():
        raise UserError(
            f"--save-to {run} is not a run dir (no config.json): pass the run dir whose report should "
            "show these results"
        )
    if run_dir.evals.is_symlink():
        raise UserError(
            f"--save-to {run}: {run_dir.evals} is a symlink; baseforge writes only inside the run"
        )
    path = run_dir.eval_result(name)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UserError(
            f"--save-to {run}: {path} already holds results; pass --overwrite to replace them (a table "
            "shows every model of one command: evaluate them together to see them side by side)"
        )
    return path


def save_eval(run: Path | str, name: str, result) -> Path:
    """Keep an evaluation's result with a run (RUN/evals/NAME.json), for the report."""
    path = RunDir(run).eval_result(name)
    atomic_write_json(path, result)
    return path
