"""What `prepare` tells its user: progress while it runs, the closing lines, and an empty input's refusal."""

from __future__ import annotations

import time

from baseforge.data.packing import Counts
from baseforge.errors import UserError
from baseforge.progress import Progress


def check_not_empty(sources: list[str], counts: Counts) -> None:
    """No documents, or only empty ones (each just its end-of-text), is an error, not a tiny corpus."""
    if counts.tokens > counts.documents:
        return
    binary = counts.binary_files
    skipped = f" ({binary} binary file(s) skipped, first {counts.first_binary})" if binary else ""
    what = "only empty documents" if counts.documents else "no documents"
    raise UserError(f"the input is empty: {what} in {', '.join(sources)}{skipped}; give text files")


class Meter:
    """Progress (a bar on a terminal, else a line every 5 s on stderr: documents, tokens, rate, ETA
    when the token budget is known) and the closing summary."""

    def __init__(self, log, total_tokens: int | None, every_s: float = 5.0):
        self.log = log
        self.start = time.monotonic()
        self.bar = Progress(total_tokens, "prepare", "tok", every_s=every_s, scale=True)

    def update(self, docs: int, tokens: int) -> None:
        self.bar.update(tokens - self.bar.n, documents=f"{docs:,}")

    def finish(self, counts: Counts, splits, pack, warning: str | None = None) -> None:
        """The closing lines: skipped files, what crop dropped, the val warning, then the summary
        (last: the documents and tokens of each split, validation's too)."""
        self.bar.close()
        seconds = time.monotonic() - self.start
        if counts.binary_files:
            self.log(
                f"skipped {counts.binary_files:,} binary file(s) (NUL bytes or mostly not UTF-8), "
                f"first: {counts.first_binary}"
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
            f"; validation {val['documents']:,} documents, {val['tokens']:,} tokens"
            if val
            else "; no validation"
        )
        self.log(
            f"prepared {counts.documents:,} documents, {counts.tokens:,} tokens ({sizes}) "
            f"in {seconds:.1f}s ({counts.tokens / max(seconds, 1e-9) / 1e3:.0f}k tokens/s){held}"
        )
