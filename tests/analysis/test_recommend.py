"""The robust recommendation on a grid with a lucky isolated run and a plateau of good runs."""

from __future__ import annotations

import pytest

from posweep import analysis
from posweep.analysis import load_sweep
from tests.analysis.sweep_files import grid_sweep, mean


def test_recommendation_prefers_a_robust_neighbourhood(tmp_path):
    sweep = load_sweep(grid_sweep(tmp_path / "grid"))
    pick = analysis.recommend(sweep)
    assert pick.method == "dpo" and pick.hparams == {"learning_rate": 2e-6, "epochs": 1.0, "beta": 0.1}
    assert pick.score == pytest.approx(0.72)
    neighbours = [0.7, 0.68, 0.69, 0.66]  # beta 0.05 / 0.3 at 2e-6, lr 1e-6 / 3e-6 at beta 0.1
    assert pick.n_neighbours == 4
    assert pick.neighbourhood_mean == pytest.approx(mean(neighbours + [0.72]))
    assert pick.neighbourhood_min == pytest.approx(0.66)
    assert pick.best_single_hparams["beta"] == 0.5 and pick.best_single_score == pytest.approx(0.95)
    # the lucky run's neighbours: (0.3, 1e-6) = 0.2 and (0.5, 2e-6) = 0.2
    assert pick.best_single_neighbourhood_mean == pytest.approx(mean([0.95, 0.2, 0.2]))
    assert "0.720" in pick.evidence and "0.950" in pick.evidence
    table = analysis.neighbourhoods(sweep).table
    corner = table[(table["beta"] == 0.3) & (table["learning_rate"] == 3e-6)].iloc[0]
    assert corner["n_planned_neighbours"] == 3 and corner["n_neighbours"] == 2  # (0.5, 3e-6) failed
    assert analysis.recommend(sweep, by="min").hparams["beta"] == 0.1


def test_recommendation_to_dict_and_bad_criterion(tmp_path):
    sweep = load_sweep(grid_sweep(tmp_path / "grid"))
    pick = analysis.recommend(sweep)
    assert pick.to_dict()["run_ids"] == pick.run_ids and pick.to_dict()["by"] == "mean"
    with pytest.raises(ValueError, match="'mean' or 'min'"):
        analysis.recommend(sweep, by="max")
