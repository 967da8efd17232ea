"""Evaluation of one run: sample, score, KL against SFT, the metrics with bootstrap intervals.

In: the run's model, the SFT model, test prompts, a judge, a ``SamplingSpec``, optionally the selection
split. Out: ``samples.parquet`` and ``metrics.json`` in the run's folder (docs/DESIGN.md section 3); the
baseline (SFT samples and scores, chosen responses' scores) once per sweep.

- ``scoring``: judge scores, checked; the chosen responses' scores, cached per (prompts, judge).
- ``kl``: log-probs of sampled responses at the sampling temperature (KL vs SFT).
- ``baseline``: the cached SFT baseline, sampled or taken from the SFT run's own evaluation.
- ``selection``: the held-out selection split.
- ``run``: ``evaluate_run`` and ``summarize``.
"""

from posweep.evaluation.baseline import (
    BASELINE_COLUMNS,
    Baseline,
    baseline_from_run,
    baseline_key,
    get_baseline,
    prompts_fingerprint,
)
from posweep.evaluation.kl import kl_temperature, sampled_logps, tempered_response_logps
from posweep.evaluation.run import SAMPLE_COLUMNS, TOKEN_COLUMNS, evaluate_run, summarize
from posweep.evaluation.scoring import ScoringError, cached_chosen_scores, score_checked, score_chosen
from posweep.evaluation.selection import SPLITS, reported_rows, selection_rows, split_labels, split_metrics
from posweep.metrics import bootstrap_ci, win_rate

__all__ = ["BASELINE_COLUMNS", "SAMPLE_COLUMNS", "SPLITS", "TOKEN_COLUMNS", "Baseline", "ScoringError",
           "baseline_from_run", "baseline_key", "bootstrap_ci", "cached_chosen_scores", "evaluate_run",
           "get_baseline", "kl_temperature", "prompts_fingerprint", "reported_rows", "sampled_logps",
           "score_checked", "score_chosen", "selection_rows", "split_labels", "split_metrics", "summarize",
           "tempered_response_logps", "win_rate"]
