"""posweep.sweep.inputs: what a sweep shares is computed once: one sampling pass of the chosen SFT (its own
evaluation is the preference stage's baseline), one scoring of the dataset's chosen responses, one load of
the SFT model per worker; and the selection split is a stable function of the prompt ids.

Training and the judge are faked (a training run writes a tiny random model as its checkpoint); sampling,
scoring, KL and the baselines are the real ones."""

from __future__ import annotations

import json
import zlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from posweep.sweep import plan_runs, validate_config
from posweep.sweep.inputs import selection_split
from tests.conftest import make_tiny_model
from tests.sweep.helpers import sweep


class CountingJudge:
    name, fingerprint, is_stand_in = "counting", "counting-v1", True

    def __init__(self):
        self.calls: list[list[str]] = []

    def score(self, prompts, responses, truncated=None):
        self.calls.append(list(responses))
        return [zlib.crc32(f"{p.prompt_id}|{r}".encode()) % 1000 / 1000 for p, r in zip(prompts, responses)]


@pytest.fixture
def real_evaluation(monkeypatch, tmp_path, tokenizer):
    """Fake training and judge; count sampling passes and model loads by model folder."""
    import posweep.evaluation.baseline as baseline_module
    import posweep.evaluation.run as run_module
    import posweep.judges
    import posweep.models
    import posweep.training

    monkeypatch.setenv("POSWEEP_CACHE", str(tmp_path / "cache"))
    counts = SimpleNamespace(sampled=Counter(), loaded=Counter(), judge=CountingJudge(), seeds=iter(range(1, 100)))

    def train(model_spec, pairs, *args, **kwargs):
        out_dir = Path(kwargs.get("out_dir") or (args[1] if len(args) == 2 else args[3]))
        make_tiny_model(out_dir / "checkpoint", tokenizer, seed=next(counts.seeds))
        return SimpleNamespace(checkpoint_dir=out_dir / "checkpoint", status="done", error=None)

    monkeypatch.setattr(posweep.training, "train_sft", lambda spec, pairs, optim, out_dir, progress: train(
        spec, pairs, out_dir=out_dir))
    monkeypatch.setattr(posweep.training, "train_preference", lambda spec, pairs, method, hparams, optim, out_dir,
                        reference_logps=None, progress=True: train(spec, pairs, out_dir=out_dir))
    monkeypatch.setattr(posweep.training, "get_reference_logps", lambda *a, **k: SimpleNamespace())
    monkeypatch.setattr(posweep.judges, "load_judge", lambda spec: counts.judge)

    def counting_sampler(model, *args, **kwargs):
        counts.sampled[str(Path(model.config._name_or_path).resolve())] += 1
        return real_sample(model, *args, **kwargs)

    def counting_loader(spec, *args, **kwargs):
        counts.loaded[str(Path(spec).resolve())] += 1
        return real_load(spec, *args, **kwargs)

    real_sample, real_load = run_module.sample_responses, posweep.models.load_policy
    for module in (run_module, baseline_module):
        monkeypatch.setattr(module, "sample_responses", counting_sampler)
        monkeypatch.setattr(module, "load_policy", counting_loader)
    monkeypatch.setattr(posweep.models, "load_policy", counting_loader)
    return counts


def test_a_sweep_computes_each_shared_result_once(tmp_path, real_evaluation, micro_config, tiny_model_dir):
    counts = real_evaluation
    out = tmp_path / "sweep"
    result = sweep({**micro_config, "sampling": {"max_new_tokens": 3, "batch_size": 4}}, out)
    assert result.counts["done"] == 5
    runs = plan_runs(validate_config(micro_config))
    info = json.loads((out / "sweep_info.json").read_text())
    chosen = str((out / "runs" / info["sft_run_id"] / "checkpoint").resolve())
    start = str(Path(tiny_model_dir).resolve())

    assert counts.sampled[chosen] == 1  # its own evaluation, which is also the preference stage's baseline
    assert counts.sampled[start] == 1  # the starting model's baseline, compared with by both SFT runs
    assert sum(counts.sampled.values()) == 1 + len(runs)  # and one pass per run
    # SFT-stage base: loaded once for its baseline and both SFT runs' KL; the chosen SFT: once as the run
    # evaluated, once as the base of all three preference runs (not once per run)
    assert counts.loaded[start] == 1 and counts.loaded[chosen] == 2
    chosen_texts = [f"Reference {i}." for i in range(4)]
    assert sum(call == chosen_texts for call in counts.judge.calls) == 1  # the chosen responses: scored once

    baseline = pd.read_parquet(out / "baseline" / "samples.parquet")
    sft_samples = pd.read_parquet(out / "runs" / info["sft_run_id"] / "samples.parquet")
    assert baseline["response"].tolist() == sft_samples["response"].tolist()
    assert baseline["sft_score"].tolist() == sft_samples["score"].tolist()
    assert info["sampling_backend"] == "hf" == info["sampling"]["backend"]
    assert info["selection"] is None and info["kl"]["temperature"] == 0.7
    for run in runs[2:]:  # preference runs compare with the chosen SFT's samples, prompt by prompt
        samples = pd.read_parquet(out / "runs" / run.run_id / "samples.parquet")
        assert samples["sft_score"].tolist() == sft_samples["score"].tolist()


