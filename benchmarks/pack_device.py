"""Pack what the GPU suite's calls need into one git-ignored folder, check the trip's size, and print
each call's exact command.

    python benchmarks/pack_device.py [--dest .device] [--shared ../shared]

The GPU machine gets only the checkout's tracked (and untracked, not ignored) files plus the folders
named for the trip, 64 MiB in all, and no network. So .device/ holds nanoGPT's and llm.c's sources
(from ../shared/baselines) and GPT-2's BPE files with their tiktoken cache (from ../shared/data/gpt2),
nothing else; benchmarks/common.py finds the cache there.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # what a trip may carry: the working tree plus the named folders
COMMAND_LIMIT = 2000
WHAT = {  # destination inside --dest -> source inside --shared
    "baselines/nanoGPT": "baselines/nanoGPT",
    "baselines/llm.c": "baselines/llm.c",
    "gpt2": "data/gpt2",
}


def trip_files(root: Path) -> list[Path]:
    """What the device tool sends of the checkout itself: tracked and untracked-but-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return [root / name.decode() for name in listed if name and (root / name.decode()).is_file()]


def size(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def pack(dest: Path, shared: Path) -> int:
    missing = [src for src in WHAT.values() if not (shared / src).is_dir()]
    if missing:
        raise SystemExit(f"pack_device: {shared / missing[0]} not found; pass --shared DIR (../shared here)")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for target, src in WHAT.items():
        shutil.copytree(shared / src, tmp / target)
    for path in [tmp, *tmp.rglob("*")]:  # ../shared is read-only; the copies must be removable
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return size(dest.rglob("*"))


def calls(dest: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_suite import CALLS, DEADLINE_S, command_line

    carry = str(dest.relative_to(ROOT)) if dest.is_relative_to(ROOT) else str(dest)
    out = []
    for call, parts in CALLS.items():
        budgets = ", ".join(f"{p.name} {p.budget_s:.0f}s" for p in parts)
        # The command's own deadline ends the call; the tool's limit leaves 45 s for the last child's kill.
        out.append(
            {
                "call": call,
                "command": command_line(call),
                "carry": [carry],
                "timeout_s": DEADLINE_S[call] + 45,
                "parts": budgets,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dest", type=Path, default=ROOT / ".device", help="the folder to fill (git-ignored)")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = ap.parse_args(argv)
    dest = args.dest.resolve()
    packed = pack(dest, args.shared)
    tree = size(trip_files(ROOT))
    total = tree + packed
    print(f"packed {dest}: {packed / 2**20:.1f} MiB; checkout's files {tree / 2**20:.1f} MiB; ", end="")
    print(f"together {total / 2**20:.1f} MiB of {LIMIT / 2**20:.0f}")
    if total > LIMIT:
        print("pack_device: over the trip's 64 MiB: the GPU machine would get nothing", file=sys.stderr)
        return 1
    for c in calls(dest):
        if len(c["command"]) > COMMAND_LIMIT:
            print(
                f"pack_device: call {c['call']}'s command is over {COMMAND_LIMIT} characters", file=sys.stderr
            )
            return 1
        print(f"\ncall {c['call']} ({c['parts']}):")
        print(f"  command:   {c['command']}")
        print(f"  carry:     {c['carry']}")
        print(f"  timeout_s: {c['timeout_s']}")
    print("\nthen, here: python benchmarks/gpu_suite.py --report CALL1_FILES CALL2_FILES")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
