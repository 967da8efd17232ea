"""posweep.sweep.pipeline: every stage, resume, failures, config changes (stage functions faked)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml

from posweep.sweep import (
    SweepConfigError,
    plan_runs,
    validate_config,
)
from tests.sweep.helpers import db_rows, file_stamps, sweep


def test_sweep_runs_every_stage_and_writes_the_layout(tmp_path, fakes, micro_config):
    out = tmp_path / "sweep"
    result = sweep(micro_config, out)
    runs = plan_runs(validate_config(micro_config))
    assert result.counts["done"] == 5 and result.counts["failed"] == 0
    assert sorted(fakes.trained()) == sorted(r.run_id for r in runs)
    assert fakes.count("get_reference_logps") == 1  # once, shared by both dpo runs
    # Two baselines: the starting model's (compared with by SFT runs), sampled; the chosen SFT's (by PO runs),
    # taken from that run's own evaluation.
    assert fakes.count("get_baseline") == 1 and fakes.count("load_judge") == 1
    assert [c[1] for c in fakes.calls if c[0] == "baseline_from_run"] == [runs[1].run_id]

    info = json.loads((out / "sweep_info.json").read_text())
    best_sft = runs[1]  # learning rate 2e-5 scores best in the fake
    assert info["sft_run_id"] == best_sft.run_id and info["sft_metrics"]["mean_score"] == pytest.approx(0.02)
    assert info["judge_is_stand_in"] is True and info["methods"]["dpo"] == {"learning_rate": [1e-6], "beta": [0.1, 0.3]}
    assert [c[1] for c in fakes.calls if c[0] == "get_reference_logps"] == [str(out / "runs" / best_sft.run_id / "checkpoint")]

    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["run_id"]) == sorted(r.run_id for r in runs)
    assert {"run_id", "method", "stage", "status", "learning_rate", "epochs", "seed", "beta", "gamma_beta_ratio",
            "mean_score", "mean_score_ci_low", "mean_score_ci_high", "kl"} <= set(summary.columns)
    dpo = summary[summary["method"] == "dpo"].set_index("beta")
    assert dpo.loc[0.3, "mean_score"] == pytest.approx(0.3) and (summary["status"] == "done").all()
    assert summary.loc[summary["method"] == "simpo", "gamma_beta_ratio"].item() == 0.5  # default filled in

    assert validate_config(yaml.safe_load((out / "sweep.yaml").read_text())) == validate_config(micro_config)
    assert len(pd.read_parquet(out / "baseline" / "samples.parquet")) == 4  # one row per test prompt
    for run in runs:
        run_dir = out / "runs" / run.run_id
        assert {"metrics.json", "samples.parquet", "train_log.jsonl", "config.json"} <= {p.name for p in run_dir.iterdir()}
        # keep_checkpoints false: only the chosen SFT keeps its checkpoint.
        assert (run_dir / "checkpoint").exists() == (run.run_id == best_sft.run_id)
    states = db_rows(out)
    assert {row["status"] for row in states.values()} == {"done"}
    assert all(row["finished_at"] and row["duration_s"] is not None and row["config_hash"] for row in states.values())


def test_resume_skips_finished_runs_without_touching_them(tmp_path, fakes, micro_config):
    out = tmp_path / "sweep"
    sweep(micro_config, out)
    before = {p: s for p, s in file_stamps(out).items() if p.startswith("runs/")}
    fakes.calls.clear()
    sweep(micro_config, out)
    assert fakes.trained() == [] and fakes.count("evaluate_run") == 0
    after = {p: s for p, s in file_stamps(out).items() if p.startswith("runs/")}
    assert after == before


def test_run_left_running_by_a_dead_process_is_rerun(tmp_path, fakes, micro_config):
    out = tmp_path / "sweep"
    sweep(micro_config, out)
    victim = plan_runs(validate_config(micro_config))[3]
    # What a SIGKILL mid-run leaves: status "running", a partial folder without metrics.
    with sqlite3.connect(out / "state.sqlite") as connection:
        connection.execute("UPDATE runs SET status = 'running', pid = 999999 WHERE run_id = ?", (victim.run_id,))
    (out / "runs" / victim.run_id / "metrics.json").unlink()
    (out / "runs" / victim.run_id / "partial.tmp").write_text("half")
    fakes.calls.clear()
    sweep(micro_config, out)
    assert fakes.trained() == [victim.run_id]
    assert not (out / "runs" / victim.run_id / "partial.tmp").exists()
    assert db_rows(out)[victim.run_id]["status"] == "done"


def test_failing_runs_are_recorded_and_retried_only_when_asked(tmp_path, fakes, micro_config):
    out = tmp_path / "sweep"
    fakes.fail_betas, fakes.nan_betas = {0.1}, {0.3}
    result = sweep(micro_config, out)
    runs = plan_runs(validate_config(micro_config))
    crashed, diverged, simpo = runs[2], runs[3], runs[4]
    assert result.counts == {"done": 3, "failed": 2, "pending": 0, "running": 0}
    states = db_rows(out)
    assert states[crashed.run_id]["error"] == "RuntimeError: simulated crash for beta=0.1"
    assert "simulated crash" in states[crashed.run_id]["traceback"] and "Traceback" in states[crashed.run_id]["traceback"]
    assert "non-finite loss" in states[diverged.run_id]["error"]
    assert states[simpo.run_id]["status"] == "done"  # the sweep went on after the failures
    summary = pd.read_csv(out / "summary.csv").set_index("run_id")
    assert summary.loc[crashed.run_id, "status"] == "failed" and math.isnan(summary.loc[crashed.run_id, "mean_score"])
    assert "simulated crash" in summary.loc[crashed.run_id, "error"]

    fakes.calls.clear()
    fakes.fail_betas, fakes.nan_betas = set(), set()
    sweep(micro_config, out)
    assert fakes.trained() == []  # failed runs stay failed without --retry-failed
    sweep(micro_config, out, retry_failed=True)
    assert sorted(fakes.trained()) == sorted([crashed.run_id, diverged.run_id])
    assert {row["status"] for row in db_rows(out).values()} == {"done"}
    assert all(row["error"] is None for row in db_rows(out).values())


def test_changed_config_is_refused_and_grid_extension_runs_only_new_points(tmp_path, fakes, micro_config):
    out = tmp_path / "sweep"
    sweep(micro_config, out)
    fakes.calls.clear()
    for change, named in [({"sampling": {"max_new_tokens": 8}}, "sampling.max_new_tokens: 4 -> 8"),
                          ({"judge": "hf:other"}, "judge: 'hf:fake-judge' -> 'hf:other'"),
                          ({"optim": {"batch_size": 8, "micro_batch_size": 4}}, "optim.batch_size: 4 -> 8"),
                          ({"limits": {"max_prompt_length": 32, "max_length": 128}}, "limits.max_prompt_length: 64 -> 32")]:
        with pytest.raises(SweepConfigError) as error:
            sweep({**micro_config, **change}, out)
        assert named in str(error.value) and "new sweep folder" in str(error.value)
    assert fakes.calls == []

    extended = {**micro_config, "methods": {**micro_config["methods"], "dpo": {"grid": {"beta": [0.1, 0.3, 0.5]}},
                                            "ln_dpo": {"grid": {"beta": [1.0]}}}}
    result = sweep(extended, out)
    new_runs = {r.run_id for r in plan_runs(validate_config(extended))} - {r.run_id for r in plan_runs(validate_config(micro_config))}
    assert sorted(fakes.trained()) == sorted(new_runs) and len(new_runs) == 2
    assert result.counts["done"] == 7 and len(pd.read_csv(out / "summary.csv")) == 7
    assert yaml.safe_load((out / "sweep.yaml").read_text())["methods"]["dpo"]["grid"]["beta"] == [0.1, 0.3, 0.5]


def test_data_file_edited_in_place_is_refused(tmp_path, fakes, micro_config, data_files):
    # Same config, different content: the sweep compares content fingerprints with its first start.
    train = tmp_path / "pairs.jsonl"
    train.write_bytes(data_files[0].read_bytes())
    config = {**micro_config, "train_data": {"source": str(train), "layout": "pairs"}}
    sweep(config, tmp_path / "sweep")
    train.write_text(train.read_text().replace("A helpful answer 3.", "A different answer 3."))
    fakes.calls.clear()
    with pytest.raises(SweepConfigError, match="the content of train_data changed"):
        sweep(config, tmp_path / "sweep")
    assert fakes.trained() == []


def test_sft_grid_extension_that_changes_the_chosen_sft_is_refused(tmp_path, fakes, micro_config):
    out = tmp_path / "sweep"
    sweep(micro_config, out)
    better_sft = {**micro_config, "sft": {"grid": {"learning_rate": [1e-5, 2e-5, 5e-5]}}}
    with pytest.raises(SweepConfigError, match="SFT grid now selects"):
        sweep(better_sft, out)


def test_sft_free_sweep_uses_the_model_as_sft(tmp_path, fakes, micro_config, tiny_model_dir, monkeypatch):
    # With `sft: null` the model itself is the SFT policy (the fake needs its score file there).
    model_copy = tmp_path / "model"
    model_copy.mkdir()
    for path in Path(tiny_model_dir).iterdir():
        if path.is_file():
            (model_copy / path.name).write_bytes(path.read_bytes())
    (model_copy / "score.json").write_text("0.0")
    out = tmp_path / "sweep"
    result = sweep({**micro_config, "model": str(model_copy), "sft": None}, out)
    assert result.counts["done"] == 3 and fakes.count("train_sft") == 0
    assert json.loads((out / "sweep_info.json").read_text())["sft_run_id"] is None


def test_sampling_backend_is_resolved_once_and_pinned(tmp_path, fakes, micro_config):
    out = tmp_path / "sweep"
    sweep(micro_config, out)
    info = json.loads((out / "sweep_info.json").read_text())
    assert info["sampling_backend"] == "hf" == info["sampling"]["backend"]  # auto, on a machine without vLLM
    with sqlite3.connect(out / "state.sqlite") as connection:  # as if the finished runs had been sampled by vLLM
        connection.execute("UPDATE meta SET value = '\"vllm\"' WHERE key = 'sampling_backend'")
    with pytest.raises(SweepConfigError, match="sampled with the vllm backend.*set sampling.backend: vllm"):
        sweep(micro_config, out)


def test_sweep_from_before_the_evaluation_rules_is_refused(tmp_path, fakes, micro_config):
    out = tmp_path / "sweep"
    sweep(micro_config, out)
    with sqlite3.connect(out / "state.sqlite") as connection:  # what a sweep of the temperature-1 KL recorded
        (value,) = connection.execute("SELECT value FROM meta WHERE key = 'context'").fetchone()
        old = {k: v for k, v in json.loads(value).items() if k != "evaluation"}
        connection.execute("UPDATE meta SET value = ? WHERE key = 'context'", (json.dumps(old),))
    with pytest.raises(SweepConfigError, match="evaluation: None -> 2"):
        sweep(micro_config, out)