def test_sft_choice_uses_the_selection_prompts(tmp_path, real_evaluation, micro_config):
    counts = real_evaluation
    config = {**micro_config, "sampling": {"max_new_tokens": 3, "batch_size": 4},
              "test_prompts": {**micro_config["test_prompts"], "selection_fraction": 0.5},
              "methods": {"simpo": {"grid": {"beta": [2.0]}}}}
    out = tmp_path / "sweep"
    sweep(config, out)
    info = json.loads((out / "sweep_info.json").read_text())
    assert info["selection"] == {"fraction": 0.5, "n_selection": 2, "n_held_out": 2}
    sft_runs = [run for run in plan_runs(validate_config(config)) if run.stage == "sft"]
    metrics = {run.run_id: json.loads((out / "runs" / run.run_id / "metrics.json").read_text()) for run in sft_runs}
    best_on_selection = max(metrics, key=lambda run_id: metrics[run_id]["selection_mean_score"])
    assert info["sft_run_id"] == best_on_selection
    assert info["sft_metrics"]["n"] == 2 and info["sft_metrics"]["selection_n"] == 2
    samples = pd.read_parquet(out / "runs" / best_on_selection / "samples.parquet")
    assert sorted(samples["split"]) == ["held_out", "held_out", "selection", "selection"]
    held_out = samples[samples["split"] == "held_out"]
    assert info["sft_metrics"]["mean_score"] == pytest.approx(held_out["score"].mean())
    assert counts.judge.calls  # the real evaluation ran


def test_selection_split_is_a_stable_function_of_the_ids():
    ids = [f"p{i}" for i in range(100)]
    chosen = selection_split(ids, 0.3)
    assert len(chosen) == 30 and chosen <= set(ids)
    assert selection_split(list(reversed(ids)), 0.3) == chosen  # file order does not matter
    assert selection_split(ids, 0.3, seed=1) != chosen
    assert selection_split(ids, None) == set() and selection_split(["a"], 0.5) == set()
    assert len(selection_split(["a", "b"], 0.01)) == 1 and len(selection_split(["a", "b"], 0.99)) == 1


def test_a_sweep_reads_gzipped_files_as_published(tmp_path, fakes, micro_config, data_files):
    """HH-RLHF's test split is published as test.jsonl.gz; a sweep takes it (and gzipped pairs) as they are."""
    import gzip

    fixture = Path(__file__).parents[1] / "fixtures" / "hh_rlhf.jsonl"
    prompts = tmp_path / "test.jsonl.gz"
    prompts.write_bytes(gzip.compress(fixture.read_bytes()))
    pairs = tmp_path / "train.jsonl.gz"
    pairs.write_bytes(gzip.compress(data_files[0].read_bytes()))
    config = {**micro_config, "train_data": {"source": str(pairs), "layout": "pairs"},
              "test_prompts": {"source": str(prompts), "layout": "hh-rlhf"}}
    result = sweep(config, tmp_path / "sweep")
    assert result.counts["done"] == 5
    info = json.loads((tmp_path / "sweep" / "sweep_info.json").read_text())
    assert info["test_prompts"]["n"] == 3 and info["train_data"]["n"] == 8  # the fixture keeps 3 of 6 transcripts


def test_system_prompt_and_meta_reach_every_training_and_test_prompt(micro_config, tmp_path, monkeypatch):
    """``system_prompt`` leads every prompt that has no system turn of its own, in the tokenized pairs and the
    test prompts alike; ``test_prompts.meta`` tags every prompt whose row lacks the key; both change the
    sweep context (so the run ids), and leaving them out keeps the context of older sweeps."""
    from posweep.sweep.inputs import load_test_prompts, load_train_pairs
    from posweep.sweep.plan import sweep_context

    monkeypatch.setenv("POSWEEP_CACHE", str(tmp_path / "cache"))
    system = "Reply in one short sentence."
    config = validate_config({**micro_config, "system_prompt": system,
                              "test_prompts": {**micro_config["test_prompts"], "meta": {"category": "harmful"}}})
    prompts = load_test_prompts(config)
    assert prompts and all(p.prompt[0] == {"role": "system", "content": system} for p in prompts)
    assert all(p.prompt[1]["role"] == "user" for p in prompts)
    assert {p.meta["category"] for p in prompts} == {"harmful"}

    plain = validate_config(micro_config)
    with_system, without = load_train_pairs(config), load_train_pairs(plain)
    assert with_system.fingerprint != without.fingerprint  # the prompt tokens differ, so do the caches
    from posweep.models import load_tokenizer

    tokenizer = load_tokenizer(config.model)
    assert system in tokenizer.decode(with_system.prompt_ids[0]) and system not in tokenizer.decode(without.prompt_ids[0])
    assert "system_prompt" in sweep_context(config) and "system_prompt" not in sweep_context(plain)
