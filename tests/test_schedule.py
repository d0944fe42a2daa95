"""The learning-rate schedules against hand-computed values: cosine's warm-up and end points, WSD's
flat stretch then linear decay, constant."""

from __future__ import annotations

import pytest

from baseforge.train.schedule import lr_multiplier


def test_cosine_schedule_endpoints():
    total, warm = 100, 10
    assert lr_multiplier(0, total, "cosine", warm) == pytest.approx(0.1)
    assert lr_multiplier(9, total, "cosine", warm) == pytest.approx(1.0)
    assert lr_multiplier(10, total, "cosine", warm) == pytest.approx(1.0)
    assert lr_multiplier(99, total, "cosine", warm, min_lr_ratio=0.1) == pytest.approx(0.1)
    mid = 10 + (99 - 10) / 2
    assert lr_multiplier(int(mid), total, "cosine", warm) == pytest.approx(0.55, abs=0.02)


def test_wsd_schedule_is_flat_then_linear():
    values = [lr_multiplier(s, 100, "wsd", 0, min_lr_ratio=0.0, decay_fraction=0.2) for s in range(100)]
    assert values[:80] == [1.0] * 80
    assert values[99] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(values[80:], values[81:]))
    assert lr_multiplier(50, 100, "constant", 0) == 1.0
