"""What verifying a checkpoint's checksum costs (train/checkpoint/integrity.py), per GB of tensor file.

Usage:
    python benchmarks/bench_checksum.py            # a 1 GiB safetensors file in a temporary folder
    python benchmarks/bench_checksum.py --gib 4 --repeat 5

Writes a safetensors file of random fp32 tensors and records its checksum as a checkpoint does, then times
(median of --repeat) verifying it and, for scale, loading it with the NaN/inf check (load_file maps the
file; integrity.check_finite reads every value). Both read from the page cache: the file was just
written, as it is when a run resumes or samples on the machine that trained it; a cold read adds the
disk's time to both. Also prints the rate of each hash hashlib offers here, for the choice of
sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from baseforge.train.checkpoint import integrity


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hash_rates(mib: int = 256) -> dict[str, float]:
    """GB/s of each candidate hash over `mib` MiB in memory (no file)."""
    data = os.urandom(mib << 20)
    rates = {}
    for name in ("sha256", "sha1", "blake2b", "md5"):
        seconds = timed(lambda name=name: hashlib.new(name, data).digest(), 3)
        rates[name] = (mib << 20) / seconds / 1e9
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gib", type=float, default=1.0, help="size of the tensor file (default 1 GiB)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        n = int(args.gib * (1 << 30)) // 4 // 16
        save_file({f"w{i}": torch.randn(n) for i in range(16)}, str(ckpt / "model.safetensors"))
        size = (ckpt / "model.safetensors").stat().st_size
        files = integrity.record_files(ckpt, ["model.safetensors"])
        (ckpt / "state.json").write_text(json.dumps({"files": files}))
        verify = timed(lambda: integrity.verify(ckpt / "state.json", ["model.safetensors"]), args.repeat)
        finite = timed(
            lambda: integrity.check_finite(ckpt, load_file(str(ckpt / "model.safetensors"))), args.repeat
        )
    gb = size / 1e9
    print(f"file: {size:,} bytes ({gb:.2f} GB), {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"verify (sha256): {verify:.3f} s = {verify / gb:.2f} s per GB")
    print(f"load + finite:   {finite:.3f} s = {finite / gb:.2f} s per GB (reading it, and the NaN/inf check)")
    print("hashlib in memory, GB/s: " + ", ".join(f"{k} {v:.2f}" for k, v in hash_rates().items()))


if __name__ == "__main__":
    main()
