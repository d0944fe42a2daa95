"""A page of sections (a title and a `Table`, `Pre` or `Image` each), built once and rendered twice:
Markdown (`render_markdown`) and a self-contained HTML file (`render_html`), everything from the run
dir escaped in the HTML."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass

FROM_SOURCE = "(the training settings); the model's shape and first weights from"  # after the preset


@dataclass
class Table:
    header: list[str]  # all blank: the HTML draws no header row
    rows: list[list[str]]
    right_from: int = 1  # columns from this one on hold numbers, aligned right


@dataclass
class Pre:
    """Preformatted text: a fenced block in Markdown (stripped), a <pre> in HTML."""

    text: str
    lang: str = ""  # the Markdown fence's language
    css_class: str = ""  # the HTML <pre>'s class
    folded: str = ""  # HTML: folded away in a <details> with this summary


@dataclass
class Image:
    file: str  # written beside report.md, which links it; the HTML embeds it
    png: bytes
    alt: str  # the HTML's alt text (run-dir text: the Markdown shows `label` instead)
    label: str


@dataclass
class Section:
    title: str
    body: Table | Pre | Image


@dataclass
class Page:
    name: str
    preset: str
    init_from: str  # the source of the model of a run started with --init-from, or ""
    resumed: str  # the steps the run was resumed from ("20, 30"), or ""
    sections: list[Section]


def _ticks(text: str) -> int:
    """The longest run of backticks in `text` (a code span or fence must be longer to hold it)."""
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def _code(text: str) -> str:
    """`text` as an inline code span, whatever backticks it holds (a run dir's name is anyone's)."""
    fence = "`" * (_ticks(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_text(text: str) -> str:
    """Text from a run dir in Markdown: no raw HTML (a renderer would run it), no table breaks."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    cell = _md_text

    align = ["---" if i < table.right_from else "---:" for i in range(len(table.header))]
    return [
        "| " + " | ".join(map(cell, table.header)) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(map(cell, r)) + " |" for r in table.rows),
    ]


def _md_body(body: Table | Pre | Image) -> list[str]:
    if isinstance(body, Table):
        return _md_table(body)
    if isinstance(body, Pre):  # a fence longer than any backtick run in the text
        fence = "`" * max(3, _ticks(body.text) + 1)
        return [fence + body.lang, body.text.strip(), fence]
    return [f"![{body.label}]({body.file})"]


def render_markdown(page: Page) -> str:
    intro = f"Preset {_code(page.preset)}"
    if page.init_from:
        intro += f" {FROM_SOURCE} {_code(page.init_from)}"
    intro += "." + (f" Resumed from step {page.resumed}." if page.resumed else "")
    lines = [f"# {_md_text(page.name)}", "", intro]
    for section in page.sections:
        lines += ["", f"## {section.title}", "", *_md_body(section.body)]
    return "\n".join([*lines, ""])


def _html_table(table: Table) -> str:
    def row(cells: list[str], tag: str) -> str:
        tds = (
            f"<{tag}{' class=num' if i >= table.right_from else ''}>{html.escape(c)}</{tag}>"
            for i, c in enumerate(cells)
        )
        return "<tr>" + "".join(tds) + "</tr>"

    head = row(table.header, "th") if any(table.header) else ""
    return "<table>" + head + "".join(row(r, "td") for r in table.rows) + "</table>"


def _html_body(body: Table | Pre | Image) -> str:
    e = html.escape
    if isinstance(body, Table):
        return _html_table(body)
    if isinstance(body, Pre):
        css = f' class="{e(body.css_class)}"' if body.css_class else ""
        pre = f"<pre{css}>{e(body.text)}</pre>"
        return f"<details><summary>{e(body.folded)}</summary>{pre}</details>" if body.folded else pre
    data = base64.b64encode(body.png).decode()
    return f'<img alt="{e(body.alt)}" src="data:image/png;base64,{data}">'


STYLE = (
    "body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 12px;text-align:left;"
    "border-bottom:1px solid #ddd}th{background:#f4f4f4}td:first-child{color:#555}.num{text-align:right;"
    "font-variant-numeric:tabular-nums}pre{background:#f4f4f4;padding:8px;white-space:pre-wrap;"
    "overflow-wrap:anywhere}img{max-width:100%}"
)


def render_html(page: Page) -> str:
    """The same content as one self-contained page (images embedded as base64); all text escaped."""
    e = html.escape
    parts = [f"<h1>{e(page.name)}</h1>", f"<p>Preset <code>{e(page.preset)}</code>"]
    if page.init_from:
        parts.append(f" {FROM_SOURCE} <code>{e(page.init_from)}</code>")
    parts.append(".")
    if page.resumed:
        parts.append(f" Resumed from step {e(page.resumed)} (dashed lines on the chart).")
    parts.append("</p>")
    for section in page.sections:
        parts += [f"<h2>{e(section.title)}</h2>", _html_body(section.body)]
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{e(page.name)}: {e(page.preset)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
