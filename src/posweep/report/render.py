"""Rendering the report's sections: one self-contained HTML page and a markdown summary.

In: a ``Sweep``, its sections (``report.sections``), the recommendation and the figures as base64 PNG.
Out: ``render_html(...) -> str`` (inline CSS, no script, no network) and ``render_markdown(...) -> str``.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from posweep import analysis
from posweep.analysis import Recommendation, Sweep

if TYPE_CHECKING:  # sections imports this module's formatting
    from posweep.report.sections import Section

LONG_TABLE_ROWS = 30  # longer tables are folded (a <details> element: no script needed)


CSS = """
:root { --ink: #1d2433; --muted: #5b6475; --line: #d9dde5; --soft: #f4f6f9; --accent: #2456a6; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 0 0 6px; padding-top: 8px; }
h3 { font-size: 15px; margin: 16px 0 6px; color: var(--muted); font-weight: 600; }
section { border-top: 1px solid var(--line); padding: 18px 0 8px; }
.lead { color: var(--muted); margin: 0 0 10px; max-width: 900px; }
.banner { background: #fff4d6; border: 1px solid #e8c25a; border-radius: 6px; padding: 10px 14px; margin: 12px 0; }
.evidence { background: #eaf2ff; border-left: 4px solid var(--accent); padding: 10px 14px; border-radius: 4px;
            max-width: 900px; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 10px 0; font-size: 14px; }
.meta dt { color: var(--muted); }
.meta dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
nav { font-size: 14px; margin: 12px 0 4px; line-height: 1.9; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
.table-wrap { overflow-x: auto; margin: 6px 0 12px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; white-space: nowrap; }
th { background: var(--soft); font-weight: 600; }
td.num { text-align: right; }
tbody tr:nth-child(even) { background: #fafbfc; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 6px 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
details { margin: 10px 0; }
summary { cursor: pointer; color: var(--accent); font-weight: 600; font-size: 14px; }
ul.notes { color: var(--muted); font-size: 13px; margin: 6px 0; padding-left: 20px; }
p.prompts { font-size: 13px; color: var(--muted); margin: 0 0 8px; }
"""


def render_html(sweep: Sweep, sections: list[Section], recommendation: Recommendation | None,
                images: dict[str, str]) -> str:
    """The whole page as one string; ``images`` maps figure names to base64 PNG."""
    e = html.escape
    info = sweep.info
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>posweep report: {e(sweep.root.resolve().name)}</title>", f"<style>{CSS}</style></head>",
             "<body><main>", f"<h1>posweep report: {e(sweep.root.resolve().name)}</h1>"]
    if info.get("judge_is_stand_in"):
        parts.append(f'<div class="banner" id="stand-in-banner"><strong>Demo judge.</strong> {e(_stand_in_text(info))}</div>')
    if not sweep.has_split:
        parts.append(f'<div class="banner" id="shared-prompts-banner"><strong>No held-out prompts.</strong> '
                     f'{e(sweep.prompts_note)}</div>')
    parts.append('<dl class="meta">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _facts(sweep)) + "</dl>")
    parts.append("<nav>" + "\n".join(f'<a href="#{s.id}">{e(s.title)}</a>' for s in sections) + "</nav>")
    for section in sections:
        parts.append(f'<section id="{section.id}"><h2>{e(section.title)}</h2><p class="lead">{e(section.description)}</p>')
        if section.prompts:
            parts.append(f'<p class="prompts"><strong>Prompts:</strong> {e(section.prompts)}</p>')
        if section.text:
            css_class = "evidence" if section.id == "recommendation" and recommendation else "lead"
            parts.append(f'<p class="{css_class}">{e(section.text)}</p>')
        if section.figures:
            parts.append('<div class="figures">')
            for name in section.figures:
                parts.append(f'<figure><img id="fig-{e(name)}" alt="{e(name)}" '
                             f'src="data:image/png;base64,{images[name]}"></figure>')
            parts.append("</div>")
        for caption, table in section.shown:
            if len(table) > LONG_TABLE_ROWS:
                parts.append(f"<details><summary>{e(caption or 'Table')} ({len(table)} rows)</summary>"
                             f'<div class="table-wrap">{_html_table(table)}</div></details>')
                continue
            if caption:
                parts.append(f"<h3>{e(caption)}</h3>")
            parts.append(f'<div class="table-wrap">{_html_table(table)}</div>')
        if section.id == "missing" and not section.notes:
            parts.append('<p class="lead">Nothing is missing: every planned run finished with its files.</p>')
        elif section.notes:
            parts.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in section.notes) + "</ul>")
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(sweep: Sweep, sections: list[Section], recommendation: Recommendation | None) -> str:
    """summary.md: the facts, the recommendation, every shown table in markdown, and the notes."""
    lines = [f"# posweep report: {sweep.root.resolve().name}", ""]
    if sweep.info.get("judge_is_stand_in"):
        lines += [f"> **Demo judge.** {_stand_in_text(sweep.info)}", ""]
    if not sweep.has_split:
        lines += [f"> **No held-out prompts.** {sweep.prompts_note}", ""]
    lines += [f"- {key}: `{value}`" for key, value in _facts(sweep)] + [""]
    for section in sections:
        lines += [f"## {section.title}", "", section.description, ""]
        if section.prompts:
            lines += [f"*Prompts:* {section.prompts}", ""]
        if section.text:
            lines += [section.text, ""]
        if section.id == "recommendation" and recommendation is not None:
            lines += [f"- method: `{recommendation.method}`",
                      f"- hyperparameters: `{analysis.hparam_text(recommendation.hparams, list(recommendation.hparams))}`",
                      f"- runs: {', '.join(recommendation.run_ids)}", ""]
        for caption, table in section.shown:
            if caption:
                lines += [f"**{caption}**", ""]
            lines += [_markdown_table(table), ""]
        lines += [f"- {note}" for note in section.notes] + ([""] if section.notes else [])
    return "\n".join(lines)


def _stand_in_text(info: dict) -> str:
    return (f"Scores come from the demo judge ({info.get('judge', 'demo')}), a transparent stand-in for a neural "
            "reward model (a documented composite of small offline scorers, not a trained reward model). Compare "
            "methods with each other; do not compare these numbers with the paper's.")


def _facts(sweep: Sweep) -> list[tuple[str, str]]:
    info = sweep.info
    counts = sweep.runs["status"].value_counts()
    facts = [("model", info.get("model")), ("judge", info.get("judge")), ("train data", info.get("train_data")),
             ("test prompts", info.get("test_prompts")),
             ("SFT run", f"{info.get('sft_run_id')} (mean score {format_value(sweep.sft_score)})"),
             ("prompts", sweep.prompts_note), ("sampling backend", info.get("sampling_backend")),
             ("runs", ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "failed", "running", "pending"))),
             ("methods", ", ".join(sweep.methods) or "none finished")]
    return [(key, _describe(value)) for key, value in facts if value is not None]


def _describe(value) -> str:
    """A fact for the page header: dicts (data specs) as ``key=value`` pairs, at most 160 characters."""
    if isinstance(value, dict):
        value = ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, "", [], {}))
    text = str(value)
    return text if len(text) <= 160 else text[:157] + "..."


def format_value(value) -> str:
    """A table cell as text: yes/no, integers, 4 significant digits, – for NaN."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "–"
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _html_table(table: pd.DataFrame) -> str:
    named_index = has_named_index(table)
    header = ([html.escape(str(table.index.name))] if named_index else []) + [html.escape(str(c)) for c in table.columns]
    rows = []
    for label, values in zip(table.index, table.itertuples(index=False)):
        cells = ([f"<th>{html.escape(str(label))}</th>"] if named_index else []) + [
            _html_cell(format_value(v)) for v in values]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if not rows:
        return '<p class="lead">(empty)</p>'
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _html_cell(text: str) -> str:
    # Numbers (and "0.65 [0.6, 0.7]", "–") right-aligned so digits line up; names and settings left.
    numeric = bool(text) and (text[0].isdigit() or text[0] in "-+–")
    return f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>"


def _markdown_table(table: pd.DataFrame) -> str:
    if not len(table):
        return "(empty)"
    named_index = has_named_index(table)
    header = ([str(table.index.name)] if named_index else []) + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values in zip(table.index, table.itertuples(index=False)):
        cells = ([str(label)] if named_index else []) + [format_value(v).replace("|", "\\|") for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def has_named_index(table: pd.DataFrame) -> bool:
    """Tables whose index carries meaning (T3's ``row beats column``) keep it in CSV, HTML and markdown."""
    return table.index.name is not None
