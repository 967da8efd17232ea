"""A real sweep, SIGKILLed mid-run and restarted: every run ends up done exactly once, finished runs'
files untouched. Real stages on the tiny model: 8 pairs, 4 prompts, 4 new tokens, and as the judge a
tiny random reward model (``hf:`` judge: deterministic, loads in a fraction of a second).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from posweep.sweep import load_config, plan_runs
from tests.conftest import make_tiny_reward_model, tiny_sweep_config

SWEEP_COMMAND = [sys.executable, "-c", "from posweep.cli import app; app()", "sweep"]


def micro_config(tmp_path: Path, model_dir: Path, judge_dir: Path) -> Path:
    config = {
        **tiny_sweep_config(tmp_path, model_dir, judge_dir),
        "optim": {"batch_size": 4, "micro_batch_size": 4},
        "sft": {"grid": {"learning_rate": [1e-3], "epochs": [1]}},
        # Two epochs (4 steps) so that each preference run trains long enough to be caught mid-run.
        "shared_grid": {"learning_rate": [1e-4], "epochs": [2]},
        "methods": {"dpo": {"grid": {"beta": [0.1, 0.5]}}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def statuses(db_path: Path) -> dict[str, str]:
    if not db_path.exists():
        return {}
    try:
        with sqlite3.connect(db_path, timeout=5) as connection:
            return dict(connection.execute("SELECT run_id, status FROM runs"))
    except sqlite3.OperationalError:  # the table is being created
        return {}


def file_stamps(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
            for p in folder.rglob("*") if p.is_file()}


def test_sigkilled_sweep_resumes_without_redoing_finished_runs(tmp_path, tiny_model_dir, tokenizer):
    judge_dir = make_tiny_reward_model(tmp_path / "judge", tokenizer)
    config_path = micro_config(tmp_path, tiny_model_dir, judge_dir)
    planned = [run.run_id for run in plan_runs(load_config(config_path))]
    out = tmp_path / "sweep"
    command = [*SWEEP_COMMAND, str(config_path), "--out", str(out)]
    log_path = tmp_path / "first.log"

    # 1. Start the sweep; once a run is done and another is mid-training, SIGKILL it.
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline, killed_run = time.time() + 240, None
        while killed_run is None:
            assert process.poll() is None, f"the sweep ended before it could be killed:\n{log_path.read_text()}"
            assert time.time() < deadline, f"no run was caught mid-training:\n{log_path.read_text()}"
            state = statuses(out / "state.sqlite")
            running = [run_id for run_id, status in state.items()
                       if status == "running" and (out / "runs" / run_id / "train_log.jsonl").exists()]
            if running and "done" in state.values():
                killed_run = running[0]
                process.send_signal(signal.SIGKILL)
            time.sleep(0.02)
        process.wait()
    state = statuses(out / "state.sqlite")
    finished = [run_id for run_id, status in state.items() if status == "done"]
    assert finished and state[killed_run] == "running"
    stamps = {run_id: file_stamps(out / "runs" / run_id) for run_id in finished}

    # 2. The same command again: it finishes the sweep.
    second = subprocess.run(command, check=False, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr

    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["run_id"]) == sorted(planned)  # every planned run exactly once
    assert (summary["status"] == "done").all() and summary["mean_score"].notna().all()
    assert statuses(out / "state.sqlite") == dict.fromkeys(planned, "done")
    for run_id in finished:  # finished runs were not redone: same files, same bytes, same mtimes
        assert file_stamps(out / "runs" / run_id) == stamps[run_id], run_id
    killed_dir = out / "runs" / killed_run
    assert (killed_dir / "metrics.json").exists() and (killed_dir / "samples.parquet").exists()
    assert json.loads((killed_dir / "config.json").read_text())["status"] == "done"
    assert not (killed_dir / "checkpoint").exists()  # keep_checkpoints false: evaluated PO checkpoints go
    assert os.path.exists(out / "baseline" / "samples.parquet") and (out / "sweep_info.json").exists()

