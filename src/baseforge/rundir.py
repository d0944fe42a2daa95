"""A run directory's layout: the one place that spells its paths.

    RUN/config.json              the resolved config of the run
    RUN/data.json                where the run's data came from: {"path", "manifest_sha256"}
    RUN/metrics.jsonl            one JSON object per logged step (train/metrics.py)
    RUN/resumes.jsonl            {"step": N} per resume (the report and the chart mark them)
    RUN/charts/training.png      loss, learning rate and grad-norm charts
    RUN/summary.json, sample.txt what a finished run says of itself
    RUN/evals/NAME.json          an evaluation's results kept with `--save-to RUN` (for the report)
    RUN/checkpoints/latest       text file: the name of the newest complete checkpoint
    RUN/checkpoints/best         text file: the one with the lowest validation loss
    RUN/checkpoints/step_0001000/  one checkpoint (train/checkpoint/format.py documents its files)
    RUN/discarded/               what a resume from an earlier step set aside: later checkpoints,
                                 metrics rows (metrics-after-step-N.jsonl); nothing is deleted

Building a RunDir touches nothing; it names paths, and says whether a run is there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STEP_NAME = re.compile(r"step_(\d{7,})")  # a checkpoint folder's name; 7 digits, more past 9,999,999


def step_name(step: int) -> str:
    return f"step_{step:07d}"


def step_of(name: str) -> int | None:
    """The step a checkpoint folder's name says, or None for a name that is not one."""
    match = STEP_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: Path | str):
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def of(cls, run: RunDir | Path | str) -> RunDir:
        return run if isinstance(run, RunDir) else cls(Path(run))

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def data_record(self) -> Path:
        return self.path / "data.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def resumes(self) -> Path:
        return self.path / "resumes.jsonl"

    @property
    def chart(self) -> Path:
        return self.path / "charts" / "training.png"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def sample(self) -> Path:
        return self.path / "sample.txt"

    @property
    def evals(self) -> Path:
        return self.path / "evals"

    def eval_result(self, name: str) -> Path:
        return self.evals / f"{name}.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def discarded(self) -> Path:
        return self.path / "discarded"

    def pointer(self, which: str) -> Path:
        """checkpoints/latest or checkpoints/best: a text file naming one checkpoint folder."""
        if which not in ("latest", "best"):
            raise ValueError(f"no checkpoint pointer {which!r}")
        return self.checkpoints / which

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    def has_checkpoint(self) -> bool:
        """Whether a run has saved a checkpoint here (its `latest` pointer exists)."""
        return self.pointer("latest").exists()
