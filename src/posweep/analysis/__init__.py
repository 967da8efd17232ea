"""Analyses of a sweep folder: the paper's tables and figures (docs/DESIGN.md section 4) and a few beyond it.

In: a sweep folder (docs/ARCHITECTURE.md): ``summary.csv``, ``sweep_info.json``,
``baseline/samples.parquet`` and ``runs/<run_id>/{metrics.json, samples.parquet}``; no model, no torch.
Out: ``load_sweep(dir) -> Sweep`` (``load``); then one function per analysis returning a ``Result`` (a plain
pandas table and notes saying what could not be computed: ``tables``, ``search``); one function per figure
in ``figures``, drawn from that table (a matplotlib Figure or None); and ``recommend(sweep) ->
Recommendation | None`` (``recommend``). Partial sweeps (failed or pending runs, one method, no DPO, missing
samples) give what can be computed plus notes; nothing here raises on missing runs.

Choices the paper leaves open, written down:
- "Runs" are preference-optimization runs (stage ``po``) with status ``done`` and a finite mean score.
  SFT runs appear only as the reference (T1's first row, the SFT line in the figures, collapse flags).
- T1's % change against DPO is ``100 * (x - x_dpo) / |x_dpo|`` (absolute value, so the sign says
  better/worse even when reward-model scores are negative).
- The 75th-percentile run (T3) of a method with n runs: sort by mean score ascending and take position
  ``round_half_even(0.75 * (n - 1))`` (0-based), i.e. ``numpy.quantile(..., method="nearest")``; with
  5 runs it is the second best, with 3 or fewer it is the best.
- Win rates (T3): over the prompt_ids both runs have; a tie counts one half.
- Top-k% runs (F2/F3/F9): the ``max(1, ceil(k/100 * n))`` best runs of the method by mean score.
- Expected maximum (Dodge et al. 2019): settings are drawn uniformly WITHOUT replacement from the
  method's evaluated grid (the default; ``replacement=True`` gives the with-replacement variant). A
  setting run with several seeds counts once, with its seed-mean score.
- Collapse: thresholds in ``CollapseThresholds`` (a run is flagged when a share is strictly above them).
- Recommendation: a setting's neighbours differ from it in exactly one hyperparameter by one step of
  that hyperparameter's grid (the sorted values the sweep planned for the method); neighbourhood score
  = mean (or min) of its own and its evaluated neighbours' seed-mean scores. Settings with no evaluated
  neighbour compete only when no setting has one.
"""

from posweep.analysis import figures
from posweep.analysis.figures import colour
from posweep.analysis.load import SHARED_HPARAMS, Sweep, hparam_text, load_sweep, method_order
from posweep.analysis.recommend import Recommendation, neighbourhoods, recommend
from posweep.analysis.search import (
    CollapseThresholds,
    collapse_flags,
    expected_max,
    expected_max_curve,
    seed_intervals,
    setting_scores,
)
from posweep.analysis.tables import (
    SAMPLE_METRICS,
    TOP_K_PERCENT,
    Result,
    best_runs,
    head_to_head,
    kl_vs_score,
    p75_position,
    sample_distributions,
    score_distribution,
    select_run,
    sensitivity,
    sensitivity_params,
    shared_prompt_win_rate,
    top_k_count,
)

__all__ = ["SAMPLE_METRICS", "SHARED_HPARAMS", "TOP_K_PERCENT", "CollapseThresholds", "Recommendation", "Result",
           "Sweep", "best_runs", "collapse_flags", "colour", "expected_max", "expected_max_curve", "figures",
           "head_to_head", "hparam_text", "kl_vs_score", "load_sweep", "method_order", "neighbourhoods",
           "p75_position", "recommend", "sample_distributions", "score_distribution", "seed_intervals",
           "select_run", "sensitivity", "sensitivity_params", "setting_scores", "shared_prompt_win_rate",
           "top_k_count"]
