"""The metrics of a run and the rules every stage shares about them (docs/DESIGN.md section 3).

Torch-free: evaluation computes these, the sweep flattens them into summary.csv, analysis and the report
read them back; each rule lives here once.

- ``METRICS``: metric name → the per-sample column its mean is taken over.
- ``win_rate``: per-sample wins of one score over another, ties ½.
- ``bootstrap_ci``: the 95% interval of a mean.
- ``flatten_intervals``: ``metrics.json`` values → flat columns (``<name>_ci`` = [low, high] becomes
  ``<name>_ci_low`` and ``<name>_ci_high``).
- ``json_safe``: NaN → null for JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

# metrics.json name -> samples.parquet column averaged for it
METRICS: dict[str, str] = {"mean_score": "score", "win_vs_chosen": "win_vs_chosen", "win_vs_sft": "win_vs_sft",
                           "kl": "kl", "ln_kl": "ln_kl", "length": "length"}
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)


def win_rate(a_scores, b_scores) -> np.ndarray:
    """Per sample: 1 where a beats b, 0.5 on a tie, 0 where b wins; NaN where either score is NaN."""
    a, b = np.asarray(a_scores, dtype=float), np.asarray(b_scores, dtype=float)
    wins = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    wins[np.isnan(a) | np.isnan(b)] = np.nan
    return wins


def bootstrap_ci(values, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, NaNs ignored; (NaN, NaN) when nothing is left."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def nanmean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def _number(value) -> float:
    return math.nan if value is None else float(value)


def flatten_intervals(metrics: dict[str, Any]) -> dict[str, Any]:
    """A metrics.json dict as flat columns: ``<name>_ci`` = [low, high] → ``<name>_ci_low``, ``<name>_ci_high``
    (null → NaN); other lists and dicts as JSON text; scalars as they are."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
            flat[f"{key}_low"], flat[f"{key}_high"] = (_number(v) for v in value)
        elif isinstance(value, (dict, list, tuple)):
            flat[key] = json.dumps(value)
        else:
            flat[key] = value
    return flat


def json_safe(value):
    """NaN is not JSON: null instead (pandas reads null back as NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value
