"""One page about a run: config, charts, throughput, losses, evaluations (report.md and report.html).

What the page shows and where it comes from:

    summary          RUN/summary.json (MFU in percent, times as durations, a dash where unknown)
    losses           RUN/metrics.jsonl rows with a validation loss (step 0 has no train loss: a dash)
    during training  metrics columns the run's evaluators added (e.g. hellaswag_acc), by step, each with
                     its standard error (KEY_stderr, logged beside it) as ±, and the item count
    evaluations      RUN/evals/NAME.json, one table each: a row per model, so the reference models
                     a user evaluated with `--save-to RUN` stand beside the run; a row's stderr (lm-eval's,
                     HellaSwag's binomial one) as ±, and the step of the checkpoint evaluated ("at step";
                     results saved before it was recorded have no such column)
    origin           the preset; for a run started with --init-from, the source its model came from
                     (config.json's init_from) beside it, the preset then giving the training settings
    chart            drawn here from metrics.jsonl: titled with the run's preset and model, and a
                     dashed line at every step the run was resumed from (RUN/resumes.jsonl)
    sample, config   RUN/sample.txt (wrapped, not one long line) and RUN/config.json
    left out         each of those files that is not a plain file inside the run dir, or is torn or
                     misshapen (eval/run_files.py reads them): named with why, and said through `log`

Each section is built once, as a `Section` (a title and a `Table`, `Pre` or `Image`), and rendered
twice (eval/page.py): Markdown and HTML, everything read from the run dir escaped in the HTML.
The page is written to the run dir, or to `out` (a folder) when the run dir cannot be written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from baseforge.errors import UserError
from baseforge.eval.page import Image, Page, Pre, Section, Table, render_html, render_markdown
from baseforge.eval.run_files import RunReader
from baseforge.fileio import atomic_write_bytes, atomic_write_text
from baseforge.progress import format_duration
from baseforge.rundir import RunDir
from baseforge.train.charts import chart_png
from baseforge.train.metrics import MetricsRow, read_metrics
from baseforge.train.mfu import format_mfu

DASH = "–"
STDERR = "_stderr"  # an evaluator's KEY_stderr, the standard error of its KEY in the same row
EVAL_TITLES = {"heldout-loss": "Held-out loss", "hellaswag": "HellaSwag", "harness": "lm-evaluation-harness"}


SOURCE_LOSS = "val_loss/"  # a mixture's loss on each source (data/mixture.py), a column of Losses


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
    header = ["model", *("at step" if k == "step" else k for k in keys)]
    rows = []
    for r in result:
        model = str(r.get("model", DASH))
        if _same_path(model, run):
            model += " (this run)"
        stderr = r.get("stderr") if isinstance(r.get("stderr"), dict) else {}
        rows.append([model, *(_fmt_metric(r.get(k), stderr.get(k)) for k in keys)])
    return header, rows


def _mixture_table(sources) -> Table | None:
    """summary.json's "sources" of a mixture as a table: name, path, weight, passes; None if absent or
    not a list of such records (a run dir is untrusted: a malformed entry is shown as a dash)."""
    if not isinstance(sources, list) or not sources:
        return None
    rows = []
    for s in sources[:64]:
        s = s if isinstance(s, dict) else {}
        weight, passes = s.get("weight"), s.get("passes")
        rows.append(
            [
                _fmt(s.get("name")),
                _fmt(s.get("path")),
                f"{weight:.3f}" if _finite(weight) else DASH,
                f"{passes:.2f}" if _finite(passes) else DASH,
            ]
        )
    return Table(["source", "data dir", "weight", "passes over its train split"], rows, right_from=2)


def _finite(value) -> bool:
    """A float from a run dir that formats as one (not a 400-digit JSON integer, not a bool)."""
    return isinstance(value, float) and math.isfinite(value)


def _same_path(spec: str, run: Path) -> bool:
    try:
        return Path(spec).resolve() == run.resolve()
    except (OSError, ValueError, RuntimeError):  # a model name from the file: any text, even a loop
        return False


def _chart_title(run: Path, config: dict, summary: dict) -> str:
    model = config.get("model")
    if not isinstance(model, dict):
        model = {}
    params = summary.get("params")
    parts = [str(config.get("preset", "run"))]
    if isinstance(config.get("init_from"), str):
        parts.append(f"model from {config['init_from']}")
    if isinstance(params, (int, float)):
        parts.append(f"{params / 1e6:.2f}M parameters")
    shape = [f"{model[k]} {label}" for k, label in (("n_layer", "layers"), ("n_embd", "wide")) if k in model]
    if shape:
        parts.append(", ".join(shape))
    return " · ".join(parts) + f"  ({run.resolve().name})"


@dataclass
class _RunFiles:
    """What the report reads from a run dir."""

    config: dict
    summary: dict
    evals: dict
    metrics: list[MetricsRow]
    resumes: list[int]
    sample: str | None
    left_out: list[tuple[str, str]]  # (file, why) for each file not shown


def _read_run(run_dir: RunDir) -> _RunFiles:
    run = run_dir.path
    reader = RunReader(run_dir)  # every file but metrics.jsonl: plain files inside the run dir only
    return _RunFiles(
        config=reader.record(run_dir.config, "run config"),
        summary=reader.record(run_dir.summary, "run summary"),
        evals=reader.evals(),
        metrics=read_metrics(run),
        resumes=reader.resumes(),
        sample=reader.text(run_dir.sample),
        left_out=reader.left_out,
    )


def _training_sections(files: _RunFiles) -> list[Section]:
    """Summary, losses, and the in-training evaluators' columns by step."""
    measured = files.summary.get("peak_source") == "measured"
    summary = {k: v for k, v in files.summary.items() if k != "sources"}
    summary_rows = [[_label(str(k)), _fmt_summary(str(k), v, measured)] for k, v in summary.items()]
    sections = [Section("Summary", Table(["", ""], summary_rows, right_from=2))]
    if mixture := _mixture_table(files.summary.get("sources")):
        sections.append(Section("Data: a mixture", mixture))
    rows = files.metrics
    logged = dict.fromkeys(k for r in rows for k in r.evals)
    per_source = [k for k in logged if k.startswith(SOURCE_LOSS)]
    loss_rows = [
        [
            _fmt(r.step),
            _fmt(r.tokens),
            _fmt_metric(r.loss),
            _fmt_metric(r.val_loss),
            *(_fmt_metric(r.evals.get(k)) for k in per_source),
        ]
        for r in rows
        if r.val_loss is not None
    ]
    if loss_rows:
        head = [
            "step",
            "tokens",
            "train loss",
            "val loss",
            *(f"val: {k[len(SOURCE_LOSS) :]}" for k in per_source),
        ]
        sections.append(Section("Losses", Table(head, loss_rows, 0)))
    extra = [
        k
        for k in logged
        if not (k.endswith(STDERR) and k.removesuffix(STDERR) in logged) and k not in per_source
    ]
    during = [
        [_fmt(r.step), *(_fmt_metric(r.evals.get(k), r.evals.get(k + STDERR)) for k in extra)]
        for r in rows
        if any(k in r.evals for k in extra)
    ]
    if during:
        sections.append(Section("Evaluations during training", Table(["step", *extra], during, 0)))
    return sections


