"""The figures, each drawn from its table (``posweep.analysis.tables`` / ``search``).

In: a table, and the ``Sweep`` for the SFT score (and, for F1/F4–F7, each run's point; for the sample
ECDFs, the samples of the run ids the table lists). Out: a matplotlib ``Figure`` (no pyplot, no global
state), or None where the table has nothing to draw. One colour per method in every figure: the method
registry's order (``posweep.losses.METHODS``) over a fixed palette, SFT in grey.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from posweep.analysis.load import Sweep, method_order
from posweep.analysis.tables import pooled_values
from posweep.losses import METHODS

__all__ = ["PALETTE", "SFT_COLOUR", "colour", "expected_max_curve", "head_to_head", "kl_vs_score",
           "method_order", "sample_distributions", "score_distribution", "seed_intervals", "sensitivity"]

# matplotlib's tab10 without its grey (in the order dpo, ln_dpo, simpo, r_dpo, ipo, cdpo, hinge, cpo, orpo
# had before), then dark tab20b/tab20c shades, then tab20's light ones: 27 colours for the registry's methods.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1",
           "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d")
SFT_COLOUR = "#7f7f7f"
SAMPLE_METRIC_LABELS = {"length": "response length (policy tokens)", "kl": "KL vs SFT (nats)",
                        "ln_kl": "length-normalized KL vs SFT (nats / token)"}


def colour(method: str) -> str:
    """The fixed colour of ``method``: its registry position in ``PALETTE`` (SFT grey; a method the registry
    does not know gets a stable colour from the palette's spare entries)."""
    if method == "sft":
        return SFT_COLOUR
    names = list(METHODS)
    if method in names:
        return PALETTE[names.index(method) % len(PALETTE)]
    spare = PALETTE[len(names):] or PALETTE
    return spare[sum(map(ord, method)) % len(spare)]


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
    # A bare Figure (no pyplot): no global state, nothing to close, savefig uses the Agg canvas.
    figure = Figure(figsize=(width, height), layout="constrained", dpi=100)
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def _sft_line(ax, sft_score: float, orientation: str = "h") -> None:
    if np.isfinite(sft_score):
        line = ax.axhline if orientation == "h" else ax.axvline
        line(sft_score, color=colour("sft"), linestyle="--", linewidth=1.2, label=f"SFT ({sft_score:.3g})")


def _finish(ax, sweep: Sweep, xlabel: str, ylabel: str, title: str) -> None:
    """The SFT line, axis labels, title and a light grid."""
    _sft_line(ax, sweep.sft_score)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _grid_axis(ax, values) -> None:
    """x ticks at the grid's own values (log scale when they span a factor of 10 or more)."""
    values = np.unique([v for v in values if np.isfinite(v)])
    if len(values) and values.min() > 0 and values.max() / values.min() >= 10:
        ax.set_xscale("log")
        ax.minorticks_off()
    if len(values) <= 8:
        ax.set_xticks(values, [f"{v:g}" for v in values])


def score_distribution(table: pd.DataFrame, sweep: Sweep) -> Figure:
    """F1: per method of the table, a box plot of its runs' mean scores with every run as a jittered dot."""
    methods = list(table["method"])
    done = sweep.done
    figure, (ax,) = _figure(1.2 + 1.1 * max(len(methods), 2), 4.0)
    rng = np.random.default_rng(0)  # fixed jitter: the same sweep gives the same picture
    for position, method in enumerate(methods):
        scores = done.loc[done["method"] == method, "mean_score"].to_numpy()
        ax.boxplot([scores], positions=[position], widths=0.55, showfliers=False,
                   medianprops={"color": "black"}, boxprops={"color": colour(method)},
                   whiskerprops={"color": colour(method)}, capprops={"color": colour(method)})
        ax.scatter(position + rng.uniform(-0.15, 0.15, len(scores)), scores, s=18, alpha=0.75,
                   color=colour(method), zorder=3)
    _sft_line(ax, sweep.sft_score)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("mean score (one point per run)")
    ax.set_title("Mean score over each method's grid")
    if np.isfinite(sweep.sft_score):
        ax.legend(loc="best", fontsize=8)
    return figure


def head_to_head(table: pd.DataFrame, which: str = "best") -> Figure | None:
    """T3: the win-rate matrix as a heat map; None with fewer than two methods."""
    methods = list(table.index)
    if len(methods) < 2:
        return None
    matrix = table[methods].to_numpy(float)
    figure, (ax,) = _figure(1.8 + 0.75 * len(methods), 1.2 + 0.65 * len(methods))
    image = ax.imshow(matrix, cmap="RdBu", vmin=0, vmax=1)
    for i in range(len(methods)):
        for j in range(len(methods)):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if abs(matrix[i, j] - 0.5) > 0.3 else "black")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel("column method")
    ax.set_ylabel("row method")
    ax.set_title(f"{'Best' if which == 'best' else '75th-percentile'} runs: row beats column")
    figure.colorbar(image, ax=ax, shrink=0.8, label="win rate (ties ½)")
    return figure


