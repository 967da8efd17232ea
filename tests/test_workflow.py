"""posweep.workflow: the report after a sweep, or why not."""

from __future__ import annotations

import sys
import types

from posweep.sweep import validate_config
from posweep.workflow import sweep_and_report
from tests.sweep.conftest import data_files, fakes, micro_config  # noqa: F401  (the sweep tests' fixtures)


def sweep(config: dict, out_dir):
    finished = sweep_and_report(validate_config(config), out_dir, progress=False)
    return finished.sweep, finished


def test_report_is_written_or_skipped_when_unavailable(tmp_path, fakes, micro_config, monkeypatch):  # noqa: F811
    _, result = sweep(micro_config, tmp_path / "sweep")
    assert result.report_path == tmp_path / "sweep" / "report" / "index.html"
    assert fakes.count("write_report") == 1
    monkeypatch.setitem(sys.modules, "posweep.report", None)  # importing it now raises ImportError
    swept, result = sweep(micro_config, tmp_path / "sweep")
    assert result.report_path is None and "posweep.report is not available" in result.report_error
    assert swept.summary_path.exists() and swept.counts["done"] == 5

    def broken_report(sweep_dir):
        raise ValueError("no figures today")

    monkeypatch.setitem(sys.modules, "posweep.report", types.SimpleNamespace(write_report=broken_report))
    _, result = sweep(micro_config, tmp_path / "sweep")
    assert result.report_path is None and result.report_error == "ValueError: no figures today"
