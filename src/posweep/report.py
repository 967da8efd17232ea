"""The sweep report: one self-contained HTML page, a markdown summary, one CSV per table, PNG figures.

In: a sweep folder (docs/ARCHITECTURE.md). Out, under ``DIR/report/``: ``index.html`` (figures embedded
as base64 PNG, inline CSS, no script, no network needed to view it), ``summary.md`` (the tables in
markdown and the recommendation), ``recommendation.json`` (``Recommendation.to_dict()``, or null), one CSV
per table (``t1_best_runs.csv``, ...) and ``figures/*.png``.
``write_report(sweep_dir)`` returns the path of index.html. Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io as bytes_io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from posweep import analysis
from posweep import io as atomic_io
from posweep.analysis import Recommendation, Sweep, figures, search, tables
from posweep.metrics import METRIC_NAMES

FIGURE_DPI = 110
EXPECTED_MAX_COLUMNS = (1, 2, 3, 5, 10, 20)  # budgets shown in the page's expected-max table
LONG_TABLE_ROWS = 30  # longer tables are folded (a <details> element: no script needed)


@dataclass
class Section:
    """One part of the report: ``tables`` go to CSV (by name), ``shown`` to the page (caption, table)."""

    id: str
    title: str
    description: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    shown: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    text: str = ""  # extra paragraph (plain text, escaped when rendered)


def write_report(sweep_dir: str | Path) -> Path:
    """Run every analysis on the sweep folder and write ``DIR/report/``; returns the path of index.html."""
    sweep = analysis.load_sweep(sweep_dir)
    out = Path(sweep_dir) / "report"
    recommendation = analysis.recommend(sweep)
    sections = build_sections(sweep, recommendation)
    # Notes gathered last: loading samples during the analyses adds to sweep.notes.
    missing = Section("missing", "What is missing", "Runs, files and analyses this sweep does not (yet) have.",
                      notes=_unique(sweep.notes + [f"{s.title}: {n}" for s in sections for n in s.notes]))
    sections.append(missing)

    written: set[Path] = set()
    images: dict[str, str] = {}
    for section in sections:
        for name, table in section.tables.items():
            path = out / f"{name}.csv"
            atomic_io.write_atomic_text(table.to_csv(index=_has_named_index(table)), path)
            written.add(path)
        for name, figure in section.figures.items():
            png = _png(figure)
            path = out / "figures" / f"{name}.png"
            atomic_io.write_atomic_bytes(png, path)
            written.add(path)
            images[name] = base64.b64encode(png).decode("ascii")
    _remove_stale(out, written)

    index = out / "index.html"
    atomic_io.write_atomic_text(render_html(sweep, sections, recommendation, images), index)
    atomic_io.write_atomic_text(render_markdown(sweep, sections, recommendation), out / "summary.md")
    atomic_io.write_atomic_json(recommendation.to_dict() if recommendation else None, out / "recommendation.json")
    return index


# ------------------------------------------------------------------------------------------------ sections


def build_sections(sweep: Sweep, recommendation: Recommendation | None) -> list[Section]:
    """Every analysis of posweep.analysis, as report sections, in reading order."""
    sections = [_recommendation_section(sweep, recommendation)]

    best = tables.best_runs(sweep)
    metric_columns = ["method"] + [c for m in METRIC_NAMES for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
    changes = best.table[["method"] + [f"{m}_vs_dpo_pct" for m in METRIC_NAMES]]
    changes = changes.rename(columns={f"{m}_vs_dpo_pct": m for m in METRIC_NAMES})
    sections.append(Section(
        "t1-best-runs", "T1 · Best run per method",
        "The best run of each method by mean score, every metric with its 95% bootstrap interval, and the "
        "% change of each metric against DPO's best run (SFT first, for reference).",
        tables={"t1_best_runs": best.table},
        shown=[("Best runs", best.table[["method", "run_id", "n_runs", "hparams"]]),
               ("Metrics [95% interval]", _with_intervals(best.table[metric_columns])),
               ("% change against DPO's best run", changes)],
        notes=best.notes))

    distribution = tables.score_distribution(sweep)
    sections.append(Section(
        "f1-score-distribution", "F1 · Score over each method's grid",
        "How the mean score spreads over each method's hyperparameter grid (one dot per run; the dashed line "
        "is the SFT model), and the share of runs that end up below SFT.",
        tables={"f1_score_distribution": distribution.table}, shown=[("", distribution.table)],
        figures=_figures("f1_score_distribution", figures.score_distribution(distribution.table, sweep)),
        notes=distribution.notes))

    best_h2h, p75_h2h = tables.head_to_head(sweep, "best"), tables.head_to_head(sweep, "p75")
    sections.append(Section(
        "t3-head-to-head", "T3 · Head-to-head win rates",
        "Per-prompt win rate of the row method's run against the column method's run (ties count ½), for each "
        "method's best run and its 75th-percentile run (the run that beats about 75% of the method's other "
        "runs). A method whose rate drops sharply from best to 75th percentile needs a lucky search.",
        tables={"t3_head_to_head_best": best_h2h.table, "t3_head_to_head_p75": p75_h2h.table},
        shown=[("Best runs", best_h2h.table), ("75th-percentile runs", p75_h2h.table)],
        figures={**_figures("t3_head_to_head_best", figures.head_to_head(best_h2h.table, "best")),
                 **_figures("t3_head_to_head_p75", figures.head_to_head(p75_h2h.table, "p75"))},
        notes=best_h2h.notes + p75_h2h.notes))

    for section_id, title, metric, what in [
            ("f2-length", "F2 · Response length", "length", "the response length"),
            ("f3-kl", "F3 · KL from SFT", "kl", "the sequence-level KL from the SFT model"),
            ("f9-ln-kl", "F9 · Length-normalized KL", "ln_kl", "the per-token (length-normalized) KL")]:
        result = tables.sample_distributions(sweep, metric)
        name = section_id.replace("-", "_")
        sections.append(Section(
            section_id, title,
            f"The distribution over samples of {what} for each method's top 1%, 10% and 25% runs by mean score "
            "(at least one run each; the table says how many). Curves to the left mean smaller values.",
            tables={name: result.table}, shown=[("", result.table.drop(columns=["run_ids"]))],
            figures=_figures(name, figures.sample_distributions(result.table, sweep, metric)), notes=result.notes))

    pairs = tables.sensitivity_params(sweep)
    results = {pair: tables.sensitivity(sweep, *pair) for pair in pairs}
    sensitivity_table = pd.concat([r.table for r in results.values()], ignore_index=True) if results else \
        pd.DataFrame(columns=["method", "param", "value", "n_runs", "mean", "min", "max", "std"])
    sections.append(Section(
        "f4-f7-sensitivity", "F4–F7 · Sensitivity to hyperparameters",
        "Mean score against one hyperparameter at a time (each method's own, and the learning rate): the line "
        "is the mean over the other hyperparameters, the band their min–max. A flat, narrow band is robust.",
        tables={"f4_f7_sensitivity": sensitivity_table}, shown=[("", sensitivity_table)],
        figures={f"sensitivity_{m}_{p}": figure for (m, p), r in results.items()
                 if (figure := figures.sensitivity(r.table, sweep)) is not None},
        notes=[n for r in results.values() for n in r.notes]
        + ([] if pairs else ["no hyperparameter of any method was tried with two values or more"])))

    kl_score = tables.kl_vs_score(sweep)
    sections.append(Section(
        "f8-kl-vs-score", "F8 · Divergence against score",
        "Each run's mean length-normalized KL from SFT against its mean score: how far a method moves from "
        "SFT to reach a score. One point per run (the per-run numbers are in f8_kl_vs_score.csv).",
        tables={"f8_kl_vs_score": kl_score.table},
        figures=_figures("f8_kl_vs_score", figures.kl_vs_score(kl_score.table, sweep)),
        notes=kl_score.notes))

    expected = search.expected_max_curve(sweep)
    sections.append(Section(
        "expected-max", "Expected best score against search budget",
        "The expected best mean score (± std) when n hyperparameter settings are tried at random, without "
        "replacement, from each method's grid (Dodge et al. 2019, 'expected validation performance'). A curve "
        "that starts high needs little search.",
        tables={"expected_max": expected.table}, shown=[("Expected best mean score", _expected_max_wide(expected.table))],
        figures=_figures("expected_max", figures.expected_max_curve(expected.table, sweep)), notes=expected.notes))

    seeds = search.seed_intervals(sweep)
    sections.append(Section(
        "seed-intervals", "Seed variation",
        "Settings run with several seeds: the mean score across seeds and its 95% t-interval. Differences "
        "between methods smaller than these intervals are noise.",
        tables={"seed_intervals": seeds.table},
        shown=[("", seeds.table.drop(columns=["run_ids"]))] if len(seeds.table) else [],
        figures=_figures("seed_intervals", figures.seed_intervals(seeds.table, sweep)), notes=seeds.notes))

    collapse = search.collapse_flags(sweep)
    limits = search.CollapseThresholds()
    flagged = collapse.table[collapse.table["flagged"]]
    sections.append(Section(
        "collapse", "Collapse detection",
        f"Runs whose samples are too often empty (> {limits.empty_share:.0%}), repetitive (> "
        f"{limits.repetitive_share:.0%} of samples repeat at least {limits.repeated_ngram_share:.0%} of their word "
        f"{limits.ngram}-grams) or truncated at the token limit (> {limits.truncated_share:.0%}). "
        "Every finished run's shares are in collapse_flags.csv.",
        tables={"collapse_flags": collapse.table},
        shown=[(f"{len(flagged)} of {len(collapse.table)} finished run(s) flagged", flagged)] if len(flagged) else [],
        text="" if len(flagged) else f"No run is flagged ({len(collapse.table)} finished run(s) checked).",
        notes=collapse.notes))
    return sections


def _recommendation_section(sweep: Sweep, recommendation: Recommendation | None) -> Section:
    table = analysis.neighbourhoods(sweep).table
    section = Section(
        "recommendation", "Recommendation",
        "The method and hyperparameters to start from, chosen for robustness: each setting is scored by the mean "
        "of its own score and its grid neighbours' (settings one grid step away in one hyperparameter), so a "
        "good region beats one lucky run.",
        tables={"neighbourhoods": table},
        shown=[("Best neighbourhoods (top 10; every setting in neighbourhoods.csv)",
                table[["method", "hparams", "score", "n_neighbours", "n_planned_neighbours", "neighbourhood_mean",
                       "neighbourhood_min"]].head(10).rename(columns={
                           "n_neighbours": "neighbours", "n_planned_neighbours": "of planned",
                           "neighbourhood_mean": "neighbourhood mean", "neighbourhood_min": "worst"}))])
    if recommendation is None:
        section.text = "No recommendation: no preference-optimization run finished."
        section.notes.append("no finished run to recommend")
    else:
        section.text = recommendation.evidence
    return section


def _figures(name: str, figure: Figure | None) -> dict[str, Figure]:
    return {name: figure} if figure is not None else {}


def _with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """Fold ``x``, ``x_ci_low``, ``x_ci_high`` columns into one text column ``x [low, high]`` for display."""
    shown = table.copy()
    for column in list(shown.columns):
        low, high = f"{column}_ci_low", f"{column}_ci_high"
        if low in shown.columns and high in shown.columns:
            shown[column] = [f"{_format(v)} [{_format(lo)}, {_format(hi)}]" if pd.notna(lo) else _format(v)
                             for v, lo, hi in zip(shown[column], shown[low], shown[high])]
            shown = shown.drop(columns=[low, high])
    return shown


def _expected_max_wide(table: pd.DataFrame) -> pd.DataFrame:
    """Methods as rows, a few budgets n as columns (``mean ± std``), and the whole grid (the best run)."""
    if not len(table):
        return table
    budgets = [n for n in EXPECTED_MAX_COLUMNS if n < table["n_trials"].max()]
    rows = []
    for method in analysis.method_order(table["method"]):
        curve = table[table["method"] == method].set_index("n_trials")
        row = {"method": method}
        for n in budgets:
            row[f"n={n}"] = f"{curve.loc[n, 'expected_max']:.3f} ± {curve.loc[n, 'std']:.3f}" if n in curve.index else ""
        row["all settings"] = f"{curve['expected_max'].iloc[-1]:.3f} (n={int(curve.index[-1])})"
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ rendering

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
    parts.append('<dl class="meta">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _facts(sweep)) + "</dl>")
    parts.append("<nav>" + "\n".join(f'<a href="#{s.id}">{e(s.title)}</a>' for s in sections) + "</nav>")
    for section in sections:
        parts.append(f'<section id="{section.id}"><h2>{e(section.title)}</h2><p class="lead">{e(section.description)}</p>')
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
    lines += [f"- {key}: `{value}`" for key, value in _facts(sweep)] + [""]
    for section in sections:
        lines += [f"## {section.title}", "", section.description, ""]
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
             ("SFT run", f"{info.get('sft_run_id')} (mean score {_format(sweep.sft_score)})"),
             ("runs", ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "failed", "running", "pending"))),
             ("methods", ", ".join(sweep.methods) or "none finished")]
    return [(key, _describe(value)) for key, value in facts if value is not None]


def _describe(value) -> str:
    """A fact for the page header: dicts (data specs) as ``key=value`` pairs, at most 160 characters."""
    if isinstance(value, dict):
        value = ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, "", [], {}))
    text = str(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _format(value) -> str:
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
    named_index = _has_named_index(table)
    header = ([html.escape(str(table.index.name))] if named_index else []) + [html.escape(str(c)) for c in table.columns]
    rows = []
    for label, values in zip(table.index, table.itertuples(index=False)):
        cells = ([f"<th>{html.escape(str(label))}</th>"] if named_index else []) + [
            _html_cell(_format(v)) for v in values]
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
    named_index = _has_named_index(table)
    header = ([str(table.index.name)] if named_index else []) + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values in zip(table.index, table.itertuples(index=False)):
        cells = ([str(label)] if named_index else []) + [_format(v).replace("|", "\\|") for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _has_named_index(table: pd.DataFrame) -> bool:
    return table.index.name is not None


def _png(figure: Figure) -> bytes:
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def _remove_stale(out: Path, written: set[Path]) -> None:
    """Drop CSVs and PNGs an earlier report wrote that this one did not (e.g. a method since removed)."""
    for path in list(out.glob("*.csv")) + list((out / "figures").glob("*.png")):
        if path not in written:
            path.unlink()


def _unique(notes: list[str]) -> list[str]:
    return list(dict.fromkeys(notes))
