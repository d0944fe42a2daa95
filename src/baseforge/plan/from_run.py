"""`plan --from-run RUN`: the MFU a run measured, and the device it measured it on.

An MFU is achieved FLOPs over the peak of the device that ran: a CPU run's is over a matmul timed on
that CPU, a GPU's depends on that GPU (its kernels, memory bandwidth, how full the model keeps it), so
neither is another GPU's. The device comes from RUN/summary.json (a finished run: "device", and
"peak_source" naming the GPU when hardware.py's table has it); an unfinished run's metrics rows still
tell a CUDA run (peak_alloc_gib) from one that ran elsewhere (peak_rss_gib alone).

A run that did not run on a CUDA GPU is refused (every GPU the planner knows is one); a GPU other than
the planned one, or one the run does not name, is said in the plan's `mfu_note`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from baseforge.errors import UserError
from baseforge.hardware import GPU, gpu_for_device_name
from baseforge.plan.estimate import DEFAULT_MFU
from baseforge.records import read_json, text
from baseforge.rundir import RunDir
from baseforge.train.metrics import MetricsRow, read_metrics


@dataclass(frozen=True)
class MeasuredMFU:
    run: str
    mfu: float  # the median over the run's rows, the first (warm-up) left out
    device: str | None  # "cuda", "cpu", "mps", "not cuda" (rows without GPU memory); None: not recorded
    gpu_name: str | None = None  # the GPU's name as torch reported it, when summary.json gives it

    @property
    def source(self) -> str:
        where = f" on {self.gpu_name}" if self.gpu_name else ""
        return f"median measured in {self.run}{where}"

    def note_for(self, gpu: GPU) -> str:
        """What the plan says of applying this MFU to `gpu` ('' when measured on that GPU); a UserError
        for a run that was not on a CUDA GPU, whose MFU says nothing of any GPU."""
        if self.device not in ("cuda", None):
            ran = {
                "cpu": "trained on the CPU",
                "not cuda": "did not train on a CUDA GPU (its metrics record no GPU memory)",
            }.get(self.device, f"trained on {self.device}")
            raise UserError(
                f"{self.run} {ran}: its MFU ({100 * self.mfu:.1f}%) is of that device's own peak and "
                f"says nothing of the {gpu.label}; drop --from-run (the plan then assumes "
                f"{100 * DEFAULT_MFU:.0f}%, or give --mfu F)"
            )
        if self.device is None:
            return f"{self.run} does not record its device; its MFU is applied to the {gpu.label} as measured"
        if self.gpu_name is None:
            return (
                f"{self.run} does not record which GPU it ran on (summary.json names none: not finished, "
                f"or a GPU not in the table); its MFU is applied to the {gpu.label} as measured"
            )
        if gpu_for_device_name(self.gpu_name) == gpu:
            return ""
        return (
            f"measured on {self.gpu_name}, not the {gpu.label} planned: MFU differs between GPUs, so "
            "this is a guess (give --mfu to plan with another)"
        )


def measured_mfu(run_dir: Path | str) -> MeasuredMFU:
    """The median MFU over a run's logged rows and the device they were logged on."""
    rows = read_metrics(run_dir)
    values = [r.mfu for r in rows if r.mfu]
    if len(values) > 1:
        values = values[1:]
    if not values:
        raise UserError(f"{run_dir}: no MFU in metrics.jsonl; train a few log intervals first")
    return MeasuredMFU(str(run_dir), statistics.median(values), *_device(RunDir(run_dir), rows))


def _device(run: RunDir, rows: list[MetricsRow]) -> tuple[str | None, str | None]:
    """(device type, GPU name or None): summary.json's, else what the rows' memory fields imply."""
    if run.summary.is_file():
        summary = read_json(run.summary, "run summary")
        device = text(summary, "device", run.summary, optional=True)
        peak = text(summary, "peak_source", run.summary, optional=True) or ""
        if device:
            return device.split(":")[0], peak.removeprefix("table: ") if peak.startswith("table: ") else None
    if any(r.peak_alloc_gib is not None for r in rows):
        return "cuda", None
    if any(r.peak_rss_gib is not None for r in rows):
        return "not cuda", None
    return None, None
