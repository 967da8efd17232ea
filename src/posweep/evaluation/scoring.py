"""Judge scores with their output checked: one finite float per response, or an error naming it.

In: a judge (``posweep.judges`` protocol), prompts, responses, truncation flags. Out: numpy arrays of
scores; ``score_chosen`` scores the dataset's reference responses (NaN where a prompt has none) and
``cached_chosen_scores`` does it once per (prompts, judge).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from posweep.config import UserError, cache_root, stable_hash
from posweep.data import PromptItem
from posweep.io import write_atomic_parquet


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


def prompts_fingerprint(prompts: list[PromptItem]) -> str:
    """What a prompt set's cached results depend on: every prompt's id, messages, chosen response and meta."""
    return stable_hash([[item.prompt_id, item.prompt, item.chosen, item.meta] for item in prompts])


def cached_chosen_scores(judge, prompts: list[PromptItem]) -> np.ndarray:
    """``score_chosen``, computed once per (prompts, judge) and cached under
    ``$POSWEEP_CACHE/chosen_scores/<key>.parquet``: every baseline of a sweep (the starting model's, the
    chosen SFT's) and every later sweep on the same prompts and judge reads the same scores."""
    key = stable_hash({"prompts": prompts_fingerprint(prompts), "judge": judge.fingerprint})
    path = cache_root() / "chosen_scores" / f"{key}.parquet"
    if path.exists():
        table = pd.read_parquet(path)
        if table["prompt_id"].tolist() == [item.prompt_id for item in prompts]:
            return table["chosen_score"].to_numpy(dtype=float)
    scores = score_chosen(judge, prompts)
    table = pd.DataFrame({"prompt_id": [item.prompt_id for item in prompts], "chosen_score": scores})
    write_atomic_parquet(pa.Table.from_pandas(table, preserve_index=False), path)
    return scores