def sample_distributions(table: pd.DataFrame, sweep: Sweep, metric: str) -> Figure | None:
    """F2/F3/F9: one panel per top-k%, one empirical CDF per method over the samples of the table's
    ``run_ids``; None when the table holds no sample."""
    if not len(table) or not table["n_samples"].sum():
        return None
    top_k_percent = list(dict.fromkeys(table["top_k_percent"]))
    figure, axes = _figure(3.6 * len(top_k_percent), 3.4, ncols=len(top_k_percent))
    for ax, k in zip(axes, top_k_percent):
        for row in table[table["top_k_percent"] == k].itertuples(index=False):
            values = np.sort(pooled_values(sweep, row.run_ids.split(";"), metric)[0])
            if len(values):
                n_runs = int(row.n_runs)
                ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                        color=colour(row.method), label=f"{row.method} ({n_runs} run{'s' * (n_runs > 1)})")
        ax.set_title(f"top {k:g}% runs")
        ax.set_xlabel(SAMPLE_METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("share of samples ≤ x")
    return figure


def sensitivity(table: pd.DataFrame, sweep: Sweep) -> Figure | None:
    """F4–F7: every run of the table's method as a dot against the table's hyperparameter, the mean as a
    line, the min–max range as a band; None for an empty table."""
    if not len(table):
        return None
    method, param = table["method"].iloc[0], table["param"].iloc[0]
    runs = sweep.done[sweep.done["method"] == method]
    figure, (ax,) = _figure(4.2, 3.2)
    ax.fill_between(table["value"], table["min"], table["max"], color=colour(method), alpha=0.15,
                    label="min–max over the rest")
    ax.plot(table["value"], table["mean"], marker="o", color=colour(method), label="mean")
    ax.scatter(runs[param], runs["mean_score"], s=10, color=colour(method), alpha=0.5)
    _finish(ax, sweep, param, "mean score", f"{method}: score vs {param}")
    _grid_axis(ax, table["value"])
    ax.legend(fontsize=7)
    return figure


def kl_vs_score(table: pd.DataFrame, sweep: Sweep) -> Figure:
    """F8: one point per run of the table (runs without a mean LN-KL left out), coloured by method."""
    missing = table["ln_kl"].isna()
    figure, (ax,) = _figure(5.6, 4.0)
    for method in method_order(table["method"]):
        rows = table[(table["method"] == method) & ~missing]
        ax.scatter(rows["ln_kl"], rows["mean_score"], s=22, alpha=0.8, color=colour(method), label=method)
    _finish(ax, sweep, SAMPLE_METRIC_LABELS["ln_kl"], "mean score", "Divergence from SFT vs score (one point per run)")
    if len(table):
        ax.legend(fontsize=8)
    return figure


def expected_max_curve(table: pd.DataFrame, sweep: Sweep, replacement: bool = False) -> Figure:
    """The expected-max curves of the table, ± std as a band (``replacement`` as the table was computed)."""
    figure, (ax,) = _figure(5.6, 4.0)
    for name in method_order(table["method"]):
        curve = table[table["method"] == name]
        ax.plot(curve["n_trials"], curve["expected_max"], marker="o", markersize=3, color=colour(name), label=name)
        ax.fill_between(curve["n_trials"], curve["expected_max"] - curve["std"],
                        curve["expected_max"] + curve["std"], color=colour(name), alpha=0.15)
    _finish(ax, sweep, f"hyperparameter settings tried at random ({'with' if replacement else 'without'} replacement)",
            "expected best mean score (± std)", "Expected best score vs search budget")
    if len(table):
        ax.legend(fontsize=8)
    return figure


def seed_intervals(table: pd.DataFrame, sweep: Sweep, confidence: float = 0.95) -> Figure | None:
    """Each multi-seed setting's mean with its t-interval (``confidence`` as the table was computed);
    None for an empty table."""
    if not len(table):
        return None
    figure, (ax,) = _figure(8.5, 1.2 + 0.28 * len(table))
    for position, row in enumerate(table.itertuples(index=False)):
        ax.errorbar(row.mean, position, xerr=[[row.mean - row.ci_low], [row.ci_high - row.mean]], fmt="o",
                    color=colour(row.method), capsize=3)
    ax.set_yticks(range(len(table)), [f"{r.method}: {r.hparams}" for r in table.itertuples()], fontsize=7)
    _sft_line(ax, sweep.sft_score, orientation="v")
    ax.invert_yaxis()
    ax.set_xlabel(f"mean score across seeds ({confidence:.0%} t-interval)")
    ax.grid(alpha=0.3)
    return figure
