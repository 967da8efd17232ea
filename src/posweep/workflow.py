"""Whole jobs that span stages: a sweep followed by its report, and the embedded demo.

In: a sweep config (or the ``demo`` preset) and a folder. Out: ``Finished`` — the sweep's result and the
report's path, or why the report could not be written (a report failure must not lose a finished sweep).
This module sits above ``posweep.sweep`` and ``posweep.report``, so neither imports the other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from posweep.sweep import SweepConfig, SweepResult, load_config, quick_config, run_sweep

log = logging.getLogger(__name__)


@dataclass
class Finished:
    sweep: SweepResult
    report_path: Path | None  # None when the report could not be written
    report_error: str | None = None  # why not: posweep.report missing, or the error it raised


def write_report_safely(out_dir: Path) -> tuple[Path | None, str | None]:
    """(report path, None), or (None, why)."""
    try:
        from posweep.report import write_report
    except ImportError as error:
        return None, f"posweep.report is not available ({error})"
    try:
        return write_report(out_dir), None
    except Exception as error:  # the runs and summary.csv are complete: say why, and go on
        log.exception("writing the report of %s failed", out_dir)
        return None, f"{type(error).__name__}: {error}"


def sweep_and_report(config: SweepConfig | str | Path, out_dir: str | Path, **options) -> Finished:
    """``run_sweep(config, out_dir, **options)``, then the report of the folder."""
    result = run_sweep(config, out_dir, **options)
    return Finished(result, *write_report_safely(result.out_dir))


def run_demo(quick: bool = False, out_dir: str | Path = "runs/demo", progress: bool = True) -> Finished:
    """The ``demo`` preset end to end on the builtin model; ``quick``: one setting per method."""
    config = load_config("demo")
    return sweep_and_report(quick_config(config) if quick else config, out_dir, progress=progress)
