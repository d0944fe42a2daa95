"""Round 3 of the recipe work (`python benchmarks/round3.py run|report`), on the round-2 proxy
(benchmarks/ablation.py: short documents, context 512, 4 layers x 192, global batch 8, 1,228,800
tokens), in fp32 on every machine, so that runs made on different CPUs (with or without native bf16)
compute the same numbers and can be pooled:

- keys: every round-2 key removed alone from the whole set ("round2-all"), beside seed, modern and
  round2-all themselves; p-values against round2-all.
- budget: seed, modern and the chosen preset's recipe at 1/8, 1/4, 1/2 and 1x the budget, each run
  with its own warmup and decay, so its final loss is what a run of that length reaches.

Each run is one JSON file in benchmarks/results/round3-runs/ (written when the run ends), so several
workers (`--worker 0/2`, `--worker 1/2`, each with its own torch threads) share the list without
clashing, and a stopped benchmark continues where it stopped: finished runs are never redone.
`report` (benchmarks/round3_report.py) pools them into recipes-round3.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402
from ablation import MODERN, ROUND2, SEED  # noqa: E402
from baseforge.train.average import WeightAverage  # noqa: E402
from baseforge.train.loop import Trainer  # noqa: E402
from baseforge.train.validate import Validator  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "round3-runs"
TOKENS = 1_228_800  # the round-2 proxy: 300 steps of 8 x 512
FRACTIONS = (0.125, 0.25, 0.5, 1.0)
# fp32 everywhere: bf16 is emulated (and ~25x slower) on CPUs without AVX512-BF16/AMX, and runs in
# one precision pool across machines.
PRECISION = ["precision=fp32"]
EVERY = MODERN + [on for on, _ in ROUND2.values()]
# Averaged weights, measured on every run that decays (WSD: its last 30%) at once: each decay's EMA from
# 70% of the run is kept beside the run (train/average.py, the product's own) and evaluated at its end.
# They only read the weights, so the run itself is the same as without them.
EMA_DECAYS = (0.9, 0.95, 0.98)
EMA_START = 0.7


def key_recipes() -> dict[str, list[str]]:
    out = {"seed": SEED, "modern": MODERN, "round2-all": EVERY}
    for key, (_, off) in ROUND2.items():
        out[f"-{key}"] = EVERY + [off]
    return out


def budget_recipes() -> dict[str, list[str]]:
    return {"seed": SEED, "modern": MODERN, "round2-all": EVERY}


@dataclass(frozen=True)
class Job:
    part: str  # keys | budget
    recipe: str
    fraction: float  # of TOKENS
    seed: int

    @property
    def path(self) -> Path:
        return RUNS / self.part / f"{self.recipe}@{self.fraction:g}-s{self.seed}.json"

    @property
    def overrides(self) -> list[str]:
        table = key_recipes() if self.part == "keys" else budget_recipes()
        return table[self.recipe] + PRECISION

    @property
    def tokens(self) -> int:
        return int(TOKENS * self.fraction)


def jobs(parts: list[str], seeds: int) -> list[Job]:
    """Seed-major: a stopped benchmark has every recipe at equal seeds (the keys first)."""
    out: list[Job] = []
    for seed in range(seeds):
        if "keys" in parts:
            out += [Job("keys", name, 1.0, seed) for name in key_recipes()]
        if "budget" in parts:
            out += [Job("budget", name, f, seed) for name in budget_recipes() for f in FRACTIONS if f < 1]
    return out


def run_job(job: Job, data: Path, tmp: Path) -> dict:
    # keys: eval every 25 steps, round 2's curve; budget: only the final loss counts (and the start's)
    every = 25 if job.part == "keys" else 1_000_000
    t0 = time.perf_counter()
    record = ablation.run(
        job.overrides,
        job.seed,
        data,
        tmp,
        job.tokens,
        every,
        trainer_cls=AveragingTrainer,
        extra=lambda trainer: {"ema": trainer.ema_losses()},
    )
    return {
        **record,
        "part": job.part,
        "recipe": job.recipe,
        "fraction": job.fraction,
        "seed": job.seed,
        "tokens": job.tokens,
        "seconds": time.perf_counter() - t0,
        "threads": _threads(),
        "cpu": _cpu(),
    }


class AveragingTrainer(Trainer):
    """A Trainer that also keeps one WeightAverage per EMA_DECAYS (from EMA_START of the run) and
    evaluates each at the end: `ema_losses()`, {decay: held-out loss}."""

    averages: dict[float, WeightAverage] | None = None

    def _train_one_step(self) -> None:
        super()._train_one_step()
        if self.averages is None:
            start = round(EMA_START * self.built.total)
            self.averages = {d: WeightAverage(d, start) for d in EMA_DECAYS}
        for average in self.averages.values():
            average.update(self.built.views.plain, self.state.step)

    def ema_losses(self) -> dict[str, float | None]:
        validator, out = Validator(self.built), {}
        for decay, average in (self.averages or {}).items():
            if average.started:
                with average.swapped_in(self.built.views.plain):
                    out[str(decay)] = validator.loss()
        return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("run", "report"))
    p.add_argument("--parts", default="keys,budget", type=lambda s: s.split(","))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--worker", default="0/1", help="i/n: this process takes every n-th job from the i-th")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.what == "report":
        import round3_report

        round3_report.main()
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    index, count = (int(x) for x in args.worker.split("/"))
    mine = [j for i, j in enumerate(jobs(args.parts, args.seeds)) if i % count == index]
    with tempfile.TemporaryDirectory() as tmp:
        data = ablation.short_documents(Path(tmp))
        for job in mine:
            if job.path.is_file():
                continue
            record = run_job(job, data, Path(tmp))
            job.path.parent.mkdir(parents=True, exist_ok=True)
            partial = job.path.with_suffix(f".tmp{os.getpid()}")
            partial.write_text(json.dumps(record))
            partial.replace(job.path)  # atomic: a stopped worker leaves no half-written run
            final = record["curve"][-1][2]
            print(
                f"{job.part} {job.recipe} @{job.fraction:g} seed {job.seed}: final val {final:.4f} "
                f"({record['seconds']:.0f}s, {record['tokens_per_s'] or 0:,.0f} tok/s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
