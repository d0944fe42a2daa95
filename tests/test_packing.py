"""Best-fit packing: every window starts at a document, nothing is padded, the losses are counted, and
window j is a pure function of (seed, j)."""

from __future__ import annotations

import numpy as np
import pytest

from baseforge.data.batch_plan import BatchLayout
from baseforge.data.bestfit import BestFitStream, Documents, pack
from baseforge.data.loader import TokenData
from baseforge.errors import UserError

EOT = 0


def corpus(lengths, seed=0) -> np.ndarray:
    """Documents of these lengths (each its <|endoftext|> then content), the first without one, as
    prepare writes them (`doc EOT doc EOT ...`); content tokens encode the document number."""
    parts = []
    for i, n in enumerate(lengths):
        body = np.full(n, 1 + i % 60000, dtype=np.int64)
        parts.append(body if i == 0 else np.concatenate([[EOT], body[1:]]))
    return np.concatenate(parts)


def test_documents_are_found_at_their_starts():
    tokens = corpus([5, 3, 8])
    docs = Documents.find([tokens[:10], tokens[10:]], EOT)  # the second shard starts mid-document
    assert docs.length.tolist() == [5, 3, 2]  # the third document's head in shard 0 only...
    assert docs.dropped_heads == 6  # ... its continuation in shard 1 is dropped
    assert docs.start.tolist() == [0, 5, 8]


def test_best_fit_fills_every_window_exactly_and_counts_the_crops():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 160, 2000)
    p = pack(lengths, rng.permutation(len(lengths)), 129)
    for r in range(p.rows):
        segments = slice(p.row_ptr[r], p.row_ptr[r + 1])
        assert p.take[segments].sum() == 129  # no padding
    assert len(set(p.doc.tolist())) == len(p.doc)  # each document once per epoch
    whole = p.take == lengths[p.doc]
    assert (p.take[~whole] < lengths[p.doc[~whole]]).all()
    cut = int((lengths[p.doc] - p.take).sum())
    assert p.cropped == cut
    used = int(p.take.sum())
    assert used + p.cropped + p.unfinished == lengths.sum()
    # beyond what documents longer than a window must lose, best-fit crops well under half of what
    # greedy packing (each document in turn, cropped where the window ends) crops
    must = int(np.maximum(lengths - 129, 0).sum())
    assert p.cropped - must < 0.5 * (greedy_cropped(lengths, 129) - must)


def greedy_cropped(lengths, row_len: int) -> int:
    cropped, rem = 0, row_len
    for n in lengths.tolist():
        if n >= rem:
            cropped, rem = cropped + n - rem, row_len
        else:
            rem -= n
    return cropped


def test_a_long_document_is_cropped_to_the_window():
    p = pack(np.array([1000]), np.array([0]), 65)
    assert p.rows == 1 and p.take.tolist() == [65] and p.cropped == 935


def stream(lengths, context=31, seed=5, shards=1) -> BestFitStream:
    tokens = corpus(lengths)
    cuts = np.array_split(tokens, shards)
    return BestFitStream(list(cuts), context, seed, EOT)


def test_every_window_starts_at_a_document_and_the_stream_is_a_pure_function():
    lengths = np.random.default_rng(1).integers(3, 90, 400)
    a, b = stream(lengths), stream(lengths)
    x, y = a.batch(0, a.n)
    opens = x[:, 0].numpy()
    assert ((opens == EOT) | (opens == 1)).all()  # an <|endoftext|>, or the corpus's first document
    assert (y[:, :-1] == x[:, 1:]).all()
    # any window, any order, any stream object: the same tokens
    for j in [3, a.n - 1, a.n, 5 * a.n + 7]:
        assert (a.batch(j, 1)[0] == b.batch(j, 1)[0]).all()
    assert not (a.batch(0, a.n)[0] == a.batch(a.n, a.n)[0]).all()  # epoch 1 is another order


def test_ranks_share_one_global_batch():
    s = stream(np.random.default_rng(2).integers(3, 90, 400))
    whole = s.micro_batch(4, 0, BatchLayout(8, 1, 1, 0))[0]
    halves = [s.micro_batch(4, m, BatchLayout(2, 2, 2, r))[0] for m in range(2) for r in range(2)]
    assert (np.concatenate(halves) == whole.numpy()).all()


def test_the_loss_is_stated_and_too_little_data_is_one_line():
    s = stream(np.random.default_rng(3).integers(3, 200, 300), shards=3)
    st = s.stats
    assert st.windows == s.n and 0 <= st.cropped < st.tokens and st.dropped > 0
    assert "windows per epoch" in st.describe() and "cropped" in st.describe()
    with pytest.raises(UserError, match="fewer tokens than one window"):
        stream([5, 6], context=63)
    with pytest.raises(UserError, match="no documents"):
        BestFitStream([np.zeros(0, dtype=np.int64)], 8, 0, EOT)


def test_token_data_with_bestfit_reads_a_prepared_dir(shakespeare_dir):
    data = TokenData(shakespeare_dir, 64, 0, packing="bestfit")
    x, _ = data.micro_batch(0, 0, BatchLayout(16))
    assert (x[:, 0] == data.tokenizer.eot_id).float().mean() > 0.9
    assert data.packing_stats is not None and data.train_tokens == data.stream.n * 64
    concat = TokenData(shakespeare_dir, 64, 0)
    assert (concat.micro_batch(0, 0, BatchLayout(16))[0][:, 0] == data.tokenizer.eot_id).float().mean() < 0.5
