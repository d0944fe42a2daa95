"""Several prepared data dirs as the trainer sees one: the mixed train stream (mixture.py) and each
source's own validation slice."""

from __future__ import annotations

from baseforge.data.loader import TokenData
from baseforge.data.mixture import MixtureStream, Segment, Source
from baseforge.data.shards import check_ids
from baseforge.errors import UserError


class MixedData:
    """Several prepared data dirs as the trainer sees one (loader.TokenData's interface): one tokenizer
    (the same in every dir, by content), the mixed train stream, and each source's own fixed validation
    slice, so runs with different weights are scored on the same tokens of each source."""

    def __init__(
        self,
        sources: list[Source],
        context: int,
        seed: int,
        packing: str = "concat",
        segment: Segment = Segment(),
    ):
        self.sources = sources
        self.parts = [TokenData(s.path, context, seed, packing) for s in sources]
        first = self.parts[0]
        for source, part in zip(sources[1:], self.parts[1:]):
            if (part.tokenizer.sha256, part.vocab_size) != (first.tokenizer.sha256, first.vocab_size):
                raise UserError(
                    f"--data {source.path} was prepared with tokenizer {part.tokenizer.name} "
                    f"({part.tokenizer.sha256[:12]}), {sources[0].path} with {first.tokenizer.name} "
                    f"({first.tokenizer.sha256[:12]}): a mixture needs one tokenizer; prepare them alike"
                )
        self.tokenizer, self.vocab_size = first.tokenizer, first.vocab_size
        self.source = " + ".join(f"{s.path}:{s.weight:.3g}" for s in sources)
        weights = [s.weight for s in sources]
        self.stream = MixtureStream([p.stream for p in self.parts], weights, context, segment)
        self.train_tokens = self.stream.tokens
        self.packing_stats = None  # each source's: the opening lines name the mixture instead
        self.val = None  # no one slice: val_sets() holds each source's

    def passes(self, windows: int) -> list[tuple[Source, float]]:
        """Passes the run's first `windows` windows make over each source's train split."""
        taken = self.stream.windows_read(windows)
        context = self.stream.context
        return [(s, n * context / max(p.train_tokens, 1)) for s, p, n in zip(self.sources, self.parts, taken)]

    def micro_batch(self, step: int, micro_step: int, layout):
        x, y = self.stream.micro_batch(step, micro_step, layout)
        check_ids(y, self.vocab_size, f"the train split of one of {self.source}")  # x is y shifted by one
        check_ids(x[:, :1], self.vocab_size, f"the train split of one of {self.source}")
        return x, y

    def val_sets(self) -> list[tuple[Source, object]]:
        """Each source with its data (val_batches), for a held-out loss per source."""
        return [(s, p) for s, p in zip(self.sources, self.parts) if p.val is not None]

    def val_batches(self, max_tokens: int, batch_size: int, rank: int = 0, world: int = 1):
        """The first source's slice, for callers that read one (per-source losses: val_sets)."""
        return self.parts[0].val_batches(max_tokens, batch_size, rank, world)


PreparedData = TokenData | MixedData  # what a run trains on: one data dir, or a mixture of several
