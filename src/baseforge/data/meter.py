"""What `prepare` tells its user: the skipped input, progress while it runs, and the closing lines."""

from __future__ import annotations

import time

from baseforge.data.files import shown
from baseforge.data.packing import Counts
from baseforge.errors import UserError
from baseforge.progress import Progress


def check_not_empty(sources: list[str], counts: Counts) -> None:
    """No documents, or only empty ones (each just its end-of-text), is an error, not a tiny corpus."""
    if counts.tokens > counts.documents:
        return
    notes = []
    if counts.binary_files:
        notes.append(f"{counts.binary_files} binary file(s) skipped, first {shown(counts.first_binary)}")
    if counts.symlinks:
        notes.append(
            f"{counts.symlinks} symlink(s) out of a source folder skipped, "
            f"first {shown(counts.first_symlink)}: --follow-symlinks reads them"
        )
    skipped = f" ({'; '.join(notes)})" if notes else ""
    what = "only empty documents" if counts.documents else "no documents"
    names = ", ".join(map(shown, sources))
    raise UserError(f"the input is empty: {what} in {names}{skipped}; give text files")


class Meter:
    """Progress (a bar on a terminal, else a line every 5 s on stderr: documents, tokens, rate, ETA
    when the token budget is known) and the closing summary."""

    def __init__(self, log, total_tokens: int | None, every_s: float = 5.0):
        self.log = log
        self.start = time.monotonic()
        self.bar = Progress(total_tokens, "prepare", "tok", every_s=every_s, scale=True)

    def update(self, docs: int, tokens: int) -> None:
        self.bar.update(tokens - self.bar.n, documents=f"{docs:,}")

    def finish(self, counts: Counts, splits, pack, warning: str | None, held_out: str) -> None:
        """The closing lines: skipped files, what crop dropped, the val warning, then the summary
        (last: the documents and tokens of each split, validation's too)."""
        self.bar.close()
        seconds = time.monotonic() - self.start
        if counts.binary_files:
            self.log(
                f"skipped {counts.binary_files:,} binary file(s) (NUL bytes or mostly not UTF-8), "
                f"first: {shown(counts.first_binary)}"
            )
        if counts.surrogate_documents:
            self.log(
                "replaced lone surrogate escapes (\\ud800-\\udfff without their pair: no Unicode text) with "
                f"U+FFFD in {counts.surrogate_documents:,} JSON text(s), "
                f"first: {shown(counts.first_surrogate)}"
            )
        if pack == "crop":
            total = counts.tokens + counts.cropped_tokens
            self.log(
                f"crop dropped {counts.cropped_tokens:,} tokens "
                f"({100 * counts.cropped_tokens / max(total, 1):.1f}%) "
                f"from {counts.cropped_documents:,} documents longer than the context"
            )
        if warning:
            self.log(warning)
        sizes = ", ".join(f"{s} {e['tokens']:,}" for s, e in splits.items())
        val = splits.get("val")
        held = (
            f"; validation {val['documents']:,} documents, {val['tokens']:,} tokens: {held_out}"
            if val
            else "; no validation"
        )
        self.log(
            f"prepared {counts.documents:,} documents, {counts.tokens:,} tokens ({sizes}) "
            f"in {seconds:.1f}s ({counts.tokens / max(seconds, 1e-9) / 1e3:.0f}k tokens/s){held}"
        )
