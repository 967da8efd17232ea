"""With a selection split every choice (best, 75th-percentile and top-k% runs, the recommendation, the
expected best of n) ranks on the selection prompts and every reported number comes from the held-out ones.

The sweep is built so that the two disagree: on the selection prompts (p0, p1) the runs rank one way, on the
held-out prompts (p2, p3) the other way."""

from __future__ import annotations

import pytest

from posweep import analysis
from posweep.analysis import load_sweep
from posweep.metrics import win_rate
from posweep.report import write_report
from tests.analysis.sweep_files import SFT_SCORES, mean, write_sweep

SELECTION = ("p0", "p1")
RUNS = [
    ("sft-a", "sft", {"learning_rate": 1e-5, "epochs": 1}, SFT_SCORES),
    ("dpo-1", "dpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 0.1}, [0.9, 0.9, 0.1, 0.1]),  # best on selection
    ("dpo-2", "dpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 0.3}, [0.5, 0.5, 0.5, 0.5]),
    ("dpo-3", "dpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 0.5}, [0.1, 0.2, 0.9, 0.9]),  # best held out
    ("simpo-1", "simpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 2.0}, [0.8, 0.8, 0.3, 0.2]),
    ("simpo-2", "simpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 5.0}, [0.2, 0.2, 0.8, 0.8]),
]
GRIDS = {"dpo": {"beta": [0.1, 0.3, 0.5]}, "simpo": {"beta": [2.0, 5.0]}}


def held_out(scores):
    return mean(scores[2:])


@pytest.fixture
def split_sweep(tmp_path):
    return load_sweep(write_sweep(tmp_path / "split", RUNS, selection=SELECTION, grids=GRIDS))


def test_rankings_from_selection_numbers_from_held_out(split_sweep):
    assert split_sweep.has_split and split_sweep.rank_column == "selection_mean_score"
    best = analysis.best_runs(split_sweep).table.set_index("method")
    assert best.loc["dpo", "run_id"] == "dpo-1" and best.loc["simpo", "run_id"] == "simpo-1"
    assert best.loc["dpo", "mean_score"] == pytest.approx(held_out(RUNS[1][3]))  # 0.1, not its 0.9
    assert best.loc["dpo", "selection_mean_score"] == pytest.approx(0.9)
    assert best.loc["sft", "mean_score"] == pytest.approx(held_out(SFT_SCORES))
    # T3: the selection-best runs, compared on the held-out prompts only
    h2h = analysis.head_to_head(split_sweep, "best").table
    assert h2h.loc["dpo", "simpo"] == pytest.approx(win_rate([0.1, 0.1], [0.3, 0.2]).mean())
    p75 = analysis.head_to_head(split_sweep, "p75").table  # dpo ascending by selection: 3, 2, 1 -> position 2
    assert p75.loc["dpo", "run_id"] == "dpo-1"
    # top-k%: chosen on selection, pooled over the held-out samples (2 per run)
    lengths = analysis.sample_distributions(split_sweep, "length").table
    top = lengths[(lengths["method"] == "dpo") & (lengths["top_k_percent"] == 1)].iloc[0]
    assert top["run_ids"] == "dpo-1" and top["n_samples"] == 2
    # F1 reports held-out mean scores
    distribution = analysis.score_distribution(split_sweep).table.set_index("method")
    assert distribution.loc["dpo", "max"] == pytest.approx(0.9)  # dpo-3's held-out score


def test_recommendation_and_expected_max_choose_on_selection(split_sweep):
    pick = analysis.recommend(split_sweep)
    assert pick.method == "dpo" and pick.hparams["beta"] == 0.1  # neighbourhood (0.9 + 0.5) / 2 on selection
    assert pick.score == pytest.approx(0.1) and "held-out" in pick.evidence and "selection prompts" in pick.evidence
    assert pick.neighbourhood_mean == pytest.approx((0.9 + 0.5) / 2)
    curve = analysis.expected_max_curve(split_sweep, "dpo").table.set_index("n_trials")
    # all three settings tried: the selection-best (dpo-1) is chosen, and its held-out score is what you get
    assert curve.loc[3, "expected_max"] == pytest.approx(0.1)
    # one setting: the mean held-out score; two: P(chosen) by selection rank (1/3 for the middle, 2/3 the top)
    assert curve.loc[1, "expected_max"] == pytest.approx(mean([0.1, 0.5, 0.9]))
    assert curve.loc[2, "expected_max"] == pytest.approx(2 / 3 * 0.1 + 1 / 3 * 0.5)


def test_report_says_which_prompts_each_table_uses(split_sweep, tmp_path):
    page = write_report(split_sweep.root).read_text()
    assert "shared-prompts-banner" not in page
    assert "chosen on the 2 selection prompts" in page and "from the 2 held-out prompts" in page
    unsplit = write_report(write_sweep(tmp_path / "plain", RUNS)).read_text()
    assert 'id="shared-prompts-banner"' in unsplit and "ranked and reported on the same 4 prompts" in unsplit
    assert "on the same 4 test prompts (no held-out split)" in unsplit
