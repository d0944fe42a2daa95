"""The report page as a person reads it (#24 Build 7): tables, percent, dashes, wrapped samples, a
titled chart with resumes marked, rendered in a real headless browser where Chromium is installed."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import TINY, assert_clean_error, baseforge

CHROMIUM = Path("/usr/bin/chromium")


def fake_run(tmp_path: Path, *, resumed: list[int] = ()) -> Path:
    """A run dir as a finished run leaves it: config, summary, metrics, sample, saved evaluations."""
    run = tmp_path / "run"
    (run / "evals").mkdir(parents=True)
    config = {"preset": "cpu-tiny", "model": {"n_layer": 4, "n_embd": 128, "n_head": 4}, "train": {}}
    (run / "config.json").write_text(json.dumps(config))
    summary = {"steps": 40, "params": 1332480, "train_seconds": 75.5, "mfu": 0.0322, "final_loss": 3.5}
    (run / "summary.json").write_text(json.dumps(summary))
    rows = [{"step": 0, "tokens": 0, "loss": None, "val_loss": 8.35}]
    for step in range(10, 50, 10):
        rows.append(
            {"step": step, "tokens": step * 2048, "loss": 8.0 - step / 10, "lr": 1e-3, "grad_norm": 1.0,
             "tokens_per_s": 5000.0, "mfu": 0.0322, "peak_rss_gib": 0.6, "elapsed_s": step / 2.0,
             **({"val_loss": 7.0 - step / 20, "hellaswag_acc": 0.25 + step / 1000} if step % 20 == 0 else {})}
        )  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if resumed:
        (run / "resumes.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in resumed))
    long_line = "def main(): " + "x = compute_something_long(argument) + " * 40
    (run / "sample.txt").write_text(long_line + "\n    return x\n")
    hellaswag = [
        {"model": str(run), "acc": 0.2512, "acc_norm": 0.2601, "acc_norm_tok": 0.255, "items": 10042},
        {"model": "gpt2", "acc": 0.2859, "acc_norm": 0.3111, "acc_norm_tok": 0.2955, "items": 10042},
    ]
    harness = [
        {"model": str(run), "hellaswag acc": 0.25, "arc_easy acc": 0.31,
         "stderr": {"hellaswag acc": 0.0043, "arc_easy acc": 0.0095}},
        {"model": "gpt2", "hellaswag acc": 0.2892, "arc_easy acc": 0.4381,
         "stderr": {"hellaswag acc": 0.0045, "arc_easy acc": 0.0102}},
    ]  # fmt: skip
    heldout = [{"model": str(run), "loss": 3.21, "perplexity": 24.8, "tokens": 65536}]
    for name, result in (("hellaswag", hellaswag), ("harness", harness), ("heldout-loss", heldout)):
        (run / "evals" / f"{name}.json").write_text(json.dumps(result))
    return run


def test_evaluations_are_tables_with_the_reference_models_beside_the_run(tmp_path):
    from baseforge.eval.report import build_report

    run = fake_run(tmp_path)
    md_path, html_path = build_report(run)
    page, md = html_path.read_text(), md_path.read_text()
    assert '"acc_norm"' not in page and '"hellaswag acc"' not in page  # no raw JSON
    assert "<h2>HellaSwag</h2>\n<table>" in page and "<h2>lm-evaluation-harness</h2>\n<table>" in page
    assert "<td>gpt2</td>" in page and "(this run)" in page  # side by side
    assert "0.2859" in page and "0.2500 ± 0.0043" in page and "0.4381 ± 0.0102" in page
    assert "| gpt2 | 0.2859 | 0.3111 |" in md
    assert "<h2>Evaluations during training</h2>" in page and "hellaswag_acc" in page


def test_mfu_in_percent_step_0_without_none_and_samples_wrapped(tmp_path):
    from baseforge.eval.report import build_report

    _, html_path = build_report(fake_run(tmp_path))
    page = html_path.read_text()
    assert "3.2%" in page and "0.0322" not in page
    assert "None" not in page
    assert "<td class=num>0</td><td class=num>0</td><td class=num>–</td><td class=num>8.3500</td>" in page
    assert "white-space:pre-wrap" in page and '<pre class="sample">' in page
    assert "1m15s" in page  # train_seconds as a duration
    assert "measured at start" not in page  # no peak source: no caveat


def test_mfu_of_a_measured_peak_says_it_may_read_high(tmp_path):
    from baseforge.eval.report import build_report

    run = fake_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "peak_source": "measured"}))
    page = build_report(run)[1].read_text()
    assert "3.2% (of a peak measured at start: high if the machine was busy)" in page


def test_the_chart_is_titled_by_preset_and_marks_resumes(tmp_path, monkeypatch):
    import baseforge.eval.report as report

    seen = {}
    real = report.chart_png

    def spy(run, title, resumes):
        seen.update(title=title, resumes=resumes)
        return real(run, title, resumes)

    monkeypatch.setattr(report, "chart_png", spy)
    _, html_path = report.build_report(fake_run(tmp_path, resumed=[20]))
    assert seen["title"].startswith("cpu-tiny · 1.33M parameters · 4 layers, 128 wide")
    assert seen["resumes"] == [20]
    page = html_path.read_text()
    assert "Resumed from step 20" in page and "data:image/png;base64," in page
    assert (tmp_path / "run" / "report.png").stat().st_size > 10_000


def test_a_resume_is_recorded_where_the_report_finds_it(shakespeare_dir, tmp_path):
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer
    from baseforge.train.metrics import read_resumes

    run = tmp_path / "run"
    settings = [*TINY, "checkpoint_every=2"]
    Trainer(
        resolve_config("cpu-tiny", None, [*settings, "max_steps=2"]), shakespeare_dir, run, log=print
    ).run()
    assert read_resumes(run) == []
    Trainer(
        resolve_config("cpu-tiny", None, [*settings, "max_steps=4"]),
        shakespeare_dir,
        run,
        resume=True,
        log=print,
    ).run()
    assert read_resumes(run) == [2]
    result = baseforge("report", run)
    assert result.returncode == 0, result.stderr
    assert "Resumed from step 2" in (run / "report.html").read_text()


def test_report_on_a_read_only_run_dir_advises_a_real_out(tmp_path, monkeypatch, capsys):
    from baseforge import fileio
    from baseforge.cli import main

    run = fake_run(tmp_path)
    real = fileio.atomic_path

    def read_only(path):
        if Path(path).parent == run:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path)

    monkeypatch.setattr(fileio, "atomic_path", read_only)
    assert main(["report", str(run)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "read-only" in lines[0] and "--out" in lines[0], lines
    out = tmp_path / "elsewhere"
    assert main(["report", str(run), "--out", str(out)]) == 0  # the advice works: report has --out
    assert (out / "report.html").is_file() and (out / "report.png").is_file()
    assert "![training](report.png)" in (out / "report.md").read_text()
    assert not (run / "report.html").exists()


def test_report_out_that_is_a_file_is_one_line(tmp_path):
    run = fake_run(tmp_path)
    (tmp_path / "a-file").write_text("")
    assert_clean_error(baseforge("report", run, "--out", tmp_path / "a-file"), "is a file")


def screenshot(page: Path, png: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Render `page` in headless Chromium (Debian's /usr/bin/chromium) into `png`."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             f"--screenshot={png}", "--window-size=1200,1600", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_the_page_renders_in_a_headless_browser(tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) for this check"
        )
    from baseforge.eval.report import build_report

    _, html_path = build_report(fake_run(tmp_path, resumed=[20]))
    png = tmp_path / "report.png.screenshot.png"
    result = screenshot(html_path, png)
    assert png.is_file(), result.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page with text, tables and a chart
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 1600)
