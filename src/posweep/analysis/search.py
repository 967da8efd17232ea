"""Tables beyond the paper (docs/DESIGN.md section 4): how much search a method needs, how much seeds move
it, and which runs collapsed.

In: a ``Sweep``. Out: ``expected_max`` (the closed form), ``setting_scores`` (seed-mean score per setting),
``expected_max_curve``, ``collapse_flags`` (with ``CollapseThresholds``) and ``seed_intervals``, each table
a ``Result``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from posweep.analysis.load import Sweep, hparam_text
from posweep.analysis.tables import Result
from posweep.text import repeated_ngram_share

# ------------------------------------------------------------------------------------------------ expected max


def expected_max(scores, n: int, replacement: bool = False, values=None) -> tuple[float, float]:
    """Mean and std of the best of ``n`` scores drawn uniformly from ``scores`` (Dodge et al. 2019).

    With v_(1) ≤ ... ≤ v_(N) sorted: without replacement P(max = v_(i)) = [C(i,n) − C(i−1,n)] / C(N,n);
    with replacement P(max = v_(i)) = (i/N)^n − ((i−1)/N)^n. ``values``: what is reported for the chosen
    setting, when it is chosen by ``scores`` but reported by something else (a held-out score): the mean
    and std of ``values`` at the setting that maximises ``scores``; by default ``scores`` themselves."""
    scores = np.asarray(scores, float)
    order = np.argsort(scores, kind="stable")
    values = (scores if values is None else np.asarray(values, float))[order]
    total = len(values)
    if total == 0 or n < 1 or (not replacement and n > total):
        raise ValueError(f"cannot draw {n} of {total} scores {'with' if replacement else 'without'} replacement")
    ranks = np.arange(1, total + 1)
    if replacement:
        probabilities = (ranks / total) ** n - ((ranks - 1) / total) ** n
    else:  # exact integers, one division: no overflow or cancellation for large grids
        denominator = math.comb(total, n)
        probabilities = np.array([(math.comb(i, n) - math.comb(i - 1, n)) / denominator for i in ranks])
    mean = float(probabilities @ values)
    variance = float(probabilities @ (values - mean) ** 2)
    return mean, math.sqrt(max(variance, 0.0))


def setting_scores(sweep: Sweep, method: str) -> pd.DataFrame:
    """One row per hyperparameter setting of ``method`` (seed excluded): the setting's hyperparameters,
    its mean score averaged over seeds (``mean_score``: the reported prompts), the same for the score it is
    ranked by (``rank_score``: the selection prompts with a split, else equal to ``mean_score``), the number
    of seeds and the run ids."""
    params = sweep.method_hparams(method)
    runs = sweep.done[sweep.done["method"] == method].assign(rank_score=lambda t: t[sweep.rank_column])
    if not params:  # one setting, however many seeds
        return pd.DataFrame([{"mean_score": runs["mean_score"].mean(), "rank_score": runs["rank_score"].mean(),
                              "n_seeds": len(runs), "run_ids": ";".join(runs["run_id"])}]) if len(runs) \
            else pd.DataFrame()
    grouped = runs.groupby(params, dropna=False, sort=True)
    table = grouped.agg(mean_score=("mean_score", "mean"), rank_score=("rank_score", "mean"),
                        n_seeds=("mean_score", "size"), run_ids=("run_id", ";".join)).reset_index()
    return table


def expected_max_curve(sweep: Sweep, method: str | None = None, n_max: int | None = None,
                       replacement: bool = False) -> Result:
    """Expected best mean score (± its std) when trying n random hyperparameter settings of a method, for
    n = 1 ... n_max (without replacement: at most the number of evaluated settings). ``method=None``: all.
    With a selection split the best of the n is the best on the selection prompts, and its score is the
    held-out one: the score a search of n settings would report honestly."""
    notes: list[str] = []
    methods = sweep.methods if method is None else [method]
    rows = []
    for name in methods:
        scores = setting_scores(sweep, name)
        if len(scores):
            scores = scores[np.isfinite(scores["rank_score"].to_numpy(float))]  # unrankable settings drop out
        if not len(scores):
            notes.append(f"{name}: no finished run")
            continue
        total = len(scores)
        limit = n_max or (total if not replacement else max(len(setting_scores(sweep, m)) for m in methods))
        if not replacement:
            limit = min(limit, total)
        for n in range(1, limit + 1):
            mean, std = expected_max(scores["rank_score"], n, replacement, values=scores["mean_score"])
            rows.append({"method": name, "n_trials": n, "expected_max": mean, "std": std, "n_settings": total})
    table = pd.DataFrame(rows, columns=["method", "n_trials", "expected_max", "std", "n_settings"])
    return Result(table, notes)


# ------------------------------------------------------------------------------------------------ collapse


@dataclass(frozen=True)
class CollapseThresholds:
    """A sample is repetitive when at least ``repeated_ngram_share`` of its word ``ngram``-grams repeat an
    earlier one (``posweep.text.repeated_ngram_share``, the demo judge's repetition measure); a run is
    flagged when a share of its samples is strictly above the run-level threshold."""

    ngram: int = 3
    repeated_ngram_share: float = 0.5
    empty_share: float = 0.10
    repetitive_share: float = 0.20
    truncated_share: float = 0.50

    def is_repetitive(self, text: str) -> bool:
        return repeated_ngram_share(text, self.ngram) >= self.repeated_ngram_share


def collapse_flags(sweep: Sweep, thresholds: CollapseThresholds = CollapseThresholds()) -> Result:
    """Per finished run (SFT runs included): the share of its reported samples that are empty (whitespace
    only), repetitive or truncated, and a flag with its reasons when a share is above ``thresholds``. A run
    without samples falls back to metrics.json's ``empty_share`` / ``truncated_share``."""
    notes: list[str] = []
    runs = sweep.runs[(sweep.runs["status"] == "done")]
    rows = []
    for run in runs.itertuples(index=False):
        samples = sweep.reported_samples(run.run_id)
        if samples is not None and "response" in samples.columns and len(samples):
            responses = samples["response"].fillna("").astype(str)
            empty = float((responses.str.strip() == "").mean())
            repetitive = float(np.mean([thresholds.is_repetitive(text) for text in responses]))
            truncated = float(samples["truncated"].astype(bool).mean()) if "truncated" in samples else np.nan
            source, n_samples = "samples", len(samples)
        else:
            empty = getattr(run, "empty_share", np.nan)
            truncated = getattr(run, "truncated_share", np.nan)
            repetitive, source, n_samples = np.nan, "metrics.json", 0
            notes.append(f"run {run.run_id}: no samples; repetition unknown, empty/truncated from metrics.json")
        reasons = [name for name, share, limit in [("empty", empty, thresholds.empty_share),
                                                   ("repetitive", repetitive, thresholds.repetitive_share),
                                                   ("truncated", truncated, thresholds.truncated_share)]
                   if np.isfinite(share) and share > limit]
        rows.append({"run_id": run.run_id, "method": run.method, "mean_score": run.mean_score,
                     "n_samples": n_samples, "empty_share": empty, "repetitive_share": repetitive,
                     "truncated_share": truncated, "flagged": bool(reasons), "reasons": ", ".join(reasons),
                     "source": source})
    table = pd.DataFrame(rows, columns=["run_id", "method", "mean_score", "n_samples", "empty_share",
                                        "repetitive_share", "truncated_share", "flagged", "reasons", "source"])
    return Result(table, notes)


# ------------------------------------------------------------------------------------------------ seeds


def seed_intervals(sweep: Sweep, confidence: float = 0.95) -> Result:
    """Settings run with several seeds: mean score across seeds, its std, a t-interval for the mean
    (``confidence``), and the min and max seed."""
    notes: list[str] = []
    columns = ["method", "hparams", "n_seeds", "mean", "std", "ci_low", "ci_high", "min", "max", "run_ids"]
    if "seed" not in sweep.runs.columns:
        notes.append("summary.csv has no seed column: no multi-seed intervals")
        return Result(pd.DataFrame(columns=columns), notes)
    rows = []
    done = sweep.done
    for method in sweep.methods:
        params = sweep.method_hparams(method)
        runs = done[done["method"] == method]
        groups = runs.groupby(params, dropna=False) if params else [((), runs)]
        for _, group in groups:
            if group["seed"].nunique() < 2:
                continue
            scores = group["mean_score"].to_numpy(float)
            mean, std = scores.mean(), scores.std(ddof=1)
            half = stats.t.ppf(0.5 + confidence / 2, len(scores) - 1) * std / math.sqrt(len(scores))
            rows.append({"method": method, "hparams": hparam_text(group.iloc[0], params), "n_seeds": len(scores),
                         "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half,
                         "min": scores.min(), "max": scores.max(), "run_ids": ";".join(group["run_id"])})
    table = pd.DataFrame(rows, columns=columns)
    if not len(table):
        notes.append("no setting finished with two or more seeds: no multi-seed intervals")
    return Result(table, notes)
