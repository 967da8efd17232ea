"""T1, F1, T3, F2/F3/F9, F4–F7 and F8 tables on the synthetic sweep of ``sweep_files`` (every number recomputed
by hand), and every analysis on partial sweeps."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from posweep import analysis
from posweep.analysis import figures, load_sweep
from posweep.metrics import win_rate
from tests.analysis.sweep_files import (
    RUNS,
    SFT_SCORES,
    finished,
    mean,
    sample_kls,
    sample_lengths,
    spec,
    write_sweep,
)


def test_best_runs_and_change_against_dpo(sweep):
    table = analysis.best_runs(sweep).table.set_index("method")
    assert list(table.index) == ["sft", "dpo", "ln_dpo", "simpo"]
    best_dpo = max(finished("dpo"), key=lambda r: mean(r[3]))
    assert best_dpo[0] == "dpo-2"
    for method in ["dpo", "ln_dpo", "simpo"]:
        best = max(finished(method), key=lambda r: mean(r[3]))
        assert table.loc[method, "run_id"] == best[0]
        assert table.loc[method, "mean_score"] == pytest.approx(mean(best[3]))
        assert table.loc[method, "mean_score_ci_high"] == pytest.approx(mean(best[3]) + 0.05)
        expected = 100 * (mean(best[3]) - mean(best_dpo[3])) / abs(mean(best_dpo[3]))
        assert table.loc[method, "mean_score_vs_dpo_pct"] == pytest.approx(expected)
        index = RUNS.index(best)
        expected_length = 100 * (mean(sample_lengths(index)) - mean(sample_lengths(RUNS.index(best_dpo))))
        assert table.loc[method, "length_vs_dpo_pct"] == pytest.approx(
            expected_length / mean(sample_lengths(RUNS.index(best_dpo))))
    assert table.loc["sft", "mean_score"] == pytest.approx(mean(SFT_SCORES))
    assert table.loc["dpo", "n_runs"] == 4 and "beta=0.5" in table.loc["dpo", "hparams"]


def test_score_distribution_share_below_sft(sweep):
    result = analysis.score_distribution(sweep)
    table = result.table.set_index("method")
    for method in ["dpo", "ln_dpo", "simpo"]:
        scores = sorted(mean(r[3]) for r in finished(method))
        assert table.loc[method, "n_runs"] == len(scores)
        assert table.loc[method, "min"] == pytest.approx(scores[0])
        assert table.loc[method, "max"] == pytest.approx(scores[-1])
        assert table.loc[method, "share_below_sft"] == pytest.approx(
            sum(s < mean(SFT_SCORES) for s in scores) / len(scores))
    assert table.loc["dpo", "share_below_sft"] == pytest.approx(0.5)  # 0.3 and 0.15 against 0.5
    assert figures.score_distribution(result.table, sweep) is not None


def hand_win_rate(a: list[float], b: list[float]) -> float:
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def test_p75_position_matches_numpy_nearest_quantile():
    for n in range(1, 12):
        values = np.arange(n, dtype=float)
        assert values[analysis.p75_position(n)] == np.quantile(values, 0.75, method="nearest")


@pytest.mark.parametrize("which", ["best", "p75"])
def test_head_to_head_win_rates(sweep, which):
    table = analysis.head_to_head(sweep, which).table
    chosen = {}
    for method in ["dpo", "ln_dpo", "simpo"]:
        runs = sorted(finished(method), key=lambda r: mean(r[3]))  # ascending
        chosen[method] = runs[-1] if which == "best" else runs[analysis.p75_position(len(runs))]
    # 4 dpo runs -> position round(2.25) = 2: the second best; 3 runs -> round(1.5) = 2: the best
    if which == "p75":
        assert chosen["dpo"][0] == "dpo-3" and chosen["simpo"][0] == "simpo-1"
    for row, column in itertools.permutations(chosen, 2):
        assert table.loc[row, "run_id"] == chosen[row][0]
        assert table.loc[row, column] == pytest.approx(hand_win_rate(chosen[row][3], chosen[column][3]))
        assert table.loc[row, column] + table.loc[column, row] == pytest.approx(1.0)
    if which == "best":  # simpo-1 vs dpo-2: tie, win, win, tie
        assert table.loc["simpo", "dpo"] == pytest.approx(0.75)
    assert np.isnan(table.loc["dpo", "dpo"])


def test_sample_distributions_top_k_counts_and_values(sweep):
    table = analysis.sample_distributions(sweep, "length", top_k_percent=(1, 50, 100)).table
    table = table.set_index(["method", "top_k_percent"])
    for method in ["dpo", "ln_dpo", "simpo"]:
        ranked = sorted(finished(method), key=lambda r: -mean(r[3]))
        for k in (1, 50, 100):
            count = max(1, math.ceil(k * len(ranked) / 100))
            assert table.loc[(method, k), "n_runs"] == count
            lengths = [n for run in ranked[:count] for n in sample_lengths(RUNS.index(run))]
            assert table.loc[(method, k), "n_samples"] == len(lengths)
            assert table.loc[(method, k), "mean"] == pytest.approx(mean(lengths))
    assert table.loc[("dpo", 50), "n_runs"] == 2 and table.loc[("simpo", 50), "n_runs"] == 2
    kl = analysis.sample_distributions(sweep, "ln_kl").table.set_index(["method", "top_k_percent"])
    best_simpo = RUNS.index(spec("simpo-1"))
    expected = mean([k / n for k, n in zip(sample_kls(best_simpo), sample_lengths(best_simpo))])
    assert kl.loc[("simpo", 1), "mean"] == pytest.approx(expected)


def test_sensitivity_aggregates_over_other_hyperparameters(sweep):
    table = analysis.sensitivity(sweep, "dpo", "beta").table.set_index("value")
    for beta in (0.1, 0.5):
        scores = [mean(r[3]) for r in finished("dpo") if r[2]["beta"] == beta]
        assert table.loc[beta, "n_runs"] == len(scores) == 2
        assert table.loc[beta, "mean"] == pytest.approx(mean(scores))
        assert table.loc[beta, "min"] == pytest.approx(min(scores))
        assert table.loc[beta, "max"] == pytest.approx(max(scores))
    ratio = analysis.sensitivity(sweep, "simpo", "gamma_beta_ratio").table.set_index("value")
    assert ratio.loc[0.5, "mean"] == pytest.approx(mean([mean(spec("simpo-1")[3]), mean(spec("simpo-3")[3])]))
    pairs = analysis.sensitivity_params(sweep)
    assert ("simpo", "beta") in pairs and ("simpo", "gamma_beta_ratio") in pairs and ("dpo", "learning_rate") in pairs
    assert ("simpo", "learning_rate") not in pairs  # a single value: nothing to show
    empty = analysis.sensitivity(sweep, "simpo", "tau")
    assert empty.table.empty and empty.notes



def test_shared_prompt_win_rate_is_the_metrics_win_rate_on_shared_prompts():
    a = pd.Series([0.9, 0.5, np.nan, 0.1], index=["p0", "p1", "p2", "p3"])
    b = pd.Series([0.1, 0.5, 0.3, 0.7, 0.2], index=["p1", "p0", "p2", "p3", "p9"])
    rate, shared = analysis.shared_prompt_win_rate(a, b)
    assert shared == 3  # p2 has no score in a, p9 is not in a
    assert rate == pytest.approx(np.nanmean(win_rate([0.9, 0.5, 0.1], [0.5, 0.1, 0.7])))
    assert rate == pytest.approx(hand_win_rate([0.9, 0.5, 0.1], [0.5, 0.1, 0.7]))
    assert np.isnan(analysis.shared_prompt_win_rate(a, b.rename(index=lambda p: p + "x"))[0])


def test_sample_distributions_list_the_run_ids_of_each_group(sweep):
    table = analysis.sample_distributions(sweep, "kl", top_k_percent=(1, 50, 100)).table
    for row in table.itertuples():
        ranked = sorted(finished(row.method), key=lambda r: -mean(r[3]))
        assert row.run_ids.split(";") == [run[0] for run in ranked[:row.n_runs]]


def run_everything(sweep) -> list:
    """Every table, every figure drawn from its table, and the recommendation."""
    results = [analysis.best_runs(sweep), analysis.score_distribution(sweep), analysis.head_to_head(sweep),
               analysis.head_to_head(sweep, "p75"), analysis.kl_vs_score(sweep), analysis.expected_max_curve(sweep),
               analysis.collapse_flags(sweep), analysis.seed_intervals(sweep), analysis.neighbourhoods(sweep)]
    results += [analysis.sample_distributions(sweep, metric) for metric in ("length", "kl", "ln_kl")]
    results += [analysis.sensitivity(sweep, m, p) for m, p in analysis.sensitivity_params(sweep)]
    figures.score_distribution(results[1].table, sweep)
    figures.head_to_head(results[2].table, "best")
    figures.head_to_head(results[3].table, "p75")
    figures.kl_vs_score(results[4].table, sweep)
    figures.expected_max_curve(results[5].table, sweep)
    figures.seed_intervals(results[7].table, sweep)
    for metric, result in zip(("length", "kl", "ln_kl"), results[9:12]):
        figures.sample_distributions(result.table, sweep, metric)
    for result in results[12:]:
        figures.sensitivity(result.table, sweep)
    analysis.recommend(sweep)
    return results
def test_partial_sweep_without_dpo_and_missing_samples(tmp_path):
    runs = [run for run in RUNS if run[1] != "dpo"]
    sweep = load_sweep(write_sweep(tmp_path / "nodpo", runs, without_samples=("simpo-1",)))
    results = run_everything(sweep)
    best = results[0]
    assert best.table["mean_score_vs_dpo_pct"].isna().all() and any("DPO" in n for n in best.notes)
    h2h = analysis.head_to_head(sweep)
    assert "simpo" not in h2h.table.index and any("simpo" in n for n in h2h.notes)
    assert any("simpo-1" in note for note in sweep.notes)
    lengths = analysis.sample_distributions(sweep, "length").table.set_index(["method", "top_k_percent"])
    assert lengths.loc[("simpo", 1), "n_runs"] == 1 and lengths.loc[("simpo", 1), "n_samples"] == 0
    assert analysis.collapse_flags(sweep).table.set_index("run_id").loc["simpo-1", "source"] == "metrics.json"


def test_partial_sweep_single_method_one_run_and_failures(tmp_path):
    runs = [spec("sft-a"), spec("dpo-2"), spec("dpo-5"),
            ("simpo-x", "simpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 2.0, "gamma_beta_ratio": 0.5}, None)]
    sweep = load_sweep(write_sweep(tmp_path / "single", runs))
    results = run_everything(sweep)
    assert sweep.methods == ["dpo"]
    assert results[0].table.set_index("method").loc["dpo", "mean_score_vs_dpo_pct"] == pytest.approx(0)
    assert any("fewer than two methods" in n for n in results[2].notes)
    pick = analysis.recommend(sweep)
    assert pick.run_ids == ["dpo-2"] and pick.n_neighbours == 0 and "simply the best run" in pick.evidence
    assert any("failed" in note and "simpo: 1" in note for note in sweep.notes)
    assert "run simpo-x failed: RuntimeError: loss is nan" in sweep.notes


def test_partial_sweep_nothing_finished(tmp_path):
    runs = [spec("sft-a"), spec("dpo-5")]
    root = write_sweep(tmp_path / "empty", runs, sft_run_id=None)
    sweep = load_sweep(root)
    run_everything(sweep)
    assert analysis.recommend(sweep) is None
    assert sweep.sft_score == pytest.approx(mean(SFT_SCORES))  # from the SFT run in summary.csv
    with pytest.raises(FileNotFoundError, match="summary.csv"):
        load_sweep(tmp_path / "nowhere")
