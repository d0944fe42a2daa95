"""Soak: a long cpu-tiny run with frequent evaluation and checkpoints; host RSS and open fds stay flat.

Usage:
    python benchmarks/bench_soak.py          # 2000 steps, eval (131k tokens) + checkpoint every 100
    python benchmarks/bench_soak.py --steps 5000 --every 50 --data data/builtin

`baseforge train` runs in a child process, as a user runs it, and is sampled from outside every
`--interval` seconds: VmRSS from /proc/PID/status and the number of entries in /proc/PID/fd, with
the step it had last logged. Leaks per checkpoint, chart, evaluation or metrics row would show as
growth between the first checkpoint (when every code path, matplotlib included, has run once)
and the end. Writes benchmarks/results/soak.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STEP_LINE = re.compile(r"^train (\d+)/\d+ step")  # the progress line: "train 120/3000 step (4%) | ..."


@dataclass
class Sample:
    t_s: float  # seconds since the child started
    step: int  # last step the child logged (-1 before the first)
    rss_mb: float
    anon_mb: float  # RssAnon: the heap (a leak grows this)
    file_mb: float  # RssFile: mapped files (libraries, memory-mapped shards)
    fds: int


def memory_mb(pid: int) -> tuple[float, float, float] | None:
    """(VmRSS, RssAnon, RssFile) in MB from /proc/PID/status; None once the process is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    fields[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        return None
    return (fields["VmRSS"], fields["RssAnon"], fields["RssFile"]) if len(fields) == 3 else None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def prepare_data(data: Path | None, scratch: Path) -> Path:
    if data is not None:
        return data
    out = scratch / "builtin"
    cmd = [
        sys.executable,
        "-m",
        "baseforge",
        "prepare",
        "builtin",
        "--out",
        str(out),
        "--tokenizer",
        "bpe:4096",
    ]
    subprocess.run(cmd, check=True, env=child_env(), stdout=subprocess.DEVNULL)
    return out


def train_and_sample(cmd: list[str], interval: float, minutes: float) -> tuple[list[Sample], float, bool]:
    """Run `cmd`, sampling it every `interval` s; (samples, wall seconds, stopped by the time limit)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())
    lines: list[str] = []
    last_step = [-1]

    def read() -> None:  # keep the pipe drained and note the last logged step
        for line in proc.stdout:
            lines.append(line.rstrip())
            m = STEP_LINE.match(line)
            if m:
                last_step[0] = int(m.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0, samples, stopped = time.monotonic(), [], False
    while proc.poll() is None:
        if minutes and time.monotonic() - t0 > 60 * minutes:  # a shared machine: stop where it got to
            proc.kill()
            stopped = True
            break
        mem, fds = memory_mb(proc.pid), open_fds(proc.pid)
        if mem is not None and fds is not None:
            samples.append(Sample(round(time.monotonic() - t0, 2), last_step[0], *mem, fds))
        time.sleep(interval)
    wall = time.monotonic() - t0
    proc.wait()
    reader.join(timeout=10)
    if proc.returncode != 0 and not stopped:
        sys.exit("training failed:\n" + "\n".join(lines[-20:]))
    return samples, wall, stopped


def summarise(samples: list[Sample], every: int) -> dict:
    """Start (first sample), warm (first sample past the first checkpoint), end, and the change."""
    warm = next((s for s in samples if s.step > every), samples[0])
    end = samples[-1]
    tail = [s for s in samples if s.step > every]
    return {
        "start": asdict(samples[0]),
        "warm": asdict(warm),
        "end": asdict(end),
        "rss_max_after_warm_mb": max(s.rss_mb for s in tail) if tail else None,
        "fds_max_after_warm": max(s.fds for s in tail) if tail else None,
        "rss_change_warm_to_end_mb": round(end.rss_mb - warm.rss_mb, 1),
        "anon_change_warm_to_end_mb": round(end.anon_mb - warm.anon_mb, 1),
        "file_change_warm_to_end_mb": round(end.file_mb - warm.file_mb, 1),
        "fds_change_warm_to_end": end.fds - warm.fds,
    }


def markdown(args, cmd: list[str], summary: dict, wall: float, samples: list[Sample], stopped: bool) -> str:
    s, w, e = summary["start"], summary["warm"], summary["end"]
    reached = max(0, samples[-1].step)
    rows = [samples[i] for i in range(0, len(samples), max(1, len(samples) // 12))] + [samples[-1]]
    table = "\n".join(
        f"| {r.t_s:.0f} | {r.step} | {r.rss_mb:.1f} | {r.anon_mb:.1f} | {r.file_mb:.1f} | {r.fds} |"
        for r in rows
    )
    bench = f"python benchmarks/bench_soak.py --steps {args.steps} --every {args.every}"
    bench += f" --eval-tokens {args.eval_tokens}" + (f" --minutes {args.minutes:g}" if args.minutes else "")
    bench += "".join(f" --set {kv}" for kv in args.overrides)
    stop_note = (
        f" **Stopped by the time limit at step {samples[-1].step}** (the machine was shared and slow)."
        if stopped
        else ""
    )
    return f"""# Soak: host RSS and open file descriptors over a long cpu-tiny run

Command: `{bench}`
({time.strftime("%Y-%m-%d")}, 2 CPU cores shared with other work). It runs, in a child process:

    {" ".join(cmd[1:])}

and samples the child from outside every {args.interval} s (VmRSS from /proc/PID/status, entries of
/proc/PID/fd). {args.steps} steps asked, {reached} reached (a modest count: the machine is shared),
evaluation and a checkpoint (+ charts) every {args.every} steps, keep_last 3: {reached // args.every}
evaluations, checkpoints and chart redraws done, {len(samples)} samples, {wall:.0f} s wall.{stop_note}

| | t (s) | step | RSS (MB) | open fds |
|---|---:|---:|---:|---:|
| start (first sample, still importing) | {s["t_s"]:.0f} | {s["step"]} | {s["rss_mb"]:.1f} | {s["fds"]} |
| warm (after the first checkpoint) | {w["t_s"]:.0f} | {w["step"]} | {w["rss_mb"]:.1f} | {w["fds"]} |
| end | {e["t_s"]:.0f} | {e["step"]} | {e["rss_mb"]:.1f} | {e["fds"]} |
| max after warm | | | {summary["rss_max_after_warm_mb"]:.1f} | {summary["fds_max_after_warm"]} |

Change from warm to end: RSS {summary["rss_change_warm_to_end_mb"]:+.1f} MB (heap, RssAnon:
{summary["anon_change_warm_to_end_mb"]:+.1f} MB; mapped files, RssFile:
{summary["file_change_warm_to_end_mb"]:+.1f} MB), open fds
{summary["fds_change_warm_to_end"]:+d}.

Samples along the way:

| t (s) | step | RSS (MB) | RssAnon (MB) | RssFile (MB) | open fds |
|---:|---:|---:|---:|---:|---:|
{table}

Every sample is in `soak.json`.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--every", type=int, default=100, help="eval and checkpoint every N steps")
    p.add_argument("--eval-tokens", type=int, default=131072, help="validation tokens per evaluation")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="more config keys"
    )
    p.add_argument("--minutes", type=float, default=0, help="stop the run after this long (0: no limit)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--data", type=Path, help="a prepared data dir (default: prepare builtin, bpe:4096)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = prepare_data(args.data, Path(scratch))
        cmd = [sys.executable, "-m", "baseforge", "train", "--data", str(data), "--out"]
        cmd += [str(Path(scratch) / "run"), "--preset", "cpu-tiny"]
        for kv in (
            f"max_steps={args.steps}",
            f"eval_every={args.every}",
            f"checkpoint_every={args.every}",
            f"eval_tokens={args.eval_tokens}",
            "keep_last=3",
            *args.overrides,
            "log_every=10",
        ):
            cmd += ["--set", kv]
        samples, wall, stopped = train_and_sample(cmd, args.interval, args.minutes)
    summary = summarise(samples, args.every)
    shown = ["baseforge", *cmd[3:]]
    shown[shown.index("--data") + 1] = str(args.data or "D")  # D: `baseforge prepare builtin --out D`
    shown[shown.index("--out") + 1] = "RUN"
    record = {
        "command": shown,
        "steps": args.steps,
        "every": args.every,
        "wall_s": round(wall, 1),
        "stopped_by_time_limit": stopped,
        "summary": summary,
        "samples": [asdict(s) for s in samples],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "soak.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.results / "soak.md").write_text(markdown(args, ["python", *shown], summary, wall, samples, stopped))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
