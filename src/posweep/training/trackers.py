"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) through accelerate's tracker classes.

In: ``OptimConfig.report_to`` (a list of tracker names), the run folder and the run's config. Out:
accelerate ``GeneralTracker`` objects, one tracker run per posweep run named by the run id (the run
folder's name), its config logged as hyperparameters, then one point per logged step (the same numbers
as ``train_log.jsonl``). Only the main process writes (accelerate's trackers act on it alone).

- ``tensorboard``: event files under ``<run folder>/tensorboard/<run id>/``; a sweep's runs together:
  ``tensorboard --logdir SWEEP/runs``.
- ``wandb``: project ``$WANDB_PROJECT`` (default ``posweep``), run name = run id.
- ``mlflow``: experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``posweep``), run name = run id, tracking
  URI from ``$MLFLOW_TRACKING_URI`` (mlflow's default: ``./mlruns``).

wandb and mlflow are optional extras; naming one that is not installed is refused in one line.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from posweep.config import UserError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(report_to: list[str]) -> None:
    missing = [name for name in report_to if importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise UserError(f"optim.report_to: {', '.join(missing)} not installed "
                        f"(pip install {' '.join(PACKAGES[name] for name in missing)})")


def make_trackers(report_to: list[str], out_dir: Path) -> list:
    """accelerate tracker objects for ``Accelerator(log_with=...)``, named by the run id (``out_dir.name``)."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    check_trackers(report_to)
    run_id = Path(out_dir).name
    made = {"tensorboard": lambda: TensorBoardTracker(run_id, Path(out_dir) / "tensorboard"),
            "wandb": lambda: WandBTracker(os.environ.get("WANDB_PROJECT", "posweep"), name=run_id),
            "mlflow": lambda: MLflowTracker(experiment_name="posweep", run_name=run_id)}
    return [made[name]() for name in dict.fromkeys(report_to)]


def flat_config(config: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested config → ``{"optim.learning_rate": 1e-6, ...}`` with scalar values (what hparams accept)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)  # None, lists: as text
    return flat


def start(accelerator, config: dict) -> None:
    """Start every tracker given to ``accelerator`` and log the run's config (main process only)."""
    if accelerator.log_with:
        accelerator.init_trackers("posweep", config=flat_config(config))  # the objects carry their own names


def finish(accelerator) -> None:
    """Close the trackers (``Accelerator.end_training`` would also tear down the process group)."""
    for tracker in accelerator.trackers:
        tracker.finish()
