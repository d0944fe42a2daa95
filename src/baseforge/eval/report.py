"""One page about a run: config, charts, throughput, losses, evaluations (report.md and report.html).

What the page shows and where it comes from:

    summary          RUN/summary.json (MFU in percent, times as durations, a dash where unknown)
    losses           RUN/metrics.jsonl rows with a validation loss (step 0 has no train loss: a dash)
    during training  metrics columns the run's evaluators added (e.g. hellaswag_acc), by step
    evaluations      RUN/evals/NAME.json, one table each: a row per model, so the reference models
                     a user evaluated with `--save-to RUN` stand beside the run (lm-eval's stderr as ±)
    chart            drawn here from metrics.jsonl: titled with the run's preset and model, and a
                     dashed line at every step the run was resumed from (RUN/resumes.jsonl)
    sample, config   RUN/sample.txt (wrapped, not one long line) and RUN/config.json

Everything read from the run dir is escaped in the HTML. The page is written to the run dir, or to
`out` (a folder) when the run dir cannot be written.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from baseforge.errors import UserError
from baseforge.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from baseforge.progress import format_duration
from baseforge.rundir import RunDir
from baseforge.train.charts import chart_png
from baseforge.train.metrics import read_metrics, read_resumes
from baseforge.train.mfu import format_mfu

DASH = "–"
# metrics.jsonl columns every run writes: anything else on a row came from an in-training evaluator
STANDARD = {
    "step", "tokens", "loss", "val_loss", "lr", "grad_norm", "clip_frac", "skipped",
    "tokens_per_s", "mfu", "peak_alloc_gib", "peak_reserved_gib", "peak_rss_gib", "elapsed_s",
}  # fmt: skip
EVAL_TITLES = {"heldout-loss": "Held-out loss", "hellaswag": "HellaSwag", "harness": "lm-evaluation-harness"}


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


LABELS = {
    "train_seconds": "train time",
    "tokens_per_s": "tokens/s",
    "mfu": "MFU",
    "clip_frac": "clipped steps",
}


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def _fmt_summary(key: str, value, measured_peak: bool = False) -> str:
    if key == "mfu" and isinstance(value, (int, float)):
        mfu = format_mfu(value)
        if mfu and measured_peak:  # a busy machine times the peak low, and MFU reads high
            mfu += " (of a peak measured at start: high if the machine was busy)"
        return mfu or DASH
    if key == "clip_frac" and isinstance(value, (int, float)):
        return f"{100 * value:.1f}%"
    if key.endswith("_seconds") and isinstance(value, (int, float)):
        return format_duration(value)
    if key == "tokens_per_s" and isinstance(value, (int, float)):
        return f"{value:,.0f}"
    if key.endswith("loss") and isinstance(value, float):
        return f"{value:.4f}"
    return _fmt(value)


def _fmt_metric(value, stderr=None) -> str:
    if isinstance(value, float) and not math.isnan(value) and abs(value) < 1000:
        text = f"{value:.4f}"
        if isinstance(stderr, (int, float)) and not math.isnan(stderr):
            text += f" ± {stderr:.4f}"
        return text
    return _fmt(value)


def _eval_table(name: str, result, run: Path) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) for a saved evaluation: a list of per-model dicts; None for another shape."""
    if not isinstance(result, list) or not result or not all(isinstance(r, dict) for r in result):
        return None
    keys = [k for k in dict.fromkeys(k for r in result for k in r) if k not in ("model", "stderr")]
    header = ["model", *keys]
    rows = []
    for r in result:
        model = str(r.get("model", DASH))
        if _same_path(model, run):
            model += " (this run)"
        stderr = r.get("stderr") if isinstance(r.get("stderr"), dict) else {}
        rows.append([model, *(_fmt_metric(r.get(k), stderr.get(k)) for k in keys)])
    return header, rows


def _same_path(spec: str, run: Path) -> bool:
    try:
        return Path(spec).resolve() == run.resolve()
    except (OSError, ValueError):
        return False


def _chart_title(run: Path, config: dict, summary: dict) -> str:
    model = config.get("model")
    if not isinstance(model, dict):
        model = {}
    params = summary.get("params")
    parts = [str(config.get("preset", "run"))]
    if isinstance(params, (int, float)):
        parts.append(f"{params / 1e6:.2f}M parameters")
    shape = [f"{model[k]} {label}" for k, label in (("n_layer", "layers"), ("n_embd", "wide")) if k in model]
    if shape:
        parts.append(", ".join(shape))
    return " · ".join(parts) + f"  ({run.resolve().name})"


def _md_table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return [
        "| " + " | ".join(map(cell, header)) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(map(cell, r)) + " |" for r in rows),
    ]


def _html_table(header: list[str] | None, rows: list[list[str]], right_from: int = 1) -> str:
    def row(cells: list[str], tag: str) -> str:
        tds = (
            f"<{tag}{' class=num' if i >= right_from else ''}>{html.escape(c)}</{tag}>"
            for i, c in enumerate(cells)
        )
        return "<tr>" + "".join(tds) + "</tr>"

    head = row(header, "th") if header else ""
    return "<table>" + head + "".join(row(r, "td") for r in rows) + "</table>"


