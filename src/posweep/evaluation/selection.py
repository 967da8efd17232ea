"""A held-out selection split of the test prompts (docs/DESIGN.md section 3).

Every choice a sweep makes from scores (the SFT run, each method's best, 75th-percentile and top-k% runs,
the recommendation) is biased upwards when it is reported on the prompts it was made on. With a split, the
choices are made on the *selection* prompts and every reported metric comes from the *held-out* rest.

In: the prompt ids and the selection set (chosen by the sweep: ``sweep.inputs.selection_split``). Out: each
sample's split label (``split_labels``: ``selection``, ``held_out``, or ``both`` when there is no split and
the paper's single set serves for both), and the metrics of a per-sample table with its split
(``split_metrics``: held-out metrics under the usual names, the selection set's under ``selection_*``).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

SPLITS = ("selection", "held_out", "both")
# What the selection set contributes to metrics.json: enough to rank runs on it.
SELECTION_METRICS = ("n", "mean_score", "mean_score_ci")


def split_labels(prompt_ids: list[str], selection: set[str] | None) -> list[str]:
    """Each prompt's split: ``selection`` / ``held_out``, or ``both`` for every prompt without a split."""
    if not selection:
        return ["both"] * len(prompt_ids)
    return ["selection" if pid in selection else "held_out" for pid in prompt_ids]


def reported_rows(samples: pd.DataFrame) -> pd.DataFrame:
    """The rows whose values are reported: the held-out ones (all rows without a split or a split column)."""
    if "split" not in samples.columns:
        return samples
    return samples[samples["split"] != "selection"]


def selection_rows(samples: pd.DataFrame) -> pd.DataFrame:
    """The rows choices are made on: the selection ones (all rows without a split)."""
    if "split" not in samples.columns:
        return samples
    return samples[samples["split"] != "held_out"]


def split_metrics(samples: pd.DataFrame, summarize: Callable[[pd.DataFrame], dict]) -> dict:
    """``summarize`` of the reported rows, plus ``selection_n``, ``selection_mean_score`` and its interval
    when the table has a selection split (without one, the plain metrics are both)."""
    metrics = summarize(reported_rows(samples))
    if "split" in samples.columns and (samples["split"] == "selection").any():
        chosen = summarize(selection_rows(samples))
        metrics.update({f"selection_{name}": chosen[name] for name in SELECTION_METRICS})
    return metrics
