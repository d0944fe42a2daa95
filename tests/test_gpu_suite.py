"""benchmarks/gpu_suite.py --quick: every part's code path on CPU with tiny shapes, so the GPU suite
does not rot between GPU sessions (about 25 s on 2 idle cores, in the default suite, so CI runs it)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT, cli_env


def test_gpu_suite_quick_runs_every_part(tmp_path):
    baselines = next(
        (p for p in (ROOT / ".baselines", ROOT.parent / "shared" / "baselines") if (p / "nanoGPT").is_dir()),
        tmp_path / "none",
    )
    cmd = [sys.executable, "benchmarks/gpu_suite.py", "--quick", "--work", tmp_path, "--baselines", baselines]
    result = subprocess.run(list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True, env=cli_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-quick.json").read_text())
    assert report["tests"]["counts"].get("skipped", 0) > 0 and not report["tests"]["counts"].get("failed")
    assert [t["preset"] for t in report["throughput"]] == ["gpt2-124m", "gpt2-small-seed"]
    assert all(t["tokens_per_s"] > 0 and t["micro_batch"] for t in report["throughput"])
    if baselines.name != "none":
        assert report["baselines"]["nanogpt"]["tokens_per_s"] > 0
        assert report["baselines"]["ratio_vs_nanogpt"] > 0
    assert report["baselines"]["llmc"] is None  # needs nvcc and a GPU
    quality = report["quality"]["recipes"]
    assert set(quality) == {"gpt2-small-seed", "gpt2-small-modern"}
    assert all(q["val_loss_at_equal_tokens"] is not None for q in quality.values())
    assert "QUICK" in (tmp_path / "gpu-quick.md").read_text()
    assert not list((ROOT / "benchmarks" / "results").glob("gpu-cpu*"))  # quick never writes results
