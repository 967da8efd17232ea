"""posweep.sweep.run: one run is idempotent."""

from __future__ import annotations

import pytest

from posweep.sweep import (
    plan_runs,
    validate_config,
)
from tests.sweep.helpers import file_stamps, sweep


def test_run_one_is_idempotent_for_a_finished_run(tmp_path, fakes, micro_config):
    # What a retried Ray task does: a run whose evaluation finished is reported done, not recomputed.
    from posweep.sweep import RunJob, run_one

    out = tmp_path / "sweep"
    sweep(micro_config, out)
    config = validate_config(micro_config)
    run = plan_runs(config)[2]
    before = file_stamps(out / "runs" / run.run_id)
    fakes.calls.clear()
    outcome = run_one(RunJob(run, config, out, str(out / "runs" / plan_runs(config)[1].run_id / "checkpoint")))
    assert outcome.status == "done" and outcome.skipped and outcome.metrics["mean_score"] == pytest.approx(0.1)
    assert fakes.calls == [] and file_stamps(out / "runs" / run.run_id) == before
