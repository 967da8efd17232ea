"""Loading a sweep folder: summary.csv, metrics.json (intervals flattened), sweep_info.json, the SFT score."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from posweep.analysis import hparam_text, load_sweep, method_order
from posweep.losses import METHODS
from tests.analysis.sweep_files import RUNS, SFT_SCORES, mean, spec, write_sweep


def test_load_sweep_keeps_failed_runs_and_notes_them(sweep):
    assert len(sweep.runs) == len(RUNS)
    assert set(sweep.done["run_id"]) == {r[0] for r in RUNS if r[3] is not None and r[1] != "sft"}
    assert sweep.sft_score == pytest.approx(mean(SFT_SCORES))
    assert any("dpo-5" in note and "failed" in note for note in sweep.notes)
    assert sweep.methods == ["dpo", "ln_dpo", "simpo"]  # palette order
    assert sweep.method_hparams("simpo") == ["learning_rate", "epochs", "beta", "gamma_beta_ratio"]
    row = sweep.runs.set_index("run_id").loc["dpo-2"]
    assert row["mean_score_ci_low"] == pytest.approx(mean(spec("dpo-2")[3]) - 0.05)


def test_metrics_json_overrides_summary_and_unreadable_files_are_noted(tmp_path):
    root = write_sweep(tmp_path / "sweep")
    path = root / "runs" / "dpo-1" / "metrics.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "mean_score": 0.77, "mean_score_ci": [0.7, None], "label": "x"}))
    (root / "runs" / "dpo-3" / "metrics.json").write_text("{not json")
    sweep = load_sweep(root)
    runs = sweep.runs.set_index("run_id")
    assert runs.loc["dpo-1", "mean_score"] == pytest.approx(0.77)
    assert runs.loc["dpo-1", "mean_score_ci_low"] == pytest.approx(0.7)
    assert runs.loc["dpo-1", "mean_score_ci_high"] != runs.loc["dpo-1", "mean_score_ci_high"]  # null -> NaN
    assert "label" not in runs.columns
    assert runs.loc["dpo-3", "mean_score"] == pytest.approx(mean(spec("dpo-3")[3]))  # summary.csv's value
    assert any("dpo-3" in note and "unreadable" in note for note in sweep.notes)


def test_hyperparameter_columns_come_from_the_method_registry(sweep):
    registry_names = {name for method in METHODS.values() for name in method.hyperparameters}
    assert set(sweep.hparam_columns) <= registry_names | {"learning_rate", "epochs"}
    assert "lambda_" not in sweep.hparam_columns  # no method of the registry has it
    assert hparam_text({"beta": 0.1, "learning_rate": 1e-6, "tau": float("nan")}, ["beta", "learning_rate", "tau"]) \
        == "beta=0.1, learning_rate=1e-06"


def test_method_order_is_the_registry_order():
    assert method_order(["simpo", "zeta", "sft", "dpo", "alpha"]) == ["dpo", "simpo", "sft", "alpha", "zeta"]
    assert method_order(reversed(list(METHODS))) == list(METHODS)


def test_sft_score_falls_back_to_the_best_sft_run(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path / "sweep", sft_run_id=None))  # sweep_info.json names no SFT run
    assert sweep.sft_score == pytest.approx(mean(SFT_SCORES))  # sft-a beats sft-b
    assert any("best done SFT run" in note for note in sweep.notes)
    assert len(sweep.runs) == len(RUNS)


def test_analysis_imports_without_torch():
    code = "import posweep.analysis, posweep.report, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
