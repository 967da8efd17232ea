"""The report's sections: every analysis of ``posweep.analysis`` as a titled part with its tables, figures,
notes and the prompts it uses.

In: a ``Sweep`` and its ``Recommendation``. Out: ``build_sections(sweep, recommendation) -> list[Section]`` in
reading order; ``prompts_line`` says which prompts a section chose runs on and reported numbers from;
``metric_notes`` defines the metrics for this sweep (its KL temperature and split).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from matplotlib.figure import Figure

from posweep import analysis
from posweep.analysis import Recommendation, Sweep, figures, search, tables
from posweep.metrics import METRIC_NAMES
from posweep.report.render import format_value

EXPECTED_MAX_COLUMNS = (1, 2, 3, 5, 10, 20)  # budgets shown in the page's expected-max table


@dataclass
class Section:
    """One part of the report: ``tables`` go to CSV (by name), ``shown`` to the page (caption, table)."""

    id: str
    title: str
    description: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    shown: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    text: str = ""  # extra paragraph (plain text, escaped when rendered)
    prompts: str = ""  # which prompts the section's choices and numbers come from


def prompts_line(sweep: Sweep, chosen: str | None, reported: str) -> str:
    """Which prompts a section uses: what it chose runs by (``chosen``, or None when it chooses nothing) and
    what its numbers are, on the selection / held-out prompts, or on the one shared set without a split."""
    info = sweep.info.get("selection") or {}
    if sweep.has_split:
        text = f"{reported} from the {info.get('n_held_out')} held-out prompts"
        return (f"{chosen} on the {info.get('n_selection')} selection prompts; " + text if chosen else text) + "."
    test_prompts = sweep.info.get("test_prompts")
    n = test_prompts.get("n") if isinstance(test_prompts, dict) else None
    where = f"the same {n} test prompts" if n else "the same test prompts"
    return (f"{chosen} and {reported.lower()} on {where} (no held-out split)" if chosen
            else f"{reported} on {where}") + "."


def build_sections(sweep: Sweep, recommendation: Recommendation | None) -> list[Section]:
    """Every analysis of posweep.analysis, as report sections, in reading order."""
    sections = [_recommendation_section(sweep, recommendation)]

    best = tables.best_runs(sweep)
    metric_columns = ["method"] + [c for m in METRIC_NAMES for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
    changes = best.table[["method"] + [f"{m}_vs_dpo_pct" for m in METRIC_NAMES]]
    changes = changes.rename(columns={f"{m}_vs_dpo_pct": m for m in METRIC_NAMES})
    sections.append(Section(
        "t1-best-runs", "T1 · Best run per method",
        "The best run of each method by mean score, every metric with its 95% bootstrap interval, and the "
        "% change of each metric against DPO's best run (SFT first, for reference).",
        tables={"t1_best_runs": best.table},
        prompts=prompts_line(sweep, "Best runs chosen", "Every metric"),
        shown=[("Best runs", best.table[["method", "run_id", "n_runs", "hparams"]]),
               ("Metrics [95% interval]", _with_intervals(best.table[metric_columns])),
               ("% change against DPO's best run", changes)],
        notes=best.notes))

    distribution = tables.score_distribution(sweep)
    sections.append(Section(
        "f1-score-distribution", "F1 · Score over each method's grid",
        "How the mean score spreads over each method's hyperparameter grid (one dot per run; the dashed line "
        "is the SFT model), and the share of runs that end up below SFT.",
        tables={"f1_score_distribution": distribution.table}, shown=[("", distribution.table)],
        prompts=prompts_line(sweep, None, "Mean scores"),
        figures=_figures("f1_score_distribution", figures.score_distribution(distribution.table, sweep)),
        notes=distribution.notes))

    best_h2h, p75_h2h = tables.head_to_head(sweep, "best"), tables.head_to_head(sweep, "p75")
    sections.append(Section(
        "t3-head-to-head", "T3 · Head-to-head win rates",
        "Per-prompt win rate of the row method's run against the column method's run (ties count ½), for each "
        "method's best run and its 75th-percentile run (the run that beats about 75% of the method's other "
        "runs). A method whose rate drops sharply from best to 75th percentile needs a lucky search.",
        tables={"t3_head_to_head_best": best_h2h.table, "t3_head_to_head_p75": p75_h2h.table},
        prompts=prompts_line(sweep, "Best and 75th-percentile runs chosen", "Win rates"),
        shown=[("Best runs", best_h2h.table), ("75th-percentile runs", p75_h2h.table)],
        figures={**_figures("t3_head_to_head_best", figures.head_to_head(best_h2h.table, "best")),
                 **_figures("t3_head_to_head_p75", figures.head_to_head(p75_h2h.table, "p75"))},
        notes=best_h2h.notes + p75_h2h.notes))

    for section_id, title, metric, what in [
            ("f2-length", "F2 · Response length", "length", "the response length"),
            ("f3-kl", "F3 · KL from SFT", "kl", "the sequence-level KL from the SFT model"),
            ("f9-ln-kl", "F9 · Length-normalized KL", "ln_kl", "the per-token (length-normalized) KL")]:
        result = tables.sample_distributions(sweep, metric)
        name = section_id.replace("-", "_")
        sections.append(Section(
            section_id, title,
            f"The distribution over samples of {what} for each method's top 1%, 10% and 25% runs by mean score "
            "(at least one run each; the table says how many). Curves to the left mean smaller values.",
            tables={name: result.table}, shown=[("", result.table.drop(columns=["run_ids"]))],
            prompts=prompts_line(sweep, "Top-k% runs chosen", "Their samples"),
            figures=_figures(name, figures.sample_distributions(result.table, sweep, metric)), notes=result.notes))

    pairs = tables.sensitivity_params(sweep)
    results = {pair: tables.sensitivity(sweep, *pair) for pair in pairs}
    sensitivity_table = pd.concat([r.table for r in results.values()], ignore_index=True) if results else \
        pd.DataFrame(columns=["method", "param", "value", "n_runs", "mean", "min", "max", "std"])
    sections.append(Section(
        "f4-f7-sensitivity", "F4–F7 · Sensitivity to hyperparameters",
        "Mean score against one hyperparameter at a time (each method's own, and the learning rate): the line "
        "is the mean over the other hyperparameters, the band their min–max. A flat, narrow band is robust.",
        tables={"f4_f7_sensitivity": sensitivity_table}, shown=[("", sensitivity_table)],
        prompts=prompts_line(sweep, None, "Mean scores"),
        figures={f"sensitivity_{m}_{p}": figure for (m, p), r in results.items()
                 if (figure := figures.sensitivity(r.table, sweep)) is not None},
        notes=[n for r in results.values() for n in r.notes]
        + ([] if pairs else ["no hyperparameter of any method was tried with two values or more"])))

    kl_score = tables.kl_vs_score(sweep)
    sections.append(Section(
        "f8-kl-vs-score", "F8 · Divergence against score",
        "Each run's mean length-normalized KL from SFT against its mean score: how far a method moves from "
        "SFT to reach a score. One point per run (the per-run numbers are in f8_kl_vs_score.csv).",
        tables={"f8_kl_vs_score": kl_score.table}, prompts=prompts_line(sweep, None, "KLs and scores"),
        figures=_figures("f8_kl_vs_score", figures.kl_vs_score(kl_score.table, sweep)),
        notes=kl_score.notes))

    expected = search.expected_max_curve(sweep)
    sections.append(Section(
        "expected-max", "Expected best score against search budget",
        "The expected best mean score (± std) when n hyperparameter settings are tried at random, without "
        "replacement, from each method's grid (Dodge et al. 2019, 'expected validation performance'). A curve "
        "that starts high needs little search.",
        tables={"expected_max": expected.table}, shown=[("Expected best mean score", _expected_max_wide(expected.table))],
        prompts=prompts_line(sweep, "The best of n settings chosen", "Its score"),
        figures=_figures("expected_max", figures.expected_max_curve(expected.table, sweep)), notes=expected.notes))

    seeds = search.seed_intervals(sweep)
    sections.append(Section(
        "seed-intervals", "Seed variation",
        "Settings run with several seeds: the mean score across seeds and its 95% t-interval. Differences "
        "between methods smaller than these intervals are noise.",
        tables={"seed_intervals": seeds.table}, prompts=prompts_line(sweep, None, "Mean scores"),
        shown=[("", seeds.table.drop(columns=["run_ids"]))] if len(seeds.table) else [],
        figures=_figures("seed_intervals", figures.seed_intervals(seeds.table, sweep)), notes=seeds.notes))

    collapse = search.collapse_flags(sweep)
    limits = search.CollapseThresholds()
    flagged = collapse.table[collapse.table["flagged"]]
    sections.append(Section(
        "collapse", "Collapse detection",
        f"Runs whose samples are too often empty (> {limits.empty_share:.0%}), repetitive (> "
        f"{limits.repetitive_share:.0%} of samples repeat at least {limits.repeated_ngram_share:.0%} of their word "
        f"{limits.ngram}-grams) or truncated at the token limit (> {limits.truncated_share:.0%}). "
        "Every finished run's shares are in collapse_flags.csv.",
        tables={"collapse_flags": collapse.table}, prompts=prompts_line(sweep, None, "Shares"),
        shown=[(f"{len(flagged)} of {len(collapse.table)} finished run(s) flagged", flagged)] if len(flagged) else [],
        text="" if len(flagged) else f"No run is flagged ({len(collapse.table)} finished run(s) checked).",
        notes=collapse.notes))
    sections.append(Section("metrics", "Metric notes", "How each number of this report is defined "
                            "(docs/DESIGN.md section 3).", text=metric_notes(sweep), prompts=sweep.prompts_note))
    return sections


def metric_notes(sweep: Sweep) -> str:
    """What the metrics mean, with this sweep's KL temperature and split."""
    kl = sweep.info.get("kl") or {}
    temperature, top_p = kl.get("temperature"), kl.get("policy_top_p")
    if kl.get("greedy"):
        kl_text = ("Sampling was greedy, so KL is the log-likelihood ratio log π_run(y) − log π_SFT(y) of each "
                   "greedy response at temperature 1 (a point mass has no useful KL).")
    elif temperature is not None:
        nucleus = f", the run's side renormalised over its top-p = {top_p:g} nucleus" if top_p and top_p < 1 else ""
        kl_text = (f"KL is Σ_t log π_run,T(y_t) − log π_SFT,T(y_t) over each sampled response, stop token included, "
                   f"with both log-probs at the sampling temperature T = {temperature:g}{nucleus}: its mean is an "
                   "unbiased estimate of KL(π_run,T ‖ π_SFT,T), the divergence between the distributions sampled.")
    else:
        kl_text = ("KL is the summed log-prob difference of each sampled response under the run and SFT "
                   "(this sweep does not record the temperature it used; sweeps before posweep's evaluation rules 2 "
                   "took temperature-1 log-probs of temperature-T samples, which is not a KL).")
    return (f"Mean score: the judge's score of one sampled response per prompt. Win vs chosen / vs SFT: the share of "
            f"prompts where that score beats the dataset's chosen response / the SFT model's sample (ties ½). {kl_text} "
            "LN-KL is KL / length, per token. Length counts response tokens, stop token excluded; truncated "
            "responses hit the token limit. Intervals are 95% bootstrap intervals of the mean over prompts.")