def build_report(run: Path | str, out: Path | str | None = None) -> tuple[Path, Path]:
    """Write report.md, report.html and report.png into `out` (default: the run dir)."""
    run_dir = RunDir(run)
    run = run_dir.path
    config_file = run_dir.config
    if not config_file.is_file():
        raise UserError(f"{run} is not a run dir (no config.json)")
    out = Path(out) if out is not None else run
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    config = json.loads(config_file.read_text())
    summary = json.loads(run_dir.summary.read_text()) if run_dir.summary.is_file() else {}
    evals = (
        {p.stem: json.loads(p.read_text()) for p in sorted((run / "evals").glob("*.json"))}
        if (run / "evals").is_dir()
        else {}
    )
    rows = read_metrics(run)
    resumes = read_resumes(run)
    sample = run_dir.sample.read_text() if run_dir.sample.is_file() else None
    name = run.resolve().name
    preset = str(config.get("preset", ""))
    title = _chart_title(run, config, summary)
    png = chart_png(run, title, resumes)

    measured = summary.get("peak_source") == "measured"
    summary_rows = [[_label(str(k)), _fmt_summary(str(k), v, measured)] for k, v in summary.items()]
    loss_rows = [
        [
            _fmt(r.get("step")),
            _fmt(r.get("tokens")),
            _fmt_metric(r.get("loss")),
            _fmt_metric(r.get("val_loss")),
        ]
        for r in rows
        if r.get("val_loss") is not None
    ]
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in STANDARD]
    during = [
        [_fmt(r.get("step")), *(_fmt_metric(r.get(k)) for k in extra)]
        for r in rows
        if any(k in r for k in extra)
    ]
    tables = {n: _eval_table(n, result, run) for n, result in evals.items()}
    resumed = ", ".join(f"{s:,}" for s in resumes)

    # Markdown
    md = [f"# {name}", "", f"Preset `{preset}`." + (f" Resumed from step {resumed}." if resumes else ""), ""]
    md += ["## Summary", "", *_md_table(["", ""], summary_rows, right_from=2)]
    if loss_rows:
        md += ["", "## Losses", "", *_md_table(["step", "tokens", "train loss", "val loss"], loss_rows, 0)]
    if during:
        md += ["", "## Evaluations during training", "", *_md_table(["step", *extra], during, 0)]
    for n, result in evals.items():
        md += ["", f"## {EVAL_TITLES.get(n, n)}", ""]
        table = tables[n]
        md += _md_table(*table) if table else ["```json", json.dumps(result, indent=2), "```"]
    if png:
        md += ["", "## Charts", "", "![training](report.png)"]
    if sample:
        md += ["", "## Sample", "", "```", sample.strip(), "```"]
    md += ["", "## Config", "", "```json", json.dumps(config, indent=2), "```", ""]

    # HTML: the same content, self-contained (the chart embedded as base64).
    e = html.escape
    parts = [f"<h1>{e(name)}</h1>", f"<p>Preset <code>{e(preset)}</code>."]
    if resumes:
        parts.append(f" Resumed from step {e(resumed)} (dashed lines on the chart).")
    parts += ["</p>", "<h2>Summary</h2>", _html_table(None, summary_rows, right_from=2)]
    if loss_rows:
        parts += ["<h2>Losses</h2>", _html_table(["step", "tokens", "train loss", "val loss"], loss_rows, 0)]
    if during:
        parts += ["<h2>Evaluations during training</h2>", _html_table(["step", *extra], during, 0)]
    for n, result in evals.items():
        parts.append(f"<h2>{e(EVAL_TITLES.get(n, n))}</h2>")
        table = tables[n]
        parts.append(_html_table(*table) if table else f"<pre>{e(json.dumps(result, indent=2))}</pre>")
    if png:
        data = base64.b64encode(png).decode()
        parts += ["<h2>Charts</h2>", f'<img alt="{e(title)}" src="data:image/png;base64,{data}">']
    if sample:
        parts += ["<h2>Sample</h2>", f'<pre class="sample">{e(sample)}</pre>']
    parts += [
        "<h2>Config</h2>",
        f"<details><summary>config.json</summary><pre>{e(json.dumps(config, indent=2))}</pre></details>",
    ]
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 12px;text-align:left;"
        "border-bottom:1px solid #ddd}th{background:#f4f4f4}td:first-child{color:#555}.num{text-align:right;"
        "font-variant-numeric:tabular-nums}pre{background:#f4f4f4;padding:8px;white-space:pre-wrap;"
        "overflow-wrap:anywhere}img{max-width:100%}"
    )
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{e(name)}: {e(preset)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    if png:
        atomic_write_bytes(out / "report.png", png)
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_text(out / "report.html", page)
    return out / "report.md", out / "report.html"


def save_eval(run: Path | str, name: str, result) -> Path:
    """Keep an evaluation's result with a run (RUN/evals/NAME.json), for the report."""
    path = Path(run) / "evals" / f"{name}.json"
    atomic_write_json(path, result)
    return path
