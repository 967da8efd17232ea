"""A CI-sized sweep with two of TRL's other loss types and one combination, real stages on tiny models: it
finishes and its report lists every method (issue 13)."""

from __future__ import annotations

import pandas as pd

from posweep.sweep import validate_config
from posweep.workflow import sweep_and_report
from tests.conftest import make_tiny_reward_model, tiny_sweep_config

METHODS = {"nca_pair": {"grid": {"beta": [0.1]}}, "discopop": {"grid": {"beta": [0.1]}},
           "rpo": {"grid": {"beta": [0.1], "nll_weight": [0.5]}}}


def test_sweep_with_new_methods_and_a_combination(tmp_path, tiny_model_dir, tokenizer):
    judge = make_tiny_reward_model(tmp_path / "judge", tokenizer)
    config = validate_config({**tiny_sweep_config(tmp_path, tiny_model_dir, judge), "sft": None, "methods": METHODS})
    finished = sweep_and_report(config, tmp_path / "sweep", progress=False)
    assert finished.sweep.counts["done"] == len(METHODS) and finished.sweep.counts["failed"] == 0
    summary = pd.read_csv(finished.sweep.summary_path)
    assert sorted(summary["method"]) == sorted(METHODS)
    best = pd.read_csv(tmp_path / "sweep" / "report" / "t1_best_runs.csv")
    assert set(METHODS) <= set(best["method"])
    page = finished.report_path.read_text()
    for method in METHODS:
        assert method in page
