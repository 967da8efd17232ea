"""Judge scores with their output checked: one finite float per response, or an error naming it.

In: a judge (``posweep.judges`` protocol), prompts, responses, truncation flags. Out: numpy arrays of
scores; ``score_chosen`` scores the dataset's reference responses (NaN where a prompt has none).
"""

from __future__ import annotations

import numpy as np

from posweep.config import UserError
from posweep.data import PromptItem


class ScoringError(UserError, ValueError):
    """The judge returned something unusable; the message names the prompt and the response."""


def score_checked(judge, prompts: list[PromptItem], responses: list[str], truncated: list[bool],
                  what: str) -> np.ndarray:
    """``judge.score`` with its output checked: one finite float per response, or an error naming it."""
    scores = np.asarray(judge.score(prompts, responses, truncated), dtype=float)
    if scores.shape != (len(prompts),):
        raise ScoringError(f"judge {judge.name} returned {scores.size} scores for {len(prompts)} {what}")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        i = bad[0]
        raise ScoringError(f"judge {judge.name} scored the {what} of prompt {prompts[i].prompt_id!r} as "
                           f"{scores[i]} (response {responses[i][:80]!r}); {len(bad)} non-finite scores in all")
    return scores


def score_chosen(judge, prompts: list[PromptItem]) -> np.ndarray:
    """Scores of the dataset's chosen responses; NaN for prompts without one."""
    scores = np.full(len(prompts), np.nan)
    having = [i for i, item in enumerate(prompts) if item.chosen is not None]
    if having:
        scores[having] = score_checked(judge, [prompts[i] for i in having], [prompts[i].chosen for i in having],
                                       [False] * len(having), "chosen response")
    return scores
