"""Held-out loss: mean cross-entropy and perplexity of models on exactly the same tokens.

The slice is the first `tokens` tokens of a split, cut into windows of `context` tokens + 1 in
order (data.loader.eval_batches), so every model and every rerun scores identical targets. For a
side-by-side comparison use one context for all models (the smallest), as the write-up did.

The loss is token-weighted: the sum of per-target cross-entropies over the number of scored
targets (targets equal to model.loss.IGNORE, such as a fine-tuning prompt's, are not scored). It is the one
definition of held-out loss (`model.loss.loss_sum`), used by the trainer's validation and by `baseforge eval`.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from baseforge.data.loader import TokenWindows, eval_batches
from baseforge.data.manifest import Manifest, read_manifest
from baseforge.errors import UserError
from baseforge.eval.models import FolderTokenizer, same_tokenizer
from baseforge.model.loss import loss_sum
from baseforge.progress import Progress
from baseforge.tokenizer import check_same_tokenizer, load_tokenizer


def check_vocab(name: str, model, tokenizer, data_dir: Path, manifest: Manifest) -> None:
    """Refuse (one line) a model whose tokenizer's ids mean other tokens than the data's.

    Compared by content, not by name: a baseforge tokenizer by its definition's hash, a
    transformers folder's own tokenizer token by token against the data's.
    """
    data_tok = manifest.tokenizer
    if isinstance(tokenizer, FolderTokenizer):
        if not same_tokenizer(tokenizer, load_tokenizer(data_tok, data_dir)):
            raise UserError(
                f"{name}'s tokenizer ({tokenizer.vocab_size} tokens) is not the one {data_dir} was prepared "
                f"with ({data_tok['name']}): prepare the data with the model's tokenizer"
            )
    else:
        check_same_tokenizer(tokenizer.record(), data_tok, name, str(data_dir))
    if data_tok["vocab_size"] > model.config.vocab_size:
        raise UserError(
            f"{name} has a vocabulary of {model.config.vocab_size} tokens but {data_dir} uses "
            f"{data_tok['vocab_size']}: vocab mismatch"
        )


def _counted(batches, bar):
    for batch in batches:
        yield batch
        bar.update(1)


@torch.no_grad()
def heldout_loss(
    model,
    data_dir: Path | str,
    *,
    split: str = "val",
    tokens: int = 1_048_576,
    context: int | None = None,
    batch_size: int = 8,
    device="cpu",
    autocast_dtype: torch.dtype | None = None,
    show_progress: bool = False,
) -> dict:
    """{"loss", "perplexity", "tokens"} of `model` on the fixed slice of `split`."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    context = min(context or model.config.context, model.config.context)
    windows = TokenWindows(data_dir, split, context, manifest)
    model.eval()

    def amp():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype)

    n_windows = min(windows.n, max(1, tokens // windows.context)) if tokens else windows.n
    with Progress(-(-n_windows // batch_size), "eval", "batch", enabled=show_progress, every_s=10) as bar:
        batches = _counted(eval_batches(windows, tokens, batch_size), bar)
        total, count = loss_sum(model, batches, device, amp)
    if not count:
        raise UserError(f"no tokens to evaluate in the {split} split of {data_dir}")
    mean = total / count
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": count}
