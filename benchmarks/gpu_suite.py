"""The GPU suite, in calls that fit a lent GPU's minutes: each part writes its result to --out the moment
it ends, so a call stopped at its limit still brings back what it finished.

On the GPU machine (a bare checkout, no baseforge install, no network):
    python benchmarks/pack_device.py           # here, once: packs .device/ and prints the two calls
    python benchmarks/gpu_suite.py --call 1 --out $OUT    # env, data, flex smoke, gpt2-124m vs nanoGPT
    python benchmarks/gpu_suite.py --call 2 --out $OUT    # the quality race, CUDA tests, llm.c, seed
Back here, the parts' files of both calls become the committed result:
    python benchmarks/gpu_suite.py --report CALL1_DIR CALL2_DIR   # benchmarks/results/gpu-<gpu>.{md,json}
On CPU, the same code paths with tiny shapes (what CI rehearses, see tests/test_gpu_suite.py):
    python benchmarks/gpu_suite.py --call 1 --quick --out DIR

Every part has a budget (seconds on the GPU, estimated until measured; printed beside it) and each
call a deadline: a part that overruns is stopped, recorded as "overran", and the call goes on.
Results in --out: one `NN-part.json` per part (status, seconds, budget, result), `gpu-suite.md` (all
parts so far, rewritten after each) and `gpu-suite.log` (every child's output): 8 files at most.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts this checkout's src/ first on the path)
import gpu_parts  # noqa: E402
import gpu_quality  # noqa: E402
from gpu_report import markdown, merge  # noqa: E402

ROOT = common.ROOT


@dataclass(frozen=True)
class Part:
    name: str
    budget_s: float  # on an H100/H200-class GPU; estimated until a lent GPU measured it


# Ordered by value: that the modern presets train at all on a GPU (flex smoke), the headline ratio,
# the recipes' race, what a user trusts (the CUDA tests), then the rest. Each call's parts add up to
# its deadline, so the last ones run only when the earlier came in under budget.
CALLS = {
    1: [
        Part("env", 15),
        Part("data", 60),
        Part("flex-smoke", 120),  # gpt2-speedrun and gpt2-small-modern, compile off and on
        Part("throughput-gpt2-124m", 90),
        Part("nanogpt", 90),
    ],
    2: [
        Part("env", 15),
        Part("data", 60),  # kept from call 1 when the machine stayed warm; else prepared again
        Part("quality", 150),  # three recipes: seed, modern, speedrun (eager, fixed micro-batches)
        Part("tests", 150),
        Part("llmc", 150),
        Part("throughput-gpt2-small-seed", 100),
    ],
}
# Each call well inside a 10-minute command; both, with a machine's start (1-2 min), inside the
# 15 device minutes a session is lent.
DEADLINE_S = {1: 380, 2: 330}


@dataclass
class Suite:
    quick: bool
    out: Path
    work: Path
    baselines: Path
    steps: int
    quality_tokens: int
    deadline: float  # time.monotonic() at which the call must have ended
    log_file: Path
    results: dict = field(default_factory=dict)  # part name -> its record, as written

    def log(self, msg: str) -> None:
        line = f"[gpu_suite {time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(self.log_file, "a") as f:
            f.write(line + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run_part(suite: Suite, part: Part, index: int, call: int) -> dict:
    from baseforge.fileio import atomic_write_json, atomic_write_text  # (src/ is on the path: common)

    budget = min(part.budget_s, max(suite.left(), 0.0))
    suite.log(f"part {part.name}: budget {part.budget_s:.0f} s (estimated), {suite.left():.0f} s left")
    record = {"part": part.name, "call": call, "budget_s": part.budget_s, "quick": suite.quick}
    t0 = time.monotonic()
    if budget < 5:
        record.update(status="not run", reason="the call's deadline was reached before this part")
    else:
        try:
            result = gpu_parts.PARTS[part.name](suite, time.monotonic() + budget)
            if result.get("skipped"):
                record.update(status="skipped", reason=result["skipped"], result=result)
            else:
                record.update(status="ok", result=result)
        except gpu_parts.Overran as exc:
            record.update(status="overran", reason=str(exc), partial=exc.partial)
        except Exception as exc:  # noqa: BLE001 - one failed part must not lose the others' results
            record.update(status="failed", reason=f"{type(exc).__name__}: {str(exc)[-3000:]}")
    record["seconds"] = round(time.monotonic() - t0, 1)
    suite.results[part.name] = record
    atomic_write_json(suite.out / f"{call}{index}-{part.name}.json", record)
    atomic_write_text(suite.out / "gpu-suite.md", markdown(list(suite.results.values())))
    suite.log(f"part {part.name}: {record['status']} in {record['seconds']} s")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--call", type=int, choices=sorted(CALLS), help="run one call's parts, in order")
    ap.add_argument("--part", action="append", help="instead of --call: these parts (repeatable)")
    ap.add_argument("--out", type=Path, help="where each part's result and the log are written")
    ap.add_argument("--report", type=Path, nargs="+", help="merge calls' --out folders into results/")
    ap.add_argument("--quick", action="store_true", help="same code paths on CPU with tiny shapes")
    ap.add_argument("--baselines", type=Path, help="nanoGPT/ and llm.c/ (default: .device/baselines)")
    ap.add_argument("--work", type=Path, default=ROOT / ".gpu-suite", help="data and runs (kept)")
    ap.add_argument("--steps", type=int, help="steps per throughput run (default 60; quick 3)")
    ap.add_argument("--quality-tokens", type=float, help="tokens per quality recipe (gpu_quality.TOKENS)")
    ap.add_argument("--deadline", type=float, help="seconds for the whole call (default per call)")
    args = ap.parse_args(argv)
    if args.report:
        stem = merge(args.report, ROOT / "benchmarks" / "results")
        print(f"wrote {stem}.md and .json")
        return 0
    parts = _chosen(args)
    if args.out is None:
        ap.error("--out DIR is required (on the GPU machine: --out $OUT)")
    import torch

    import baseforge

    if not args.quick and not torch.cuda.is_available():
        print("gpu_suite: no CUDA GPU here; use --quick for the CPU rehearsal", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    baselines = args.baselines or next(
        (p for p in (ROOT / ".device" / "baselines", ROOT.parent / "shared" / "baselines") if p.is_dir()),
        ROOT / ".device" / "baselines",
    )
    deadline = args.deadline or DEADLINE_S.get(args.call, sum(p.budget_s for p in parts))
    suite = Suite(
        quick=args.quick,
        out=args.out,
        work=args.work,
        baselines=baselines,
        steps=args.steps or (3 if args.quick else 60),
        quality_tokens=int(args.quality_tokens or gpu_quality.TOKENS),
        deadline=time.monotonic() + deadline,
        log_file=args.out / "gpu-suite.log",
    )
    suite.work.mkdir(parents=True, exist_ok=True)
    suite.log(
        f"baseforge from {Path(baseforge.__file__).parent} (this checkout's src/, on the path of this "
        f"process and of every child); TIKTOKEN_CACHE_DIR={common.child_env().get('TIKTOKEN_CACHE_DIR')}; "
        f"deadline {deadline:.0f} s"
    )
    call = args.call or 0
    for index, part in enumerate(parts):
        run_part(suite, part, index, call)
    bad = [r["part"] for r in suite.results.values() if r["status"] in ("failed", "overran", "not run")]
    suite.log("done" + (f"; not ok: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def _chosen(args) -> list[Part]:
    every = {p.name: p for parts in CALLS.values() for p in parts}
    if args.part:
        unknown = [name for name in args.part if name not in every]
        if unknown:
            raise SystemExit(f"gpu_suite: unknown part {unknown[0]!r}; parts: {', '.join(every)}")
        return [every[name] for name in args.part]
    if args.call is None:
        raise SystemExit("gpu_suite: give --call 1, --call 2, --part NAME or --report DIR...")
    return CALLS[args.call]


def command_line(call: int) -> str:
    return f"PYTHONUNBUFFERED=1 python benchmarks/gpu_suite.py --call {call} --out $OUT"


if __name__ == "__main__":
    raise SystemExit(main())
