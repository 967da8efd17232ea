"""Figures drawn from their tables: what each one draws, when there is nothing to draw, and the colours."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex

from posweep import analysis
from posweep.analysis import figures, load_sweep
from posweep.losses import METHODS
from tests.analysis.sweep_files import RUNS, finished, mean, sample_lengths, write_sweep


def test_colours_follow_the_registry():
    # the colours the first figures used, kept
    assert [figures.colour(m) for m in ("dpo", "ln_dpo", "simpo")] == ["#1f77b4", "#ff7f0e", "#2ca02c"]
    assert figures.colour("sft") == "#7f7f7f" and figures.SFT_COLOUR not in figures.PALETTE
    assert len(set(figures.PALETTE)) == len(figures.PALETTE) >= 25
    registry = [figures.colour(m) for m in METHODS]
    assert len(set(registry)) == len(registry)
    assert figures.colour("not-a-method") == figures.colour("not-a-method") in figures.PALETTE
    assert figures.colour("not-a-method") not in registry


def test_sample_ecdfs_are_drawn_from_the_run_ids_of_the_table(sweep):
    table = analysis.sample_distributions(sweep, "length", top_k_percent=(1, 50)).table
    figure = figures.sample_distributions(table, sweep, "length")
    axes = figure.axes[:2]
    assert [ax.get_title() for ax in axes] == ["top 1% runs", "top 50% runs"]
    for ax, k in zip(axes, (1, 50)):
        lines = {line.get_label().split(" ")[0]: line for line in ax.get_lines()}
        assert list(lines) == ["dpo", "ln_dpo", "simpo"]
        for method, line in lines.items():
            ranked = sorted(finished(method), key=lambda r: -mean(r[3]))
            count = int(table[(table["method"] == method) & (table["top_k_percent"] == k)]["n_runs"].iloc[0])
            lengths = sorted(n for run in ranked[:count] for n in sample_lengths(RUNS.index(run)))
            assert list(line.get_xdata()) == lengths
            assert to_hex(line.get_color()) == figures.colour(method)


def test_figures_follow_their_tables(sweep):
    h2h = analysis.head_to_head(sweep).table
    heat = figures.head_to_head(h2h, "best")
    image = heat.axes[0].get_images()[0].get_array()
    assert np.allclose(np.asarray(image), h2h[list(h2h.index)].to_numpy(float), equal_nan=True)
    assert heat.axes[0].get_title() == "Best runs: row beats column"
    assert figures.head_to_head(h2h.loc[["dpo"], ["run_id", "mean_score", "dpo"]]) is None  # one method

    sensitivity = analysis.sensitivity(sweep, "dpo", "beta").table
    ax = figures.sensitivity(sensitivity, sweep).axes[0]
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx(list(sensitivity["mean"]))
    assert ax.get_title() == "dpo: score vs beta"
    assert figures.sensitivity(analysis.sensitivity(sweep, "simpo", "tau").table, sweep) is None

    f1 = figures.score_distribution(analysis.score_distribution(sweep).table, sweep).axes[0]
    assert [t.get_text() for t in f1.get_xticklabels()] == ["dpo", "ln_dpo", "simpo"]
    sft = [line for line in f1.get_lines() if line.get_label().startswith("SFT")]
    assert len(sft) == 1 and sft[0].get_ydata()[0] == pytest.approx(sweep.sft_score)

    kl = figures.kl_vs_score(analysis.kl_vs_score(sweep).table, sweep).axes[0]
    assert [c.get_label() for c in kl.collections] == ["dpo", "ln_dpo", "simpo"]
    assert "with replacement" in figures.expected_max_curve(
        analysis.expected_max_curve(sweep, replacement=True).table, sweep, replacement=True).axes[0].get_xlabel()
    assert figures.seed_intervals(analysis.seed_intervals(sweep).table, sweep) is None  # one seed per setting


def test_no_samples_no_ecdf(tmp_path):
    runs = [run for run in RUNS if run[1] in ("sft", "dpo")]
    sweep = load_sweep(write_sweep(tmp_path / "bare", runs, without_samples=tuple(r[0] for r in runs)))
    result = analysis.sample_distributions(sweep, "kl")
    assert result.table["n_samples"].sum() == 0 and any("no figure" in n for n in result.notes)
    assert figures.sample_distributions(result.table, sweep, "kl") is None
