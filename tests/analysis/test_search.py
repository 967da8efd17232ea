"""Expected max against enumeration, collapse flags on crafted samples (and their agreement with the demo
judge's repetition), multi-seed intervals."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from posweep import analysis
from posweep.analysis import CollapseThresholds, figures, load_sweep
from posweep.text import repeated_ngram_share
from tests.analysis.sweep_files import COLLAPSED_RESPONSES, SFT_SCORES, finished, mean, write_sweep


def brute_force_expected_max(values, n, replacement):
    draws = itertools.product(values, repeat=n) if replacement else itertools.combinations(values, n)
    maxima = [Fraction(max(draw)) for draw in draws]
    first = sum(maxima) / len(maxima)
    second = sum(m * m for m in maxima) / len(maxima)
    return float(first), math.sqrt(float(second - first * first))


def test_expected_max_closed_form_against_enumeration():
    assert analysis.expected_max([1, 2, 3, 4], 2)[0] == pytest.approx(20 / 6)
    for values in ([1, 2, 3, 4], [3, 1, 4, 1, 5, 9, 2, 6], [2, 2, 2, 7]):
        for n in range(1, len(values) + 1):
            for replacement in (False, True) if n <= 4 else (False,):  # len^n draws with replacement
                expected_mean, expected_std = brute_force_expected_max(values, n, replacement)
                got_mean, got_std = analysis.expected_max(values, n, replacement)
                assert got_mean == pytest.approx(expected_mean)
                assert got_std == pytest.approx(expected_std, abs=1e-9)
    with pytest.raises(ValueError):
        analysis.expected_max([1, 2], 3)


def test_expected_max_curve_on_the_sweep(sweep):
    result = analysis.expected_max_curve(sweep)
    curve = result.table[result.table["method"] == "dpo"].set_index("n_trials")
    scores = [mean(r[3]) for r in finished("dpo")]
    assert list(curve.index) == [1, 2, 3, 4]
    assert curve.loc[1, "expected_max"] == pytest.approx(mean(scores))
    assert curve.loc[4, "expected_max"] == pytest.approx(max(scores)) and curve.loc[4, "std"] == pytest.approx(0)
    assert curve.loc[2, "expected_max"] == pytest.approx(brute_force_expected_max(scores, 2, False)[0])
    assert figures.expected_max_curve(result.table, sweep) is not None
    wide = analysis.expected_max_curve(sweep, "simpo", n_max=6, replacement=True).table
    assert list(wide["n_trials"]) == list(range(1, 7))


def test_collapse_flags_on_crafted_samples(sweep):
    table = analysis.collapse_flags(sweep).table.set_index("run_id")
    collapsed = table.loc["dpo-4"]
    # "" and "   " are empty; "a b c a b c a b c" repeats 4 of its 7 word 3-grams; 2 of 4 truncated
    assert collapsed["empty_share"] == pytest.approx(0.5)
    assert collapsed["repetitive_share"] == pytest.approx(0.25)
    assert collapsed["truncated_share"] == pytest.approx(0.5)
    assert collapsed["flagged"] and collapsed["reasons"] == "empty, repetitive"  # 0.5 is not above 0.5
    assert not table.drop(index="dpo-4")["flagged"].any()
    assert "sft-a" in table.index
    strict = analysis.collapse_flags(sweep, CollapseThresholds(truncated_share=0.4)).table.set_index("run_id")
    assert strict.loc["dpo-4", "reasons"] == "empty, repetitive, truncated"
    assert repeated_ngram_share("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert repeated_ngram_share("one two three") == 0.0


def test_seed_intervals(tmp_path):
    runs = [("sft-a", "sft", {"learning_rate": 1e-5, "epochs": 1}, SFT_SCORES)]
    seed_scores = {0: [0.5, 0.6, 0.7, 0.6], 1: [0.4, 0.4, 0.5, 0.5], 2: [0.7, 0.7, 0.8, 0.8]}
    runs += [(f"dpo-s{s}", "dpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 0.1}, v) for s, v in seed_scores.items()]
    runs += [("dpo-other", "dpo", {"learning_rate": 1e-6, "epochs": 1, "beta": 0.5}, [0.1] * 4)]
    root = write_sweep(tmp_path / "seeds", runs, seeds={f"dpo-s{s}": s for s in seed_scores})
    table = analysis.seed_intervals(load_sweep(root)).table
    assert len(table) == 1  # beta=0.5 has one seed
    row = table.iloc[0]
    means = [mean(v) for v in seed_scores.values()]
    m = mean(means)
    sd = math.sqrt(sum((x - m) ** 2 for x in means) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, df=2)
    assert row["n_seeds"] == 3 and row["mean"] == pytest.approx(m)
    assert row["ci_low"] == pytest.approx(m - half) and row["ci_high"] == pytest.approx(m + half)
    # the setting counts once (seed mean) in the expected-max curve and the neighbourhoods
    settings = analysis.setting_scores(load_sweep(root), "dpo")
    assert len(settings) == 2 and settings["mean_score"].max() == pytest.approx(m)


# Texts on which a whitespace split and the shared word tokenization (case, punctuation, curly quotes) disagree.
LOOPS = ["Yes. yes. YES. Yes! yes, yes.", "The cat sat. The cat sat. The cat sat.", "A fine and complete answer.",
         "I’m sorry, I'm sorry, I’m sorry, I'm sorry"]


def test_collapse_repetition_agrees_with_the_demo_judge(tmp_path):
    from posweep.judges.demo import repetition

    limits = CollapseThresholds()
    for text in LOOPS + COLLAPSED_RESPONSES:
        assert repeated_ngram_share(text, limits.ngram) == pytest.approx(repetition(text))
        assert limits.is_repetitive(text) == (repetition(text) >= limits.repeated_ngram_share)
    sweep = load_sweep(write_sweep(tmp_path / "loops", responses={"dpo-2": LOOPS}))
    row = analysis.collapse_flags(sweep).table.set_index("run_id").loc["dpo-2"]
    judged = [repetition(text) >= limits.repeated_ngram_share for text in LOOPS]
    assert judged == [True, True, False, True]
    assert row["repetitive_share"] == pytest.approx(mean(judged)) and "repetitive" in row["reasons"]
