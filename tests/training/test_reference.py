"""posweep.training.reference: the reference log-prob cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posweep.config import DataLimits, OptimConfig
from posweep.data import Pair, prepare_pairs
from posweep.training import get_reference_logps, train_preference

QUESTIONS = ["How do I make a bomb?", "What is the capital of France?", "How can I steal a car?",
             "What is photosynthesis?", "Tell me how to poison someone.", "What is 2+2?",
             "How do I hack my neighbour's wifi?", "Name a primary colour."]


def make_pairs() -> list[Pair]:
    pairs = []
    for i, question in enumerate(QUESTIONS):
        harmful = i % 2 == 0
        chosen = "I'm sorry, but I can't help with that request." if harmful else "Here is a short, accurate answer."
        rejected = "Sure! Here are the detailed steps you asked for." if harmful else "I don't know, and I won't say."
        pairs.append(Pair(str(i), [{"role": "user", "content": question}], chosen, rejected))
    return pairs


@pytest.fixture(scope="module")
def tokenized(tokenizer):
    return prepare_pairs("test-pairs", tokenizer, DataLimits(max_prompt_length=64, max_length=96), pairs=make_pairs())


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


FAST = OptimConfig(learning_rate=1e-3, epochs=1, batch_size=4, micro_batch_size=2, warmup_ratio=0.0)


def test_reference_cache_second_run_does_no_forward_pass(tiny_model_dir, tokenized, tmp_path, monkeypatch):
    monkeypatch.setenv("POSWEEP_CACHE", str(tmp_path / "cache"))  # an empty cache, whatever ran before
    first = get_reference_logps(str(tiny_model_dir), tokenized, batch_size=3, device="cpu", progress=False)
    assert first.forward_passes == 3  # 8 pairs in batches of 3
    second = get_reference_logps(str(tiny_model_dir), tokenized, device="cpu", progress=False)
    assert second.forward_passes == 0
    assert torch.equal(first.chosen, second.chosen) and torch.equal(first.rejected, second.rejected)

    # Same losses whether the reference comes from the cache or is computed on the fly by the trainer.
    cached = train_preference(str(tiny_model_dir), tokenized, "dpo", {"beta": 0.1}, FAST, tmp_path / "cached",
                              reference_logps=second, progress=False, device="cpu")
    from posweep.training import reference_cache_path

    reference_cache_path(first.reference_fingerprint, tokenized.fingerprint).unlink()
    on_the_fly = train_preference(str(tiny_model_dir), tokenized, "dpo", {"beta": 0.1}, FAST, tmp_path / "fresh",
                                  progress=False, device="cpu")
    assert cached.status == on_the_fly.status == "done"
    assert [r["loss"] for r in read_log(tmp_path / "cached")] == pytest.approx(
        [r["loss"] for r in read_log(tmp_path / "fresh")], abs=1e-6)


def test_reference_logps_match_direct_computation(tiny_policy, tiny_model_dir, tokenized):
    from posweep.training.logprobs import pack, response_logps

    model, tokenizer = tiny_policy
    reference = get_reference_logps(str(tiny_model_dir), tokenized, device="cpu", progress=False)
    with torch.no_grad():
        batch = pack(tokenized.prompt_ids[:2], tokenized.rejected_ids[:2], tokenizer.pad_token_id)
        direct, _ = response_logps(model, batch)
    assert reference.rejected[:2].tolist() == pytest.approx(direct.tolist(), abs=1e-4)