def _sections(run: Path, files: _RunFiles, png: bytes | None, chart_title: str) -> list[Section]:
    sections = _training_sections(files)
    if files.left_out:  # first: a reader should know what the page does not show
        left_out = Table(["file", "left out because"], [list(row) for row in files.left_out], right_from=2)
        sections.insert(0, Section("Left out", left_out))
    for name, result in files.evals.items():
        table = _eval_table(name, result, run)
        body = Table(*table) if table else Pre(json.dumps(result, indent=2), lang="json")
        sections.append(Section(EVAL_TITLES.get(name, name), body))
    if png:
        sections.append(Section("Charts", Image("report.png", png, alt=chart_title, label="training")))
    if files.sample:
        sections.append(Section("Sample", Pre(files.sample, css_class="sample")))
    config = Pre(json.dumps(files.config, indent=2), lang="json", folded="config.json")
    return [*sections, Section("Config", config)]


def build_report(run: Path | str, out: Path | str | None = None, log=None) -> tuple[Path, Path]:
    """Write report.md, report.html and report.png into `out` (default: the run dir); each file left
    out of the page is also said through `log`, one line each."""
    run_dir = RunDir(run)
    run = run_dir.path
    if not (run_dir.config.exists() or run_dir.config.is_symlink()):
        raise UserError(f"{run} is not a run dir (no config.json)")
    out = Path(out) if out is not None else run
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    files = _read_run(run_dir)
    for name, why in files.left_out if log else ():
        log(f"left out {name}: {why}")
    title = _chart_title(run, files.config, files.summary)
    png = chart_png(run, title, files.resumes)
    resumed = ", ".join(f"{s:,}" for s in files.resumes)
    source = files.config.get("init_from")
    page = Page(
        run.resolve().name,
        str(files.config.get("preset", "")),
        source if isinstance(source, str) else "",
        resumed,
        _sections(run, files, png, title),
    )
    for section in page.sections:
        if isinstance(section.body, Image):
            atomic_write_bytes(out / section.body.file, section.body.png)
    atomic_write_text(out / "report.md", render_markdown(page))
    atomic_write_text(out / "report.html", render_html(page))
    return out / "report.md", out / "report.html"
