"""The sweep report: one self-contained HTML page, a markdown summary, one CSV per table, PNG figures.

In: a sweep folder (docs/ARCHITECTURE.md). Out: under ``DIR/report/``, ``index.html`` (figures embedded
as base64 PNG, inline CSS, no script, no network needed to view it), ``summary.md`` (the tables in
markdown and the recommendation), ``recommendation.json`` (``Recommendation.to_dict()``, or null), one CSV
per table (``t1_best_runs.csv``, ...) and ``figures/*.png``.
``write_report(sweep_dir)`` returns the path of index.html. Every file is written atomically.

- ``sections``: the analyses as sections (tables, figures, notes, the prompts each uses), the metric notes.
- ``render``: the HTML page and the markdown summary.
"""

from __future__ import annotations

import base64
import io as bytes_io
from pathlib import Path

from matplotlib.figure import Figure

from posweep import analysis
from posweep import io as atomic_io
from posweep.report.render import has_named_index, render_html, render_markdown
from posweep.report.sections import Section, build_sections, metric_notes, prompts_line

__all__ = ["Section", "build_sections", "metric_notes", "prompts_line", "render_html", "render_markdown",
           "write_report"]

FIGURE_DPI = 110


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
            atomic_io.write_atomic_text(table.to_csv(index=has_named_index(table)), path)
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
