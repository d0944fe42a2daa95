"""Chart redraws alone: RSS and Python heap over N write_charts calls on a growing metrics log.

Usage:
    python benchmarks/bench_charts_memory.py --draws 200 --rows 12000

Appends rows to RUN/metrics.jsonl (a synthetic log shaped like the trainer's) so that it grows
linearly to --rows over --draws redraws, calls write_charts after each step of growth, and samples
VmRSS / RssAnon (from /proc/self/status) and the tracemalloc heap. Writes
benchmarks/results/charts-memory.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def status_mb() -> tuple[float, float]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) / 1024
    return round(fields["VmRSS"], 1), round(fields["RssAnon"], 1)


def row(step: int) -> dict:
    return {
        "step": step,
        "tokens": step * 2048,
        "loss": 10 * math.exp(-step / 3000) + 0.1 * math.sin(step),
        "val_loss": 10 * math.exp(-step / 3000) if step % 60 == 0 else None,
        "lr": 6e-4 * min(1, step / 100),
        "grad_norm": 1 + abs(math.sin(step / 7)) + (50 if step % 997 == 0 else 0),
        "tokens_per_s": 1e4,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--rows", type=int, default=12000)
    p.add_argument("--label", default="", help="a name for this measurement (e.g. before / after)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "charts-memory")
    args = p.parse_args()
    from baseforge.train.charts import write_charts

    tracemalloc.start()
    samples = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as run:
        log = Path(run) / "metrics.jsonl"
        written = 0
        for draw in range(1, args.draws + 1):
            target = args.rows * draw // args.draws
            with open(log, "a") as f:
                for step in range(written + 1, target + 1):
                    f.write(json.dumps(row(step)) + "\n")
            written = target
            write_charts(run)
            rss, anon = status_mb()
            heap = tracemalloc.get_traced_memory()[0] / 2**20
            samples.append(
                {"draw": draw, "rows": written, "rss_mb": rss, "anon_mb": anon, "heap_mb": round(heap, 2)}
            )
    wall = time.monotonic() - t0
    warm = samples[min(9, len(samples) - 1)]  # after 10 draws: every code path and cache has run
    end = samples[-1]
    summary = {
        "label": args.label,
        "draws": args.draws,
        "rows": args.rows,
        "wall_s": round(wall, 1),
        "warm": warm,
        "end": end,
        "rss_change_warm_to_end_mb": round(end["rss_mb"] - warm["rss_mb"], 1),
        "anon_change_warm_to_end_mb": round(end["anon_mb"] - warm["anon_mb"], 1),
        "heap_change_warm_to_end_mb": round(end["heap_mb"] - warm["heap_mb"], 2),
        "rss_max_mb": max(s["rss_mb"] for s in samples),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(args.out) + ".json").write_text(json.dumps({**summary, "samples": samples}, indent=1) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
