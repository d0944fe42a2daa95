"""Experiment trackers (TensorBoard, Weights & Biases) fed with the rows of `metrics.jsonl`.

Both are optional extras. `open_trackers` returns one object that fans every row out to the
trackers that opened; one that cannot be imported or started (no package, no network, no API key)
costs one warning line through `log` and is dropped, and so is one that fails later: training
never stops for a tracker. Only the main process should open them.

Files in the run dir:

    RUN/tensorboard/       TensorBoard event files (`tensorboard --logdir RUN/tensorboard`)
    RUN/wandb/             W&B's local run files (offline runs: `wandb sync RUN/wandb/offline-run-*`)
    RUN/trackers.json      {"wandb": {"id": ..., "project": ...}}: the W&B run a resume continues
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from baseforge.errors import UserError
from baseforge.fileio import atomic_write_json

TRACKERS = ("tensorboard", "wandb")
STATE_FILE = "trackers.json"
TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    name: str

    def log(self, row: dict, step: int) -> None: ...

    def log_config(self, config: dict) -> None: ...

    def close(self) -> None: ...


def numeric(row: dict) -> dict[str, float]:
    """The row's numeric values (bools, strings, None and the step itself left out)."""
    return {
        key: float(value)
        for key, value in row.items()
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        # purge_step: on resume, events at or after the checkpoint's step (logged before a kill and
        # about to be redone) are hidden, so each step shows once.
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge_step)

    def log(self, row: dict, step: int) -> None:
        for key, value in numeric(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # rows come every log_every steps: cheap, and visible at once

    def log_config(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@dataclass
class WandbRun:
    """What RUN/trackers.json keeps so a resumed run continues the same W&B run."""

    id: str
    project: str


def read_state(run_dir: Path) -> dict:
    path = Path(run_dir) / STATE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


class WandbTracker:
    name = "wandb"

    def __init__(self, run_dir: Path, resume: bool):
        import wandb

        run_dir = Path(run_dir)
        offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")
        if not offline and "prompt" in inspect.signature(wandb.login).parameters:
            # Never block training on an interactive login prompt.
            if not wandb.login(prompt=False, verify=False):
                raise RuntimeError(
                    "no W&B API key (set WANDB_API_KEY, run `wandb login`, or WANDB_MODE=offline)"
                )
        state = read_state(run_dir)
        saved = state.get("wandb") if resume else None
        project = os.environ.get("WANDB_PROJECT") or (saved or {}).get("project") or "baseforge"
        run = WandbRun(saved["id"] if saved else secrets.token_hex(4), project)
        # Saved before init: a kill during init still resumes into this id, never a second run.
        atomic_write_json(run_dir / STATE_FILE, {**state, "wandb": {"id": run.id, "project": run.project}})
        self.run = wandb.init(
            project=run.project, id=run.id, resume="allow", dir=str(run_dir), name=run_dir.resolve().name
        )
        self.id = run.id

    def log(self, row: dict, step: int) -> None:
        values = {k: v for k, v in numeric(row).items() if math.isfinite(v)}
        if values:
            self.run.log(values, step=step)

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def close(self) -> None:
        self.run.finish()


EXTRA_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}


class Trackers:
    """Fan-out over the trackers that opened; a failing one is warned about once and dropped."""

    def __init__(self, trackers: list, log: Callable[[str], None] = print):
        self.trackers = list(trackers)
        self.warn = log

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trackers]

    def _each(self, action: str, call: Callable) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                self.trackers.remove(tracker)
                self.warn(f"warning: tracker {tracker.name} dropped ({action} failed: {_reason(exc)})")

    def log(self, row: dict, step: int) -> None:
        self._each("log", lambda t: t.log(row, step))

    def log_config(self, config: dict) -> None:
        self._each("log_config", lambda t: t.log_config(config))

    def close(self) -> None:
        self._each("close", lambda t: t.close())
        self.trackers = []


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}".rstrip(": ")


def open_tracker(name: str, run_dir: Path, resume: bool, start_step: int | None) -> Tracker:
    if name == "tensorboard":
        return TensorBoardTracker(run_dir, purge_step=start_step if resume else None)
    return WandbTracker(run_dir, resume)


def tracker_names(spec: str) -> list[str]:
    """The trackers a config's `trackers` value names ("tensorboard,wandb"), each once; a typo is a
    UserError, raised before the run writes anything."""
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise UserError(
            f"unknown tracker {', '.join(unknown)}; choose from {', '.join(TRACKERS)} (comma-separated)"
        )
    return names


def open_trackers(
    names: list[str],
    run_dir: Path | str,
    config: dict,
    resume: bool = False,
    log: Callable[[str], None] = print,
    start_step: int | None = None,
) -> Trackers:
    """Open the named trackers (a typo is a UserError); each that cannot start is one warning line.

    `config` is the resolved run config, sent on a fresh start (a resumed tracker run has it already);
    `start_step` is the step a resume starts from.
    """
    opened = []
    for name in tracker_names(",".join(names)):  # each once, in order
        try:
            opened.append(open_tracker(name, Path(run_dir), resume, start_step))
        except ImportError as exc:
            if importlib.util.find_spec(EXTRA_PACKAGE[name]) is None:
                reason = f"the {EXTRA_PACKAGE[name]} package is not installed"
            else:  # installed but broken (e.g. a dependency's version)
                reason = _reason(exc)
            log(f'warning: tracker {name} off: {reason} (pip install "baseforge[{name}]"); training goes on')
        except Exception as exc:  # noqa: BLE001 - no network, no key, bad settings: never stop training
            log(f"warning: tracker {name} off: {_reason(exc)}; training goes on without it")
    trackers = Trackers(opened, log)
    if not resume:
        trackers.log_config(config)
    return trackers