def _recommendation_section(sweep: Sweep, recommendation: Recommendation | None) -> Section:
    table = analysis.neighbourhoods(sweep).table
    section = Section(
        "recommendation", "Recommendation",
        "The method and hyperparameters to start from, chosen for robustness: each setting is scored by the mean "
        "of its own score and its grid neighbours' (settings one grid step away in one hyperparameter), so a "
        "good region beats one lucky run.",
        tables={"neighbourhoods": table},
        prompts=prompts_line(sweep, "Settings and neighbourhoods ranked", "The score column"),
        shown=[("Best neighbourhoods (top 10; every setting in neighbourhoods.csv)",
                table[["method", "hparams", "score", "n_neighbours", "n_planned_neighbours", "neighbourhood_mean",
                       "neighbourhood_min"]].head(10).rename(columns={
                           "n_neighbours": "neighbours", "n_planned_neighbours": "of planned",
                           "neighbourhood_mean": "neighbourhood mean", "neighbourhood_min": "worst"}))])
    if recommendation is None:
        section.text = "No recommendation: no preference-optimization run finished."
        section.notes.append("no finished run to recommend")
    else:
        section.text = recommendation.evidence
    return section


def _figures(name: str, figure: Figure | None) -> dict[str, Figure]:
    return {name: figure} if figure is not None else {}


