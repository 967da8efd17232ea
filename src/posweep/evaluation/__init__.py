"""Evaluation of one run: sample, score, KL against SFT, the five metrics with bootstrap intervals.

In: the run's model, the SFT model, test prompts, a judge, a ``SamplingSpec``. Out: ``samples.parquet`` and
``metrics.json`` in the run's folder (docs/DESIGN.md section 3); the baseline (SFT samples and scores,
chosen responses' scores) once per sweep.

- ``scoring``: judge scores, checked.
- ``kl``: log-probs of sampled responses (KL vs SFT).
- ``baseline``: the cached SFT baseline.
- ``run``: ``evaluate_run`` and ``summarize``.
"""

from posweep.evaluation.baseline import (
           BASELINE_COLUMNS,
           Baseline,
           baseline_key,
           get_baseline,
           prompts_fingerprint,
)
from posweep.evaluation.kl import sampled_logps
from posweep.evaluation.run import SAMPLE_COLUMNS, evaluate_run, summarize
from posweep.evaluation.scoring import ScoringError, score_checked, score_chosen
from posweep.metrics import bootstrap_ci, win_rate

__all__ = ["BASELINE_COLUMNS", "SAMPLE_COLUMNS", "Baseline", "ScoringError", "baseline_key", "bootstrap_ci",
           "evaluate_run", "get_baseline", "prompts_fingerprint", "sampled_logps", "score_checked",
           "score_chosen", "summarize", "win_rate"]
