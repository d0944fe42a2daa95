"""Progress for long loops: a tqdm bar on a terminal, plain periodic lines elsewhere.

    with progress_bar(total, desc="answer", unit="item") as bar:
        for item in items:
            ...
            bar.update(1, loss=loss)          # extra fields show after the bar / in the line

On a terminal (the stream's `isatty()`) this is a tqdm bar with postfix fields. When the stream is
not a terminal (CI, `nohup`, torchrun logs) a bar's carriage returns would pile up into one huge
line, so it writes a plain line instead (through `write`, default: print to the
stream): on the first update, then at most every `every_s` seconds, and at the end.
`enabled=False` (non-zero ranks) writes nothing.

The ETA counts only the work done since the bar was created (after a resume, `initial` steps
were done by an earlier process and say nothing about this one's rate).
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
        self.n = self.initial = initial
        self.enabled = enabled
        self.file = file if file is not None else sys.stderr
        self.every_s = every_s
        self.write = write or (lambda text: print(text, file=self.file, flush=True))
        self.clock = clock
        self.start = clock()
        self.fields: dict[str, str] = {}
        self.last_line_at: float | None = None
        self.last_line_n: int | None = None
        self.bar = None
        if enabled and _isatty(self.file):
            from tqdm import tqdm

            # tqdm's own rate and remaining time also exclude `initial`.
            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                initial=initial,
                file=self.file,
                dynamic_ncols=True,
                unit_scale=scale,  # 3.48M tok, not 3483295tok
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
        self.fields.update({k: format_field(v) for k, v in fields.items()})
        if not self.enabled:
            return
        if self.bar is not None:
            if fields:
                self.bar.set_postfix(self.fields, refresh=False)
            self.bar.update(n)
            return
        now = self.clock()
        if self.last_line_at is None or now - self.last_line_at >= self.every_s:
            self.write_line(now)

    def note(self, text: str) -> None:
        """A message above the bar (through the bar on a terminal, so it does not tear it)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.file)
        else:
            self.write(text)

    def set_fields(self, **fields) -> None:
        """Change the postfix fields without advancing."""
        self.update(0, **fields)

    def line(self) -> str:
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{self.desc} {count} {self.unit}".strip()]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts += [f"{k} {v}" for k, v in self.fields.items()]
        rate = self.rate
        if rate is not None:
            parts.append(f"{rate:.3g} {self.unit}/s")
        eta = self.eta_s
        if eta is not None:
            parts.append(f"eta {format_duration(eta)}")
        return " | ".join(parts)

    def write_line(self, now: float) -> None:
        self.write(self.line())
        self.last_line_at, self.last_line_n = now, self.n

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        elif self.last_line_n != self.n:
            self.write_line(self.clock())  # the final count always shows

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False


def progress_bar(total: int | None, desc: str = "", unit: str = "it", **kwargs) -> Progress:
    return Progress(total, desc, unit, **kwargs)
