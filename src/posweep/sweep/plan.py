"""The plan of a sweep: every run its grids and seeds produce, with deterministic ids.

In: a ``SweepConfig``. Out: ``PlannedRun`` records (SFT runs first), the sweep's context (what every run
depends on besides its grid point, pinned by finished runs), and the types a worker receives and returns
for one run (``RunJob``, ``RunOutcome``). A run's id hashes its settings, so extending a grid plans new ids
only and a resumed sweep recognises its finished runs.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from posweep.config import OptimConfig, stable_hash
from posweep.losses import get_method
from posweep.sweep.config import OPTIM_GRID_KEYS, SweepConfig


@dataclass
class PlannedRun:
    run_id: str
    method: str  # "sft" or a registry name
    stage: Literal["sft", "po"]
    hparams: dict[str, float]  # the method's own hyperparameters (defaults filled in); {} for SFT
    optim: OptimConfig  # learning_rate / epochs from the grid, seed from `seeds`

    def params(self) -> dict[str, float]:
        """Every hyperparameter of the run, as summary.csv shows them."""
        return {"seed": self.optim.seed, "learning_rate": self.optim.learning_rate, "epochs": self.optim.epochs,
                **self.hparams}


def expand_grid(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    """Every combination of the grid's values, in key order; ``{}`` expands to one empty point."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _planned_run(config: SweepConfig, method: str, point: dict[str, float], seed: int) -> PlannedRun:
    optim = config.optim.model_copy(update={**{k: point[k] for k in OPTIM_GRID_KEYS if k in point}, "seed": seed})
    hparams = {} if method == "sft" else {**get_method(method).hyperparameters,
                                          **{k: v for k, v in point.items() if k not in OPTIM_GRID_KEYS}}
    identity = {"method": method, "hparams": hparams, "optim": optim.identity(), "seed": seed,
                "data": {"train": config.train_data.model_dump(), "limits": config.limits.model_dump()},
                "model": config.model}
    return PlannedRun(f"{method}-{stable_hash(identity, 10)}", method, "sft" if method == "sft" else "po",
                      hparams, optim)


def plan_runs(config: SweepConfig) -> list[PlannedRun]:
    """All runs of the config, SFT runs first; each grid point once per seed. Ids are deterministic."""
    runs = []
    if config.sft is not None:
        runs += [_planned_run(config, "sft", point, seed)
                 for point in expand_grid(config.sft.grid) for seed in config.seeds]
    for method, method_config in config.methods.items():
        grid = {**config.shared_grid, **method_config.grid}
        runs += [_planned_run(config, method, point, seed) for point in expand_grid(grid) for seed in config.seeds]
    return runs


def sweep_context(config: SweepConfig) -> dict:
    """What every run's results depend on besides its own grid point; finished runs pin it."""
    context = {
        "model": config.model, "train_data": config.train_data.model_dump(),
        "test_prompts": config.test_prompts.model_dump(), "judge": config.judge,
        "sampling": config.sampling.model_dump(), "limits": config.limits.model_dump(),
        "optim": config.optim.identity(exclude={"learning_rate", "epochs", "seed"}),
    }
    if config.system_prompt is not None:  # only when set, so sweeps from before the option keep their ids
        context["system_prompt"] = config.system_prompt
    return json.loads(json.dumps(context))


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def describe_changes(old: dict, new: dict) -> list[str]:
    old_flat, new_flat = _flatten(old), _flatten(new)
    return [f"{key}: {old_flat.get(key)!r} -> {new_flat.get(key)!r}"
            for key in sorted(old_flat.keys() | new_flat.keys()) if old_flat.get(key) != new_flat.get(key)]


@dataclass
class RunJob:
    """Everything a worker needs to execute one run (picklable, for worker processes and Ray)."""

    run: PlannedRun
    config: SweepConfig
    out_dir: Path
    base_spec: str  # the policy training starts from and evaluation compares with


@dataclass
class RunOutcome:
    run_id: str
    status: Literal["done", "failed"]
    error: str | None = None
    traceback_tail: str | None = None
    duration_s: float = 0.0
    metrics: dict = field(default_factory=dict)
    skipped: bool = False  # already finished by an earlier attempt
    pid: int | None = field(default_factory=os.getpid)  # the process that executed the run
