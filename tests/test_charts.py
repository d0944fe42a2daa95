"""Charts from a bounded, faithful view of the metrics log: spikes survive the downsampling, the
drawn points stay bounded however long the log, and redrawing reuses one figure."""

from __future__ import annotations

import json
import math

from baseforge.train import charts


def test_downsample_is_bounded_ordered_and_keeps_every_buckets_extremes():
    xs = list(range(12000))
    ys = [1 + 0.1 * math.sin(x) for x in xs]
    ys[7777] = 50.0  # one-row spike
    ys[4321] = -9.0  # one-row dip
    dx, dy = charts.downsample(xs, ys, buckets=100)
    assert len(dx) <= 200 and dx == sorted(dx)
    assert max(dy) == 50.0 and min(dy) == -9.0 and (7777, 50.0) in zip(dx, dy)
    for b in range(100):  # each bucket drawn by its own min and max
        seg = ys[b * 120 : (b + 1) * 120]
        assert min(seg) in dy and max(seg) in dy
    assert charts.downsample([1, 2, 3], [3, 2, 1], buckets=100) == ([1, 2, 3], [3, 2, 1])


def test_write_charts_draws_a_long_log_on_one_reused_figure(tmp_path):
    rows = [{"step": 0, "tokens": 0, "val_loss": 5.0}] + [
        {
            "step": s,
            "tokens": 64 * s,
            "loss": 5 - s / 5000,
            "lr": 1e-3,
            "grad_norm": 1 + (s == 9000) * 99,
            "val_loss": 4.0 if s % 600 == 0 else None,
        }  # fmt: skip
        for s in range(1, 12001)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = charts.write_charts(tmp_path)
    figure = charts._figure
    assert out.is_file() and out.stat().st_size > 1000
    assert charts.write_charts(tmp_path) == out and charts._figure is figure  # reused
    assert not figure.axes  # cleared after each draw: nothing of the log is kept between draws
