"""Executors that run runs in other processes, on micro sweeps with the real stages (tiny model, tiny
random reward model as the judge):

- ``ray``: SFT then DPO as Ray tasks on a local Ray instance (skipped when Ray, an optional dependency,
  is not installed);
- ``local`` with several CUDA devices: one worker process per device (devices simulated: the workers
  are pinned through CUDA_VISIBLE_DEVICES and find no GPU, so they train on CPU);
- ``processes_per_run: 2``: every run a ``torchrun`` of 2 CPU processes (gloo), locally and inside a Ray
  placement group; a launch that dies without an outcome is recorded failed and the next run goes on.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from posweep.sweep import RunJob, plan_runs, run_one, run_sweep, validate_config
from tests.conftest import make_tiny_reward_model, tiny_sweep_config


@pytest.fixture
def two_run_config(tmp_path, tiny_model_dir, tokenizer) -> dict:
    """SFT, then one DPO run."""
    config = tiny_sweep_config(tmp_path, tiny_model_dir, make_tiny_reward_model(tmp_path / "judge", tokenizer))
    return {**config, "methods": {"dpo": {"grid": {"beta": [0.1]}}}}


def check_done_elsewhere(out: Path, runs) -> None:
    """Every run done once, in summary.csv and the state DB, executed by a process other than this one."""
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["run_id"]) == sorted(run.run_id for run in runs)
    assert summary["mean_score"].notna().all()
    with sqlite3.connect(out / "state.sqlite") as connection:
        rows = {run_id: (status, pid) for run_id, status, pid in connection.execute("SELECT run_id, status, pid FROM runs")}
    assert {run_id: status for run_id, (status, _) in rows.items()} == {run.run_id: "done" for run in runs}
    assert all(pid is not None and pid != os.getpid() for _, pid in rows.values())


def test_ray_executor_runs_each_run_once(tmp_path, two_run_config):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'posweep[ray]')")
    config = validate_config({**two_run_config, "executor": {"kind": "ray", "num_cpus": 1}})
    runs = plan_runs(config)
    assert [run.stage for run in runs] == ["sft", "po"]
    out = tmp_path / "sweep"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep(config, out, progress=False)
        assert result.counts["done"] == 2 and result.counts["failed"] == 0
        check_done_elsewhere(out, runs)

        # A retried task of a finished run (e.g. its worker died after evaluating) skips it: no duplicate work.
        dpo_dir = out / "runs" / runs[1].run_id
        before = {p.name: p.stat().st_mtime_ns for p in dpo_dir.iterdir()}
        sft_checkpoint = str(out / "runs" / runs[0].run_id / "checkpoint")
        outcome = ray.get(ray.remote(run_one).remote(RunJob(runs[1], config, out, sft_checkpoint)))
        assert outcome.status == "done" and outcome.skipped
        assert {p.name: p.stat().st_mtime_ns for p in dpo_dir.iterdir()} == before
    finally:
        ray.shutdown()


@pytest.mark.parametrize("workers", ["cuda", "cpu"])
def test_local_executor_uses_one_worker_process_per_cuda_device_or_cpu_share(tmp_path, two_run_config, monkeypatch,
                                                                              workers):
    import torch

    from posweep.sweep.executors import DeviceExecutor, make_executor

    if workers == "cuda":
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # the driver believes there are 2 devices
        config = validate_config(two_run_config)
    else:  # SFT alone, then two DPO runs at once in two worker processes that share the cores
        config = validate_config({**two_run_config, "executor": {"cpu_workers": 2},
                                  "methods": {"dpo": {"grid": {"beta": [0.1, 0.5]}}}})
        executor = make_executor(config.executor)
        assert isinstance(executor, DeviceExecutor) and executor.slots == 2
        executor.close()
    result = run_sweep(config, tmp_path / "sweep", progress=False)
    runs = plan_runs(config)
    assert result.counts["done"] == len(runs)
    check_done_elsewhere(tmp_path / "sweep", runs)
    if workers == "cpu":
        cores = os.cpu_count() or 1
        threads = {run.stage: json.loads((tmp_path / "sweep" / "runs" / run.run_id / "config.json").read_text())
                   ["torch_threads"] for run in runs}
        # Two DPO runs at once share the cores. The SFT run is alone, but the driver samples the base model's
        # baseline alongside it until done: the run has every core if the driver finished before its training
        # began (tiny model: it nearly always has), else half.
        assert threads["po"] == max(1, cores // 2) and threads["sft"] in (cores, max(1, cores // 2))


def test_cpu_workers_divide_the_cores_among_the_runs_in_flight_and_the_driver(monkeypatch):
    from posweep.sweep.executors import DeviceExecutor

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    executor = DeviceExecutor(cpu_workers=3)  # no warm-up: no worker process starts
    try:
        assert executor.shares_cores and executor.core_share.value == 4
        shares = []
        for in_flight, driver_busy in [(1, 1), (1, 0), (3, 0), (3, 1), (2, 0), (0, 0)]:
            executor.in_flight, executor.driver_busy = in_flight, driver_busy
            executor.shares_changed()
            shares.append(executor.core_share.value)
        assert shares == [2, 4, 1, 1, 2, 4]
    finally:
        executor.close()


def check_distributed(out: Path, runs) -> None:
    """Every run trained on 2 processes (its config.json says so)."""
    for run in runs:
        config = json.loads((out / "runs" / run.run_id / "config.json").read_text())
        assert config["world_size"] == 2 and config["parallel"] == "ddp", run.run_id


def test_local_executor_runs_each_run_with_torchrun_on_two_processes(tmp_path, two_run_config):
    config = validate_config({**two_run_config, "executor": {"processes_per_run": 2}})
    result = run_sweep(config, tmp_path / "sweep", progress=False)
    assert result.counts["done"] == 2 and result.counts["failed"] == 0
    check_done_elsewhere(tmp_path / "sweep", plan_runs(config))
    check_distributed(tmp_path / "sweep", plan_runs(config))


def test_ray_executor_runs_each_run_in_a_placement_group_on_two_processes(tmp_path, two_run_config):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'posweep[ray]')")
    config = validate_config({**two_run_config, "sft": None,
                              "executor": {"kind": "ray", "num_cpus": 1, "processes_per_run": 2}})
    out = tmp_path / "sweep"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep(config, out, progress=False)
    finally:
        ray.shutdown()
    assert result.counts["done"] == 1 and result.counts["failed"] == 0
    check_done_elsewhere(out, plan_runs(config))
    check_distributed(out, plan_runs(config))


def test_a_crashed_launch_is_recorded_failed_and_the_next_run_goes_on(tmp_path, two_run_config, monkeypatch):
    """The launcher's processes die without an outcome (first run) or record one (second run)."""
    import pickle
    import sys

    from posweep.sweep import launch
    from posweep.sweep.executors import LaunchExecutor
    from posweep.sweep.plan import RunOutcome

    config = validate_config({**two_run_config, "executor": {"processes_per_run": 2}})
    jobs = [RunJob(run, config, tmp_path, "base") for run in plan_runs(config)]
    script = ("import pickle, sys; from posweep.sweep.plan import RunOutcome; "
              "job = pickle.load(open(sys.argv[1], 'rb')); "
              "sys.exit(3) if job.run.stage == 'sft' else pickle.dump(RunOutcome(job.run.run_id, 'done'), open(sys.argv[2], 'wb'))")
    monkeypatch.setattr(launch, "launch_command", lambda n, job, out: [sys.executable, "-c", script, str(job), str(out)])
    executor = LaunchExecutor(config.executor, gpus=0)
    started = []
    outcomes = list(executor.run(jobs, lambda job: started.append(job.run.run_id)))
    executor.close()
    assert started == [job.run.run_id for job in jobs]
    assert [(o.run_id, o.status) for o in outcomes] == [(jobs[0].run.run_id, "failed"), (jobs[1].run.run_id, "done")]
    assert "exited with code 3" in outcomes[0].error
    assert pickle.loads(pickle.dumps(outcomes[1])) == RunOutcome(jobs[1].run.run_id, "done", pid=outcomes[1].pid)
