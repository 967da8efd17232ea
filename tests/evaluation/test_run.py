"""posweep.evaluation.run: metrics of a per-sample table, KL against SFT, the cached baseline, judge errors."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from posweep.config import SamplingSpec
from posweep.data import PromptItem, encode_prompt
from posweep.evaluation import (
    SAMPLE_COLUMNS,
    ScoringError,
    evaluate_run,
    get_baseline,
    summarize,
)
from posweep.metrics import win_rate
from posweep.models import load_policy
from posweep.training.logprobs import naive_response_logps, pack
from tests.conftest import make_tiny_model

QUESTIONS = ["Hi", "What is the capital of France?", "How do I bake bread at home?", "Tell me a joke",
             "Explain photosynthesis to a ten year old."]
SPEC = SamplingSpec(max_new_tokens=8, temperature=1.0, seed=0, batch_size=4)


class CountingJudge:
    """Deterministic fake judge: score = a hash of (prompt id, response) in [0, 1); counts its calls."""

    name = "counting"
    fingerprint = "counting-v1"
    is_stand_in = True

    def __init__(self, bad_prompt_id: str | None = None):
        self.calls: list[list[str]] = []  # the responses of each call
        self.bad_prompt_id = bad_prompt_id

    def score(self, prompts, responses, truncated=None):
        self.calls.append(list(responses))
        scores = []
        for item, response in zip(prompts, responses):
            if item.prompt_id == self.bad_prompt_id:
                scores.append(math.nan)
            else:
                scores.append(zlib.crc32(f"{item.prompt_id}|{response}".encode()) % 1000 / 1000)
        return scores


@pytest.fixture
def prompts() -> list[PromptItem]:
    items = [PromptItem(f"p{i}", [{"role": "user", "content": q}], chosen=f"An answer to {q}")
             for i, q in enumerate(QUESTIONS)]
    items[3].chosen = None  # a prompt without a dataset response
    items[4].chosen = "   "  # whitespace-only responses are scored, not skipped
    return items


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POSWEEP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_summarize_hand_made_table():
    score = [1.0, 2.0, 3.0, 4.0]
    chosen = [0.5, 2.0, 5.0, np.nan]
    sft = [1.0, 1.0, 4.0, 3.0]
    table = pd.DataFrame({
        "prompt_id": ["a", "b", "c", "d"], "response": ["x", "  ", "", "y z"],
        "length": [4, 0, 2, 6], "truncated": [True, False, False, False],
        "score": score, "chosen_score": chosen, "sft_score": sft,
        "kl": [2.0, 0.0, -1.0, 3.0], "ln_kl": [0.5, 0.0, -0.5, 0.5],
        "win_vs_chosen": win_rate(score, chosen), "win_vs_sft": win_rate(score, sft),
    })
    metrics = summarize(table)
    expected = {"n": 4, "mean_score": 2.5, "win_vs_chosen": (1 + 0.5 + 0) / 3, "win_vs_sft": (0.5 + 1 + 0 + 1) / 4,
                "kl": 1.0, "ln_kl": 0.125, "length": 3.0, "truncated_share": 0.25, "empty_share": 0.5}
    point_names = ["mean_score", "win_vs_chosen", "win_vs_sft", "kl", "ln_kl", "length"]
    assert set(metrics) == set(expected) | {f"{name}_ci" for name in point_names}
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value), name
    for name in point_names:
        low, high = metrics[f"{name}_ci"]
        assert low <= metrics[name] <= high, name


def test_sft_against_itself_has_zero_kl_and_baseline_is_cached(tiny_model_dir, tiny_policy, prompts, cache, tmp_path):
    judge = CountingJudge()
    sft = str(tiny_model_dir)
    # the run's model and the SFT model are two separately loaded copies of the same weights
    metrics = evaluate_run(sft, sft, prompts, judge, SPEC, tmp_path / "run1", sft_model=tiny_policy, progress=False)
    # baseline: SFT samples + chosen responses (4 of 5 prompts have one); then the run's samples
    assert [len(call) for call in judge.calls] == [5, 4, 5]
    assert judge.calls[1][-1] == "   "

    table = pd.read_parquet(tmp_path / "run1" / "samples.parquet")
    assert list(table.columns) == SAMPLE_COLUMNS
    assert table["prompt_id"].tolist() == [p.prompt_id for p in prompts]
    # Same weights, same tokens: zero up to float rounding (the policy side is the sampler's own log-probs,
    # the SFT side a forward pass of the other copy; the two agree to ~1e-5 nats per sample).
    assert (table["kl"].abs() < 1e-4).all() and (table["ln_kl"].abs() < 1e-5).all()
    assert (table["policy_logp"] < 0).all()
    # the same spec samples the same responses as the baseline: every comparison with the SFT is a tie
    assert (table["score"] == table["sft_score"]).all() and (table["win_vs_sft"] == 0.5).all()
    assert math.isnan(table.loc[3, "chosen_score"]) and math.isnan(table.loc[3, "win_vs_chosen"])
    assert abs(metrics["kl"]) < 1e-4 and metrics["win_vs_sft"] == 0.5
    assert json.loads((tmp_path / "run1" / "metrics.json").read_text()) == metrics

    # a second run with the same inputs re-scores neither the SFT samples nor the chosen responses
    evaluate_run(sft, sft, prompts, judge, SPEC, tmp_path / "run2", progress=False)  # SFT loaded once here
    assert [len(call) for call in judge.calls] == [5, 4, 5, 5]
    assert len(list((cache / "baselines").iterdir())) == 1

    # the log-probs are those of the sampled token ids (+ eos unless truncated), by the textbook formula;
    # the run sampled exactly the baseline's tokens (same model, same spec), which the cache keeps
    model, tokenizer = tiny_policy
    baseline = get_baseline(sft, prompts, judge, SPEC, progress=False)
    assert len(judge.calls) == 4 and baseline.samples["response"].tolist() == table["response"].tolist()
    for i in (0, 1):
        sample = baseline.samples.iloc[i]
        response_ids = list(sample["token_ids"]) + ([] if sample["truncated"] else [int(sample["stop_token_id"])])
        assert sample["truncated"] == pd.isna(sample["stop_token_id"])
        assert len(sample["token_ids"]) == table.loc[i, "length"]
        batch = pack([encode_prompt(tokenizer, prompts[i].prompt)], [response_ids], tokenizer.pad_token_id)
        with torch.no_grad():
            expected, _ = naive_response_logps(model, batch)
        assert table.loc[i, "policy_logp"] == pytest.approx(float(expected[0]), rel=1e-5)


def test_other_policy_has_nonzero_kl(tiny_model_dir, tiny_policy, tokenizer, prompts, cache, tmp_path):
    policy_dir = make_tiny_model(tmp_path / "policy", tokenizer, seed=1)
    policy = load_policy(str(policy_dir), dtype="float32", device="cpu")
    judge = CountingJudge()
    baseline = get_baseline(str(tiny_model_dir), prompts, judge, SPEC, sft_model=tiny_policy, progress=False)
    metrics = evaluate_run(policy, str(tiny_model_dir), prompts, judge, SPEC, tmp_path / "run",
                           baseline=baseline, sft_model=tiny_policy, progress=False)
    table = pd.read_parquet(tmp_path / "run" / "samples.parquet")
    assert (table["kl"] != 0).all()
    np.testing.assert_allclose(table["kl"], table["policy_logp"] - table["sft_logp"])
    np.testing.assert_allclose(table["ln_kl"] * table["length"].clip(lower=1), table["kl"])
    assert metrics["kl"] == pytest.approx(table["kl"].mean())


def test_nan_score_names_the_prompt(tiny_model_dir, tiny_policy, prompts, cache, tmp_path):
    judge = CountingJudge(bad_prompt_id="p2")
    with pytest.raises(ScoringError, match="'p2'.*response"):
        evaluate_run(tiny_policy, str(tiny_model_dir), prompts, judge, SPEC, tmp_path / "run",
                     sft_model=tiny_policy, progress=False)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_truncated_short_samples(tiny_model_dir, tiny_policy, prompts, cache, tmp_path):
    judge = CountingJudge()
    spec = SamplingSpec(max_new_tokens=3, temperature=1.0, batch_size=8)
    metrics = evaluate_run(tiny_policy, str(tiny_model_dir), prompts, judge, spec, tmp_path / "run",
                           sft_model=tiny_policy, progress=False)
    table = pd.read_parquet(tmp_path / "run" / "samples.parquet")
    # a random model over 49k tokens does not hit eos in 3 tokens: every sample is cut
    assert (table["length"] == 3).all() and table["truncated"].all()
    assert metrics["truncated_share"] == 1.0 and metrics["length"] == 3.0


def test_selection_split_reports_held_out_metrics(tiny_model_dir, tiny_policy, prompts, cache, tmp_path):
    judge = CountingJudge()
    selection = {"p0", "p3"}
    metrics = evaluate_run(tiny_policy, str(tiny_model_dir), prompts, judge, SPEC, tmp_path / "run",
                           sft_model=tiny_policy, selection=selection, progress=False)
    table = pd.read_parquet(tmp_path / "run" / "samples.parquet")
    assert table["split"].tolist() == ["selection", "held_out", "held_out", "selection", "held_out"]
    held_out, chosen = table[table["split"] == "held_out"], table[table["split"] == "selection"]
    assert metrics["n"] == 3 and metrics["mean_score"] == pytest.approx(held_out["score"].mean())
    assert metrics["length"] == pytest.approx(held_out["length"].mean())
    assert metrics["selection_n"] == 2 and metrics["selection_mean_score"] == pytest.approx(chosen["score"].mean())
    assert metrics["kl_temperature"] == SPEC.temperature
    # without a split every prompt serves both purposes, and there is no selection_* metric
    plain = evaluate_run(tiny_policy, str(tiny_model_dir), prompts, judge, SPEC, tmp_path / "plain",
                         sft_model=tiny_policy, progress=False)
    assert plain["n"] == 5 and not any(key.startswith("selection_") for key in plain)
    assert set(pd.read_parquet(tmp_path / "plain" / "samples.parquet")["split"]) == {"both"}


def test_sft_run_evaluation_becomes_the_baseline(tiny_model_dir, tiny_policy, tokenizer, prompts, cache, tmp_path):
    """What a sweep does after choosing its SFT run: that run's own samples and scores are the baseline, the
    same table sampling the SFT model again would give, and the chosen responses are never scored again."""
    from posweep.evaluation import baseline_from_run
    from posweep.evaluation.baseline import compute_baseline

    sft_dir = make_tiny_model(tmp_path / "sft", tokenizer, seed=2)
    judge = CountingJudge()
    evaluate_run(str(sft_dir), str(tiny_model_dir), prompts, judge, SPEC, tmp_path / "sft_run",
                 sft_model=tiny_policy, keep_token_ids=True, progress=False)
    assert [len(call) for call in judge.calls] == [5, 4, 5]  # start model's samples, chosen, the SFT run's samples
    adopted = baseline_from_run(str(sft_dir), tmp_path / "sft_run", prompts, judge, SPEC)
    assert len(judge.calls) == 3  # nothing sampled or scored
    assert get_baseline(str(sft_dir), prompts, judge, SPEC, progress=False).samples.equals(adopted.samples)  # cached
    sft = load_policy(str(sft_dir), dtype="float32", device="cpu")
    fresh = compute_baseline(*sft, prompts, judge, SPEC, progress=False)
    assert len(judge.calls) == 4  # the fresh baseline scored its samples; the chosen scores came from their cache
    pd.testing.assert_frame_equal(adopted.samples, fresh.samples)
    # a run evaluated without its token ids cannot serve
    evaluate_run(str(sft_dir), str(tiny_model_dir), prompts, judge, SPEC, tmp_path / "no_ids", sft_model=tiny_policy,
                 progress=False)
    other = make_tiny_model(tmp_path / "other", tokenizer, seed=3)
    assert baseline_from_run(str(other), tmp_path / "no_ids", prompts, judge, SPEC) is None
