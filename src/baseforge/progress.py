"""Progress for long loops: a tqdm bar on a terminal, plain periodic lines elsewhere.

    with progress_bar(total, desc="answer", unit="item") as bar:
        for item in items:
            ...
            bar.update(1, loss=loss)          # extra fields show after the bar / in the line

On a terminal (the stream's `isatty()`) with a size this is a tqdm bar with postfix fields. When the
stream is not a terminal (CI, `nohup`, torchrun logs) a bar's carriage returns would pile up into one
huge line, and a terminal that reports no size (0 columns, e.g. under `script`) gets a bar of width
zero, i.e. nothing; both get a plain line instead (through `write`, default: print to the
stream): on the first update, then at most every `every_s` seconds, and at the end.
`enabled=False` (non-zero ranks) writes nothing.

The fields keep one order however they arrive: a field first seen later (`val` after a resume, when
the first row has no validation) takes its place after the field that precedes it in that update.
A message (`note`) is the last thing on the screen until the next update: the bar is drawn again
by the next update, not right after the message, and a `close()` that follows a message directly
draws nothing more (the "stopped by signal" line stays the last line).

The ETA comes from one stated rate, the mean since the bar was created, wall clock (whatever else the
loop does between updates, evaluation and checkpoints, counts: it will recur): the line says
"eta 4m30s at 3.3 step/s (mean since start)", and the bar uses the same rate (tqdm without smoothing).
After a resume, `initial` steps were done by an earlier process and say nothing about this one's
rate: "since resume". Fields are shown as "name value" on the line and on the bar alike.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_ratio(x: float) -> str:
    """A ratio to two significant figures: 20, 5.0, 0.05 (one decimal would print 0.05 as 0.0)."""
    return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def format_count(n: float) -> str:
    """1.2B, 3.4M, 56.7k, 89."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def format_field(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """A bar (terminal) or periodic lines (anything else) over `total` units, starting at `initial`."""

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        unit: str = "it",
        *,
        initial: int = 0,
        enabled: bool = True,
        file: TextIO | None = None,
        every_s: float = 30.0,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        scale: bool = False,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.scale = scale  # counts as 3.48M, not 3483295 (the plain line too)
        self.n = self.initial = initial
        self.enabled = enabled
        self.file = file if file is not None else sys.stderr
        self.every_s = every_s
        self.write = write or (lambda text: print(text, file=self.file, flush=True))
        self.clock = clock
        self.start = clock()
        self.since = "mean since resume" if initial else "mean since start"  # what the rate is
        self.fields: dict[str, str] = {}
        self.last_line_at: float | None = None
        self.last_line_n: int | None = None
        self.bar = None
        self.noted = False  # a message was written since the last update
        if enabled and _is_sized_terminal(self.file):
            from tqdm import tqdm

            # tqdm's rate and remaining time also exclude `initial`; smoothing=0 makes its rate the mean
            # since creation (its default is a moving average): the one rate the plain line states.
            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                initial=initial,
                file=self.file,
                dynamic_ncols=True,
                unit_scale=scale,  # 3.48M tok, not 3483295tok
                smoothing=0,
                bar_format=_bar_format(self.since) if total else None,
            )

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.start

    @property
    def rate(self) -> float | None:
        """Units per second since this bar was created; None before any progress."""
        done, elapsed = self.n - self.initial, self.elapsed_s
        return done / elapsed if done > 0 and elapsed > 0 else None

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        if rate is None or self.total is None:
            return None
        return max(0, self.total - self.n) / rate

    def update(self, n: int = 1, **fields) -> None:
        self.n += n
        self.fields = merge_fields(self.fields, {k: format_field(v) for k, v in fields.items()})
        if not self.enabled:
            return
        noted, self.noted = self.noted, False
        if self.bar is not None:
            if fields:
                self.bar.set_postfix_str(self.fields_text(), refresh=False)
            self.bar.update(n)
            if noted:
                self.bar.refresh()  # cleared for the message: back now
            return
        now = self.clock()
        if self.last_line_at is None or now - self.last_line_at >= self.every_s:
            self.write_line(now)

    def note(self, text: str) -> None:
        """A message above the bar (through the bar on a terminal, so it does not tear it)."""
        if not self.enabled:
            return
        if self.bar is not None:
            # Clear the bar, write the message, and leave the bar off until the next update.
            with self.bar.get_lock():
                self.bar.clear(nolock=True)
                self.file.write(text + "\n")
                self.file.flush()
        else:
            self.write(text)
        self.noted = True

    def fields_text(self) -> str:
        return " | ".join(f"{k} {v}" for k, v in self.fields.items())

    def line(self) -> str:
        number = format_count if self.scale else str
        count = f"{number(self.n)}/{number(self.total)}" if self.total is not None else number(self.n)
        parts = [f"{self.desc} {count} {self.unit}".strip()]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if self.fields:
            parts.append(self.fields_text())
        rate, eta = self.rate, self.eta_s
        if rate is not None:
            speed = f"{format_count(rate) if self.scale else f'{rate:.3g}'} {self.unit}/s ({self.since})"
            parts.append(f"eta {format_duration(eta)} at {speed}" if eta is not None else speed)
        return " | ".join(parts)

    def write_line(self, now: float) -> None:
        self.write(self.line())
        self.last_line_at, self.last_line_n = now, self.n

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            if self.noted:
                self.bar.leave = False  # a message was the last word: close without drawing the bar
            self.bar.close()
        elif self.last_line_n != self.n and not self.noted:
            self.write_line(self.clock())  # the final count always shows

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bar_format(since: str) -> str:
    """tqdm's default layout, with its rate labelled as the line labels it."""
    return "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining} at {rate_fmt} (" + since + "){postfix}]"


def merge_fields(old: dict, new: dict) -> dict:
    """`old` updated with `new`; a key new to `old` goes right after the key before it in `new`."""
    keys, before = list(old), None
    for key in new:
        if key not in keys:
            keys.insert(keys.index(before) + 1 if before is not None else 0, key)
        before = key
    merged = {**old, **new}
    return {k: merged[k] for k in keys}


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False


def _is_sized_terminal(stream) -> bool:
    """A terminal that reports its width: a terminal of 0 columns (under `script`, some CI ptys)
    would get a bar of width zero, that is nothing at all."""
    if not _isatty(stream):
        return False
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # a file-like terminal without a descriptor
        return True


def progress_bar(total: int | None, desc: str = "", unit: str = "it", **kwargs) -> Progress:
    return Progress(total, desc, unit, **kwargs)
