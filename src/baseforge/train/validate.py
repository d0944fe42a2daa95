"""Evaluation during training: the held-out loss on every rank, and the extra evaluators on rank 0."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from baseforge.model.loss import IGNORE, loss_sum
from baseforge.train.build import Run
from baseforge.train.distributed import all_reduce_max, all_reduce_sum

# fn(model, tokenizer) -> {metric: value}: an in-training evaluation on rank 0 alone (launch.py makes them);
# each figure with its standard error (metric_stderr) and the item count (items), so a row says how exact
Evaluator = Callable[..., dict]


class Validator:
    def __init__(self, run: Run, evaluators: dict[str, Evaluator] | None = None):
        self.run = run
        self.evaluators = evaluators or {}
        self.source_losses: dict[str, float] = {}  # a mixture's "val_loss/NAME", from the last loss()

    def loss(self) -> float | None:
        """Held-out loss on the fixed validation slice; for a mixture (data/mixture.py) each source's on
        its own slice (kept in `source_losses`) and their mean under the run's weights, so runs with
        other weights are scored on the same tokens of each source. A collective: every rank calls it."""
        sets = getattr(self.run.data, "val_sets", None)
        if sets is None:
            return self._loss_of(self.run.data)
        self.source_losses, total, weight = {}, 0.0, 0.0
        for source, part in sets():
            value = self._loss_of(part)
            if value is not None:
                self.source_losses[f"val_loss/{source.name}"] = value
                total, weight = total + source.weight * value, weight + source.weight
        return total / weight if weight else None

    def averaged(self) -> dict[str, float]:
        """The averaged weights' held-out losses ("ema_val_loss"; a mixture's "ema_val_loss/NAME" too) once
        the run's average has started (train/average.py), else {}. A collective, as loss() is."""
        average, raw = self.run.average, self.source_losses
        if average is None or not average.started:
            return {}
        with average.swapped_in(self.run.views.plain):
            value = self.loss()
        found = {f"ema_{k}": v for k, v in self.source_losses.items()}
        self.source_losses = raw  # the row's per-source losses stay the raw weights'
        return {} if value is None else {"ema_val_loss": value, **found}

    def _loss_of(self, data) -> float | None:
        """`data`'s held-out loss (model.loss's definition), token-weighted over all ranks' shares of
        its slice; None without a validation split."""
        run, dist = self.run, self.run.runtime.dist
        model = run.views.eval
        model.eval()
        batches: Iterable = data.val_batches(
            run.config.train.eval_tokens, run.layout.micro_batch, dist.rank, dist.world
        )
        if run.views.kind == "fsdp":  # only FSDP needs the count up front; others stream the slice
            batches = self._evened(list(batches))
        count: float  # the scored targets, summed over the ranks as a float
        total, count = loss_sum(model, batches, run.runtime.device, run.runtime.precision.autocast)
        model.train()
        total, count = all_reduce_sum([total, float(count)], dist, run.runtime.device)
        return total / count if count else None

    def _evened(self, batches: list) -> list:
        """Under FSDP every forward is a collective (the blocks' all-gathers), so every rank must run as
        many as the others: the slice's windows split unevenly over ranks (one window, two ranks), and
        ranks short of batches run masked ones (every target IGNORE: no loss, no count)."""
        rt = self.run.runtime
        most = int(all_reduce_max([float(len(batches))], rt.dist, rt.device)[0])
        context = self.run.config.model.context
        masked = (
            torch.zeros(1, context, dtype=torch.long),
            torch.full((1, context), IGNORE, dtype=torch.long),
        )
        return batches + [masked] * (most - len(batches))

    def extras(self) -> dict:
        """Every evaluator's results as metrics-row fields ("hellaswag_acc", ...), on rank 0 ({} elsewhere).
        A collective when there are evaluators (under FSDP rank 0 evaluates a gathered copy)."""
        if not self.evaluators:
            return {}
        model = self.run.views.whole_on_main()
        if model is None:
            return {}
        row = {}
        for name, evaluate in self.evaluators.items():
            for key, value in evaluate(model, self.run.data.tokenizer).items():
                row[f"{name}_{key}"] = value
        model.train()
        return row
