"""A CI-sized sweep with two of TRL's other loss types and one combination, real stages on tiny models: it
finishes and its report lists every method (issue 13)."""

from __future__ import annotations

import json

import pandas as pd

from posweep.sweep import validate_config
from posweep.workflow import sweep_and_report
from tests.conftest import make_tiny_reward_model

METHODS = {"nca_pair": {"grid": {"beta": [0.1]}}, "discopop": {"grid": {"beta": [0.1]}},
           "rpo": {"grid": {"beta": [0.1], "nll_weight": [0.5]}}}


def test_sweep_with_new_methods_and_a_combination(tmp_path, tiny_model_dir, tokenizer):
    pairs = [{"prompt": f"Question {i}?", "chosen": f"A longer helpful answer {i}.", "rejected": f"No {i}."}
             for i in range(8)]
    prompts = [{"prompt": f"Test question {i}?", "chosen": f"Reference answer {i}."} for i in range(4)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in pairs))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in prompts))
    config = validate_config({
        "model": str(tiny_model_dir),
        "train_data": {"source": str(tmp_path / "pairs.jsonl"), "layout": "pairs"},
        "test_prompts": {"source": str(tmp_path / "prompts.jsonl"), "layout": "prompts"},
        "judge": f"hf:{make_tiny_reward_model(tmp_path / 'judge', tokenizer)}",
        "sampling": {"max_new_tokens": 4, "batch_size": 4},
        "limits": {"max_prompt_length": 48, "max_length": 64},
        "optim": {"batch_size": 4, "micro_batch_size": 4, "learning_rate": 1e-4},
        "sft": None,
        "methods": METHODS,
    })
    finished = sweep_and_report(config, tmp_path / "sweep", progress=False)
    assert finished.sweep.counts["done"] == len(METHODS) and finished.sweep.counts["failed"] == 0
    summary = pd.read_csv(finished.sweep.summary_path)
    assert sorted(summary["method"]) == sorted(METHODS)
    best = pd.read_csv(tmp_path / "sweep" / "report" / "t1_best_runs.csv")
    assert set(METHODS) <= set(best["method"])
    page = finished.report_path.read_text()
    for method in METHODS:
        assert method in page
