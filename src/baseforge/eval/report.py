"""One page about a run: config, charts, throughput, losses, evaluations (report.md and report.html)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from baseforge.errors import UserError
from baseforge.fileio import atomic_write_text
from baseforge.train.metrics import read_metrics


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def build_report(run: Path | str) -> tuple[Path, Path]:
    run = Path(run)
    config_file = run / "config.json"
    if not config_file.is_file():
        raise UserError(f"{run} is not a run dir (no config.json)")
    config = json.loads(config_file.read_text())
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    evals = (
        {p.stem: json.loads(p.read_text()) for p in sorted((run / "evals").glob("*.json"))}
        if (run / "evals").is_dir()
        else {}
    )
    rows = read_metrics(run)
    chart = run / "charts" / "training.png"
    sample = (run / "sample.txt").read_text() if (run / "sample.txt").is_file() else None

    md = [
        f"# {run.resolve().name}",
        "",
        f"Preset `{config['preset']}`.",
        "",
        "## Summary",
        "",
        "| | |",
        "|---|---|",
    ]
    md += [f"| {k} | {_fmt(v)} |" for k, v in summary.items()]
    if rows:
        vals = [r for r in rows if r.get("val_loss") is not None]
        md += ["", "## Losses", "", "| step | tokens | train loss | val loss |", "|---:|---:|---:|---:|"]
        md += [
            f"| {r['step']:,} | {r['tokens']:,} | {_fmt(r.get('loss'))} | {_fmt(r['val_loss'])} |"
            for r in vals
        ]
    for name, result in evals.items():
        md += ["", f"## {name}", "", "```json", json.dumps(result, indent=2), "```"]
    if chart.is_file():
        md += ["", "## Charts", "", "![training](charts/training.png)"]
    if sample:
        md += ["", "## Sample", "", "```", sample.strip(), "```"]
    md += ["", "## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    md_text = "\n".join(md)

    # HTML: the same content, self-contained (the chart embedded as base64).
    img = ""
    if chart.is_file():
        png = base64.b64encode(chart.read_bytes()).decode()
        img = f'<img alt="training" src="data:image/png;base64,{png}">'
    table = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items()
    )
    val_rows = "".join(
        f"<tr><td>{html.escape(_fmt(r['step']))}</td><td>{html.escape(_fmt(r['tokens']))}</td>"
        f"<td>{html.escape(_fmt(r.get('loss')))}</td><td>{html.escape(_fmt(r['val_loss']))}</td></tr>"
        for r in rows
        if r.get("val_loss") is not None
    )
    evals_html = "".join(
        f"<h2>{html.escape(n)}</h2><pre>{html.escape(json.dumps(r, indent=2))}</pre>"
        for n, r in evals.items()
    )
    title = html.escape(run.resolve().name)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 10px;text-align:left}}
pre{{background:#f4f4f4;padding:8px;overflow:auto}}img{{max-width:100%}}</style></head><body>
<h1>{title}</h1><p>Preset <code>{html.escape(config["preset"])}</code>.</p>
<h2>Summary</h2><table>{table}</table>
<h2>Losses</h2><table>
<tr><th>step</th><th>tokens</th><th>train loss</th><th>val loss</th></tr>{val_rows}</table>
{evals_html}<h2>Charts</h2>{img}
{"<h2>Sample</h2><pre>" + html.escape(sample) + "</pre>" if sample else ""}
<h2>Config</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre></body></html>
"""
    atomic_write_text(run / "report.md", md_text)
    atomic_write_text(run / "report.html", page)
    return run / "report.md", run / "report.html"


def save_eval(run: Path | str, name: str, result) -> Path:
    """Keep an evaluation's result with a run (RUN/evals/NAME.json), for the report."""
    from baseforge.fileio import atomic_write_json

    path = Path(run) / "evals" / f"{name}.json"
    atomic_write_json(path, result)
    return path