def _with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """Fold ``x``, ``x_ci_low``, ``x_ci_high`` columns into one text column ``x [low, high]`` for display."""
    shown = table.copy()
    for column in list(shown.columns):
        low, high = f"{column}_ci_low", f"{column}_ci_high"
        if low in shown.columns and high in shown.columns:
            shown[column] = [f"{format_value(v)} [{format_value(lo)}, {format_value(hi)}]" if pd.notna(lo) else format_value(v)
                             for v, lo, hi in zip(shown[column], shown[low], shown[high])]
            shown = shown.drop(columns=[low, high])
    return shown


def _expected_max_wide(table: pd.DataFrame) -> pd.DataFrame:
    """Methods as rows, a few budgets n as columns (``mean ± std``), and the whole grid (the best run)."""
    if not len(table):
        return table
    budgets = [n for n in EXPECTED_MAX_COLUMNS if n < table["n_trials"].max()]
    rows = []
    for method in analysis.method_order(table["method"]):
        curve = table[table["method"] == method].set_index("n_trials")
        row = {"method": method}
        for n in budgets:
            row[f"n={n}"] = f"{curve.loc[n, 'expected_max']:.3f} ± {curve.loc[n, 'std']:.3f}" if n in curve.index else ""
        row["all settings"] = f"{curve['expected_max'].iloc[-1]:.3f} (n={int(curve.index[-1])})"
        rows.append(row)
    return pd.DataFrame(rows)
