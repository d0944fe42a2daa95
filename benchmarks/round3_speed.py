"""Round 3's tokens/s, on a machine doing nothing else: every recipe of benchmarks/round3.py timed at the
proxy's shape (a batch schedule's stages each timed and weighted by their tokens, as
ablation.whole_run_rate does), recipes alternating over `--rounds`, median per recipe.

    python benchmarks/round3_speed.py                          # this checkout -> round3-speed.json "after"
    python benchmarks/round3_speed.py --src OLD/src --as before --recipes seed,modern,round2-all

`--src` times another checkout's library (e.g. `git worktree add /tmp/old <commit>`) with this
checkout's harness, so "before" and "after" differ only in the code under test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402  (puts this checkout's src/ first on the path)

OUT = Path(__file__).resolve().parent / "results" / "round3-speed.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, help="time this library instead (another checkout's src/)")
    p.add_argument("--as", dest="label", default="after", help="the column the rates go in")
    p.add_argument("--recipes", type=lambda s: s.split(","), default=None)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=12, help="timed steps per recipe and batch size")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    import torch

    import round3  # the recipes (it imports this checkout's library, which --src then replaces)

    if args.src:  # the timed runs import baseforge afresh (ablation.rate), from the other checkout
        sys.path.insert(0, str(args.src.resolve()))
        for name in [m for m in sys.modules if m == "baseforge" or m.startswith("baseforge.")]:
            del sys.modules[name]

    if args.threads:
        torch.set_num_threads(args.threads)
    table = round3.key_recipes()
    names = args.recipes or list(table)
    rates: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        data = ablation.short_documents(Path(tmp))
        for _ in range(args.rounds):
            for name in names:
                recipe = table[name] + round3.PRECISION
                rate = ablation.whole_run_rate(recipe, data, Path(tmp), args.steps, round3.TOKENS)
                rates[name].append(rate)
                print(f"{args.label} {name}: {rates[name][-1]:,.0f} tokens/s", flush=True)
    import baseforge  # the library that was timed (this checkout's, or --src's)

    saved = json.loads(OUT.read_text()) if OUT.is_file() else {}
    column = saved.setdefault(args.label, {})
    column.update({n: statistics.median(r) for n, r in rates.items()})
    saved.setdefault("machines", {})[args.label] = {
        "cpu": round3._cpu(),
        "library": str(Path(baseforge.__file__).parent),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    OUT.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
