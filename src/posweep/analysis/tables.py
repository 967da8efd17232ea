"""The paper's tables and the tables behind its figures, as plain pandas (docs/DESIGN.md section 4).

In: a ``Sweep``. Out: one ``Result`` (table, notes) per analysis: T1 ``best_runs``, F1
``score_distribution``, T3 ``head_to_head``, F2/F3/F9 ``sample_distributions``, F4–F7
``sensitivity_params`` / ``sensitivity``, F8 ``kl_vs_score``. ``posweep.analysis.figures`` draws from them.

Every choice of a run (best, 75th percentile, top-k%) ranks by ``Sweep.rank_column`` (the selection
prompts' mean score when the sweep has a split); every value reported comes from the held-out prompts
(``mean_score`` and the metrics, ``Sweep.reported_samples``). Without a split the two coincide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from posweep.analysis.load import SHARED_HPARAMS, Sweep, hparam_text, number
from posweep.metrics import METRIC_NAMES, flatten_intervals, nanmean, win_rate

SAMPLE_METRICS = ("length", "kl", "ln_kl")
TOP_K_PERCENT = (1, 10, 25)


@dataclass
class Result:
    """What one analysis produces: a table and notes on what could not be computed."""

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def ranked(runs: pd.DataFrame, column: str = "mean_score") -> pd.DataFrame:
    """Runs by ``column`` (the sweep's ``rank_column``), best first; ties keep summary.csv order, so choices
    are reproducible, and a run without that score ranks last."""
    return runs.sort_values(column, ascending=False, kind="stable", na_position="last")


def p75_position(n_runs: int) -> int:
    """0-based position, in ascending mean-score order, of the 75th-percentile run (numpy 'nearest')."""
    return int(np.round(0.75 * (n_runs - 1)))


def top_k_count(n_runs: int, k_percent: float) -> int:
    """How many runs the top-k% of ``n_runs`` holds: ceil(k% of n), at least one."""
    return max(1, math.ceil(k_percent / 100 * n_runs - 1e-9))


# ------------------------------------------------------------------------------------------------ T1


def best_runs(sweep: Sweep) -> Result:
    """T1: the best run per method (by the sweep's ranking score: the selection prompts' mean score when it
    has a split, its ``selection_mean_score`` column then), all metrics with their 95% bootstrap intervals, and the
    % change of each metric against DPO's best run (NaN when the sweep has no DPO run). SFT comes first."""
    notes: list[str] = []
    columns = ["method", "run_id", "n_runs", "hparams"]
    for metric in METRIC_NAMES:
        columns += [metric, f"{metric}_ci_low", f"{metric}_ci_high"]
    if sweep.has_split:
        columns.append("selection_mean_score")  # what chose the run; the metrics are the held-out prompts'
    rows = []
    sft = _sft_row(sweep)
    if sft is not None:
        rows.append(sft)
    done = sweep.done
    for method in sweep.methods:
        runs = done[done["method"] == method]
        best = ranked(runs, sweep.rank_column).iloc[0]
        row = {"method": method, "run_id": best["run_id"], "n_runs": len(runs),
               "hparams": hparam_text(best, sweep.method_hparams(method))}
        row.update({c: best.get(c, np.nan) for c in columns[4:]})
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    dpo = table[table["method"] == "dpo"]
    for metric in METRIC_NAMES:
        reference = float(dpo[metric].iloc[0]) if len(dpo) else np.nan
        table[f"{metric}_vs_dpo_pct"] = 100 * (table[metric] - reference) / abs(reference) \
            if reference != 0 else np.nan
    if not len(dpo):
        notes.append("no DPO run finished: the % change against DPO is empty")
    if not sweep.methods:
        notes.append("no preference-optimization run finished")
    return Result(table, notes)


def _sft_row(sweep: Sweep) -> dict | None:
    metrics = sweep.info.get("sft_metrics")
    if not metrics:
        return None
    flat = flatten_intervals(metrics)
    sft_runs = sweep.runs[(sweep.runs["method"] == "sft") & (sweep.runs["status"] == "done")]
    chosen = sft_runs[sft_runs["run_id"] == sweep.info.get("sft_run_id")]
    row = {"method": "sft", "run_id": sweep.info.get("sft_run_id"), "n_runs": len(sft_runs),
           "hparams": hparam_text(chosen.iloc[0], sweep.method_hparams("sft")) if len(chosen) else ""}
    for metric in METRIC_NAMES:
        for column in (metric, f"{metric}_ci_low", f"{metric}_ci_high"):
            row[column] = number(flat.get(column))
    if sweep.has_split:
        row["selection_mean_score"] = number(flat.get("selection_mean_score"))
    return row


# ------------------------------------------------------------------------------------------------ F1


def score_distribution(sweep: Sweep) -> Result:
    """F1: the distribution of mean score over each method's grid, and the share of runs below SFT."""
    notes: list[str] = []
    done = sweep.done
    rows = []
    for method in sweep.methods:
        scores = done.loc[done["method"] == method, "mean_score"]
        rows.append({"method": method, "n_runs": len(scores), "min": scores.min(), "median": scores.median(),
                     "mean": scores.mean(), "max": scores.max(),
                     "share_below_sft": float((scores < sweep.sft_score).mean())
                     if np.isfinite(sweep.sft_score) else np.nan})
    table = pd.DataFrame(rows, columns=["method", "n_runs", "min", "median", "mean", "max", "share_below_sft"])
    if not np.isfinite(sweep.sft_score):
        notes.append("SFT score unknown: share below SFT is empty")
    return Result(table, notes)


# ------------------------------------------------------------------------------------------------ T3


def select_run(runs: pd.DataFrame, which: Literal["best", "p75"], column: str = "mean_score") -> pd.Series:
    """The best run, or the 75th-percentile run (see ``p75_position``), of one method's runs by ``column``."""
    if which == "best":
        return ranked(runs, column).iloc[0]
    ascending = runs.sort_values(column, kind="stable", na_position="first")
    return ascending.iloc[p75_position(len(ascending))]


def shared_prompt_win_rate(scores: pd.Series, other_scores: pd.Series) -> tuple[float, int]:
    """``posweep.metrics.win_rate`` over the prompt_ids (the index) both series score: the share where
    ``scores`` wins, ties ½, and how many prompts that is."""
    joined = pd.concat([scores.rename("a"), other_scores.rename("b")], axis=1, join="inner")
    wins = win_rate(joined["a"], joined["b"])
    return nanmean(wins), int(np.isfinite(wins).sum())


def head_to_head(sweep: Sweep, which: Literal["best", "p75"] = "best") -> Result:
    """T3: per-sample win rates between methods' chosen runs (row method beats column method; ties ½),
    over the prompt_ids both runs have. ``which``: each method's best run or its 75th-percentile run.
    Rows and columns are the methods (index name ``row beats column``), plus each row's run_id and mean_score."""
    if which not in ("best", "p75"):
        raise ValueError(f"which must be 'best' or 'p75', got {which!r}")
    notes: list[str] = []
    done = sweep.done
    chosen: dict[str, pd.Series] = {}
    scores: dict[str, pd.Series] = {}
    for method in sweep.methods:
        run = select_run(done[done["method"] == method], which, sweep.rank_column)
        samples = sweep.reported_samples(run["run_id"])
        if samples is None or not {"prompt_id", "score"} <= set(samples.columns):
            notes.append(f"{method}: {which} run {run['run_id']} has no per-sample scores; left out")
            continue
        chosen[method] = run
        scores[method] = samples.drop_duplicates("prompt_id").set_index("prompt_id")["score"]
    methods = list(chosen)
    table = pd.DataFrame({"run_id": [chosen[m]["run_id"] for m in methods],
                          "mean_score": [chosen[m]["mean_score"] for m in methods]}, index=methods)
    shared_counts = set()
    for column in methods:
        rates = []
        for row in methods:
            rate, shared = shared_prompt_win_rate(scores[row], scores[column]) if row != column else (np.nan, 0)
            rates.append(rate)
            if row != column:
                shared_counts.add(shared)
        table[column] = rates
    table.index.name = "row beats column"
    if len(shared_counts) > 1 or 0 in shared_counts:
        notes.append(f"runs share different numbers of prompts ({sorted(shared_counts)}); each rate uses its pair's")
    if len(methods) < 2:
        notes.append("fewer than two methods with samples: no head-to-head comparison")
    return Result(table, notes)


# ------------------------------------------------------------------------------------------------ F2/F3/F9


def pooled_values(sweep: Sweep, run_ids, metric: str) -> tuple[np.ndarray, int, list[str]]:
    """The finite per-sample values of ``metric`` pooled over ``run_ids``, how many of those runs have
    samples with it, and notes on runs whose samples lack the column."""
    parts, notes = [], []
    for run_id in run_ids:
        samples = sweep.reported_samples(run_id)
        if samples is not None and metric in samples.columns:
            parts.append(samples[metric].to_numpy(float))
        elif samples is not None:
            notes.append(f"run {run_id}: samples.parquet has no {metric!r} column")
    values = np.concatenate(parts) if parts else np.array([])
    return values[np.isfinite(values)], len(parts), notes


def sample_distributions(sweep: Sweep, metric: Literal["length", "kl", "ln_kl"] = "length",
                         top_k_percent: tuple[float, ...] = TOP_K_PERCENT) -> Result:
    """F2 (length), F3 (KL), F9 (LN-KL): the distribution over the reported samples of ``metric`` for each
    method's top-k% runs by the sweep's ranking score (``top_k_count`` runs: at least one). The table says how many runs and
    samples each k holds and which runs (``run_ids``, ``;``-separated); the figure shows their samples."""
    if metric not in SAMPLE_METRICS:
        raise ValueError(f"metric must be one of {list(SAMPLE_METRICS)}, got {metric!r}")
    notes: list[str] = []
    done = sweep.done
    rows = []
    for method in sweep.methods:
        runs = ranked(done[done["method"] == method], sweep.rank_column)
        for k in top_k_percent:
            top = runs.head(top_k_count(len(runs), k))
            values, n_with_samples, missing = pooled_values(sweep, top["run_id"], metric)
            notes += missing
            has_values = len(values) > 0
            rows.append({"method": method, "top_k_percent": k, "n_runs": len(top),
                         "n_runs_with_samples": n_with_samples, "n_samples": len(values), "mean": nanmean(values),
                         "median": np.median(values) if has_values else np.nan,
                         "p10": np.quantile(values, 0.1) if has_values else np.nan,
                         "p90": np.quantile(values, 0.9) if has_values else np.nan,
                         "run_ids": ";".join(top["run_id"])})
    table = pd.DataFrame(rows, columns=["method", "top_k_percent", "n_runs", "n_runs_with_samples", "n_samples",
                                        "mean", "median", "p10", "p90", "run_ids"])
    if not table["n_samples"].sum():
        notes.append(f"no samples with {metric!r}: no figure")
    return Result(table, list(dict.fromkeys(notes)))


# ------------------------------------------------------------------------------------------------ F4–F7


def sensitivity_params(sweep: Sweep) -> list[tuple[str, str]]:
    """The (method, hyperparameter) pairs worth a sensitivity plot: each method's own hyperparameters (β for
    dpo/ln_dpo, β and γ/β for simpo, ...) and the learning rate, when the sweep tried two values or more."""
    pairs = []
    done = sweep.done
    for method in sweep.methods:
        runs = done[done["method"] == method]
        own = [p for p in sweep.method_hparams(method) if p not in SHARED_HPARAMS]
        for param in own + ["learning_rate"]:
            if param in runs.columns and runs[param].nunique() >= 2:
                pairs.append((method, param))
    return pairs


def sensitivity(sweep: Sweep, method: str, param: str) -> Result:
    """F4–F7: mean score against one hyperparameter of one method; for each value, the mean, min, max and
    std of the mean score over the other hyperparameters (and seeds)."""
    notes: list[str] = []
    columns = ["method", "param", "value", "n_runs", "mean", "min", "max", "std"]
    runs = sweep.done[sweep.done["method"] == method]
    if param not in runs.columns or runs[param].isna().all():
        notes.append(f"{method}: no finished run has a value for {param!r}")
        return Result(pd.DataFrame(columns=columns), notes)
    grouped = runs.dropna(subset=[param]).groupby(param)["mean_score"]
    table = grouped.agg(n_runs="count", mean="mean", min="min", max="max", std="std").reset_index()
    table = table.rename(columns={param: "value"}).assign(method=method, param=param)[columns]
    if len(table) < 2:
        notes.append(f"{method}: only one value of {param} finished; no sensitivity to show")
    return Result(table, notes)


# ------------------------------------------------------------------------------------------------ F8


def kl_vs_score(sweep: Sweep) -> Result:
    """F8: mean length-normalized KL against mean score, one row per run."""
    notes: list[str] = []
    table = sweep.done[["run_id", "method", "ln_kl", "mean_score"]].reset_index(drop=True)
    missing = table["ln_kl"].isna()
    if missing.any():
        notes.append(f"{int(missing.sum())} run(s) without a mean LN-KL are not plotted")
    return Result(table, notes)
