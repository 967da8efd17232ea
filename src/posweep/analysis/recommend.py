"""The robust recommendation (docs/DESIGN.md section 4): score each setting by its grid neighbourhood, not
only by itself, so a good region beats one lucky run. The choice ranks by the sweep's ranking score (the
selection prompts' mean score with a split: ``rank_score``); the score reported is the held-out one.

In: a ``Sweep``. Out: ``neighbourhoods(sweep) -> Result`` (one row per setting, seeds averaged) and
``recommend(sweep, by="mean" | "min") -> Recommendation | None``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

from posweep.analysis.load import Sweep, hparam_text
from posweep.analysis.search import setting_scores
from posweep.analysis.tables import Result


def _grid_values(sweep: Sweep, method: str, param: str) -> list[float]:
    """The values the sweep planned for ``param``: every run of the method (any status) and its grid."""
    values = set(sweep.runs.loc[sweep.runs["method"] == method, param].dropna())
    grid = (sweep.info.get("methods") or {}).get(method)
    if isinstance(grid, dict) and isinstance(grid.get(param), list):
        values |= {float(v) for v in grid[param] if isinstance(v, (int, float))}
    return sorted(values)


def neighbourhoods(sweep: Sweep) -> Result:
    """Per setting (seeds averaged): its score (reported prompts), its ranking score (``rank_score``: the
    selection prompts with a split), how many grid neighbours it has in the plan and how many finished, and
    the mean and min of the ranking score over itself and its finished neighbours. Sorted by neighbourhood
    mean."""
    rows = []
    for method in sweep.methods:
        params = sweep.method_hparams(method)
        settings = setting_scores(sweep, method)
        grids = {p: _grid_values(sweep, method, p) for p in params}
        # A setting's position on each hyperparameter's grid (a NaN value is far from everything).
        positions = np.array([[grids[p].index(value) if pd.notna(value) else -10**6 for p, value in zip(params, row)]
                              for row in settings[params].itertuples(index=False)], int).reshape(len(settings), -1)
        for i, setting in settings.iterrows():
            steps = np.abs(positions - positions[i])
            # exactly one hyperparameter differs, by one grid step
            is_neighbour = (steps.sum(axis=1) == 1)
            neighbour_scores = settings.loc[is_neighbour, "rank_score"].to_numpy(float)
            planned = sum(int(positions[i, j] > 0) + int(positions[i, j] < len(grids[p]) - 1)
                          for j, p in enumerate(params))
            scores = np.append(neighbour_scores, setting["rank_score"])
            row = {"method": method, "hparams": hparam_text(setting, params), "score": setting["mean_score"],
                   "rank_score": setting["rank_score"], "n_seeds": setting["n_seeds"],
                   "n_neighbours": len(neighbour_scores),
                   "n_planned_neighbours": int(planned), "neighbourhood_mean": scores.mean(),
                   "neighbourhood_min": scores.min(), "run_ids": setting["run_ids"]}
            row.update({p: setting[p] for p in params})
            rows.append(row)
    used_params = [c for c in sweep.hparam_columns if any(c in row for row in rows)]
    table = pd.DataFrame(rows, columns=["method", "hparams", "score", "rank_score", "n_seeds", "n_neighbours",
                                        "n_planned_neighbours", "neighbourhood_mean", "neighbourhood_min", "run_ids"]
                         + used_params)
    table = table.sort_values(["neighbourhood_mean", "rank_score"], ascending=False, kind="stable").reset_index(drop=True)
    return Result(table, [] if len(table) else ["no finished run: no neighbourhoods"])


@dataclass
class Recommendation:
    """The method and hyperparameters to start from, and the numbers behind the choice."""

    method: str
    hparams: dict[str, float]
    run_ids: list[str]
    score: float
    neighbourhood_mean: float
    neighbourhood_min: float
    n_neighbours: int
    best_single_method: str
    best_single_hparams: dict[str, float]
    best_single_score: float
    best_single_neighbourhood_mean: float
    by: str
    evidence: str

    def to_dict(self) -> dict:
        return asdict(self)


def recommend(sweep: Sweep, by: Literal["mean", "min"] = "mean") -> Recommendation | None:
    """The setting with the best neighbourhood score (``by``: mean or min over itself and its finished grid
    neighbours); settings without a finished neighbour compete only when none has one. None when no run
    finished."""
    if by not in ("mean", "min"):
        raise ValueError(f"by must be 'mean' or 'min', got {by!r}")
    table = neighbourhoods(sweep).table
    if not len(table):
        return None
    candidates = table[table["n_neighbours"] > 0]
    caveat = ""
    if not len(candidates):
        candidates = table
        caveat = " No setting has a finished grid neighbour, so this is simply the best run."
    pick = candidates.sort_values([f"neighbourhood_{by}", "rank_score"], ascending=False, kind="stable").iloc[0]
    best = table.sort_values("rank_score", ascending=False, kind="stable").iloc[0]

    def params_of(row: pd.Series) -> dict[str, float]:
        return {p: float(row[p]) for p in sweep.method_hparams(row["method"]) if p in row and pd.notna(row[p])}

    on = " on the selection prompts" if sweep.has_split else ""
    score_text = f"{pick['score']:.3f}"
    if sweep.has_split:
        score_text += f" on the held-out prompts ({pick['rank_score']:.3f} on the selection prompts)"
    evidence = (f"{pick['method']} ({pick['hparams']}) scores {score_text}; with its {int(pick['n_neighbours'])} "
                f"finished grid neighbour(s) (of {int(pick['n_planned_neighbours'])} planned) it averages "
                f"{pick['neighbourhood_mean']:.3f}{on}, worst {pick['neighbourhood_min']:.3f}"
                f"{' (chosen by the worst case)' if by == 'min' else ''}.")
    if best["run_ids"] == pick["run_ids"]:
        evidence += " It is also the best single setting."
    else:
        evidence += (f" The best single setting, {best['method']} ({best['hparams']}), scores {best['score']:.3f}, "
                     f"but its neighbourhood mean is {best['neighbourhood_mean']:.3f} "
                     f"over {int(best['n_neighbours'])} neighbour(s).")
    if np.isfinite(sweep.sft_score):
        evidence += f" SFT scores {sweep.sft_score:.3f}."
    return Recommendation(
        method=pick["method"], hparams=params_of(pick), run_ids=pick["run_ids"].split(";"),
        score=float(pick["score"]), neighbourhood_mean=float(pick["neighbourhood_mean"]),
        neighbourhood_min=float(pick["neighbourhood_min"]), n_neighbours=int(pick["n_neighbours"]),
        best_single_method=best["method"], best_single_hparams=params_of(best),
        best_single_score=float(best["score"]), best_single_neighbourhood_mean=float(best["neighbourhood_mean"]),
        by=by, evidence=evidence + caveat)
