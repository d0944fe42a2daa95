"""A CPU rehearsal of the GPU machine: the suite's two calls, --quick, run as that machine would run
them. What travels is what the device tool sends (tracked and untracked-not-ignored files) plus the
folder benchmarks/pack_device.py packs; baseforge is not installed there (a blocker package on
PYTHONPATH stands in for "not installed": only this checkout's src/, put first by the suite itself,
can be imported); ../shared is not beside it; and the network is gone (`unshare -n`, where this
platform allows it). Every part must write its result file to --out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_suite import CALLS  # noqa: E402
from pack_device import trip_files  # noqa: E402

SHARED = ROOT.parent / "shared"
BLOCKER = "raise ImportError('baseforge is not installed on the GPU machine: put src/ on the path')\n"


def no_network() -> list[str]:
    """`unshare -n` where it works here (Linux, as root); else nothing, and the test says so."""
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    ):
        return ["unshare", "-n"]
    print("rehearsal runs WITH network: `unshare -n` is not available here")
    return []


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the rehearsal copies what git would send")
    if not (SHARED / "baselines" / "nanoGPT").is_dir() or not (SHARED / "data" / "gpt2").is_dir():
        pytest.skip(f"{SHARED} (baselines, GPT-2 BPE) not found: nothing to pack")
    base = tmp_path_factory.mktemp("device")
    copy = base / "checkout"
    for path in trip_files(ROOT):
        target = copy / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    packed = subprocess.run(
        [sys.executable, "benchmarks/pack_device.py", "--shared", SHARED, "--dest", copy / ".device"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert packed.returncode == 0, packed.stdout + packed.stderr
    assert packed.stdout.count("command:") == len(CALLS)
    (base / "blocker" / "baseforge").mkdir(parents=True)
    (base / "blocker" / "baseforge" / "__init__.py").write_text(BLOCKER)
    return copy


@pytest.mark.slow  # ~2 min a call: the CPU rehearsal of the device run, before a lease (benchmarks/README.md)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_each_call_brings_back_every_part(bare, call):
    out = bare.parent / f"out{call}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIKTOKEN", "PYTHON", "HF_"))}
    env["PYTHONPATH"] = str(bare.parent / "blocker")
    cmd = [*no_network(), sys.executable, "benchmarks/gpu_suite.py", "--call", str(call), "--quick"]
    cmd += ["--out", str(out)]
    result = subprocess.run(cmd, cwd=bare, capture_output=True, text=True, env=env, timeout=600)
    log = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, log
    assert f"baseforge from {bare / 'src' / 'baseforge'}" in result.stdout, log
    records = {
        json.loads(p.read_text())["part"]: json.loads(p.read_text()) for p in sorted(out.glob("*-*.json"))
    }
    assert list(records) == [p.name for p in CALLS[call]], log
    for name, record in records.items():
        assert record["status"] in ("ok", "skipped"), (name, record)
    assert records["data"]["result"]["tokenizer"] == "gpt2"  # the packed tiktoken cache was found
    assert (out / "gpu-suite.md").is_file() and (out / "gpu-suite.log").is_file()
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back of $OUT
    if call == 1:
        assert list(records)[2] == "flex-smoke"  # right after env and data: do the presets train at all
        smoke = records["flex-smoke"]["result"]["runs"]
        assert set(smoke) == {"gpt2-speedrun", "gpt2-small-modern"}  # compiled twins: GPU only
        assert all(len(r["losses"]) == 3 and r["attention"] for r in smoke.values()), smoke
        assert records["nanogpt"]["result"]["tokens_per_s"] > 0
        assert records["throughput-gpt2-124m"]["result"]["vocab_size"] == 50304
    else:
        assert records["tests"]["result"]["counts"].get("SKIPPED", 0) > 0  # collected, no GPU here
        assert records["llmc"]["status"] == "skipped"  # needs nvcc and a GPU
        assert set(records["quality"]["result"]["recipes"]) == {
            "gpt2-small-seed",
            "gpt2-small-modern",
            "gpt2-speedrun",
        }


def test_quick_results_are_never_merged_as_gpu_figures(tmp_path):
    from gpu_report import merge

    (tmp_path / "10-env.json").write_text(json.dumps({"part": "env", "call": 1, "quick": True}))
    with pytest.raises(SystemExit, match="rehearsals"):
        merge([tmp_path], tmp_path / "results")
