"""Where what a run says goes: messages (above the progress bar while it runs), metrics.jsonl and the
trackers, the bar, the charts, summary.json and sample.txt. Files are written on the main process only;
the reporter takes the values to report (summary.py makes them), never the trainer.
"""

from __future__ import annotations

import contextlib
import sys

from baseforge.fileio import atomic_write_json, atomic_write_text
from baseforge.progress import Progress
from baseforge.rundir import RunDir
from baseforge.train.charts import write_charts
from baseforge.train.metrics import MetricsLog, MetricsRow
from baseforge.train.summary import progress_fields, summary_line
from baseforge.train.trackers import Trackers, open_trackers, tracker_names


class Reporter:
    def __init__(self, run_dir: RunDir, *, is_main: bool, log=print):
        self.run_dir, self.is_main, self.log = run_dir, is_main, log
        self._metrics: MetricsLog | None = None
        self._trackers: Trackers | None = None
        self._bar: Progress | None = None
        self._unit = "step"  # what the bar counts: a metrics row's "step" or "tokens"

    def say(self, message: str) -> None:
        """A message from the main process, above the progress bar while there is one."""
        if self.is_main:
            (self._bar.note if self._bar is not None else self.log)(message)

    @contextlib.contextmanager
    def recording(self, config: dict, trackers: str, *, resume: bool, start_step: int):
        """metrics.jsonl and the trackers named in `trackers` ("tensorboard,wandb"), open for the loop."""
        names = tracker_names(trackers)
        if self.is_main:
            self._metrics = MetricsLog(self.run_dir.path)
            if names:
                self._trackers = open_trackers(
                    names, self.run_dir.path, config, resume=resume, log=self.log, start_step=start_step
                )
        try:
            yield self
        finally:
            if self._trackers is not None:
                self._trackers.close()
            self._metrics = self._trackers = None

    @contextlib.contextmanager
    def progress(self, total: int, start: int, by_tokens: bool = False):
        """A bar on a terminal; elsewhere one plain line per logged step, through the run's log. It counts
        steps, or tokens (`by_tokens`: a batch schedule's steps differ in size, so only tokens give a
        true rate and ETA)."""
        self._unit = "tokens" if by_tokens else "step"
        bar = Progress(
            total,
            "train",
            "tok" if by_tokens else "step",
            initial=start,
            enabled=self.is_main,
            file=sys.stdout,
            every_s=0.0,
            write=self.log,
            scale=by_tokens,
        )
        with bar:
            self._bar = bar
            try:
                yield bar
            finally:
                self._bar = None

    def _record(self, row: MetricsRow) -> None:
        if self._metrics is not None:
            self._metrics.write(row)
        if self._trackers is not None:
            self._trackers.log(row.to_json(), row.step)

    def initial_validation(self, val: float | None, data, per_source: dict[str, float]) -> None:
        """The step-0 row: validation before the first step, so the curve shows how far training moved it
        (with a mixture's loss on each source)."""
        if not self.is_main:
            return
        if val is None:
            self.log(f"warning: {data.source} has no validation split: training without a validation loss")
            return
        self._record(MetricsRow(step=0, tokens=0, val_loss=val, evals=dict(per_source)))
        self.log(f"step 0 | val {val:.4f}")

    def row(self, row: MetricsRow, span: int) -> None:
        """A metrics row of the last `span` steps: into metrics.jsonl and the trackers, and onto the bar."""
        self._record(row)
        if self._bar is not None:
            done = row.tokens if self._unit == "tokens" else row.step
            self._bar.update(done - self._bar.n, **progress_fields(row, span))

    def stopped(self, step: int, saved: bool) -> None:
        where = (
            f"checkpoint saved in {self.run_dir.path}"
            if saved
            else "no checkpoint saved: the last steps were not finite, so the last good one stays latest"
        )
        self.say(
            f"stopped by signal at step {step}; {where}. "
            "To continue, run the same command again with --resume"
        )

    def charts(self) -> None:
        if self.is_main:
            write_charts(self.run_dir.path)

    def finish(self, summary: dict, sample: tuple[str, str] | None) -> None:
        """summary.json and its line; the sample (prompt, continuation) into sample.txt and the log."""
        if not self.is_main:
            return
        atomic_write_json(self.run_dir.summary, summary)
        self.log(summary_line(summary))
        if sample is not None:
            prompt, text = sample
            atomic_write_text(self.run_dir.sample, prompt + text + "\n")
            self.log(f"sample:\n{prompt}{text}")
