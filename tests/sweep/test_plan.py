"""posweep.sweep.plan: deterministic run ids keyed by settings."""

from __future__ import annotations

import json

from posweep.sweep import (
    plan_runs,
    validate_config,
)


def test_plan_ids_are_deterministic_and_keyed_by_settings(micro_config):
    config = validate_config(micro_config)
    first, second = plan_runs(config), plan_runs(validate_config(json.loads(json.dumps(micro_config))))
    assert [r.run_id for r in first] == [r.run_id for r in second]
    assert len({r.run_id for r in first}) == len(first) == 5
    assert [r.stage for r in first] == ["sft", "sft", "po", "po", "po"]
    assert all(r.run_id.startswith(r.method + "-") for r in first)
    # Settings that do not change results do not change ids; a new grid value adds exactly one id.
    unrelated = validate_config({**micro_config, "keep_checkpoints": True, "executor": {"kind": "ray"}})
    assert [r.run_id for r in plan_runs(unrelated)] == [r.run_id for r in first]
    extended = validate_config({**micro_config, "methods": {**micro_config["methods"], "dpo": {"grid": {"beta": [0.1, 0.3, 0.5]}}}})
    assert len({r.run_id for r in plan_runs(extended)} - {r.run_id for r in first}) == 1
    seeds = plan_runs(validate_config({**micro_config, "seeds": [0, 1]}))
    assert len(seeds) == 10 and {r.optim.seed for r in seeds} == {0, 1}
