"""posweep.training.trainer: SFT and preference runs write their files, lower the loss, repeat exactly, fail clearly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from posweep.config import DataLimits, OptimConfig
from posweep.data import Pair, prepare_pairs
from posweep.training import get_reference_logps, train_preference, train_sft

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


def test_sft_writes_checkpoint_config_and_log_and_lowers_loss(tiny_model_dir, tokenized, tmp_path):
    optim = OptimConfig(learning_rate=3e-3, epochs=6, batch_size=4, micro_batch_size=4, warmup_ratio=0.0, seed=1)
    result = train_sft(str(tiny_model_dir), tokenized, optim, tmp_path, progress=False, device="cpu")
    assert result.status == "done" and result.steps == 12
    log = read_log(tmp_path)
    assert len(log) == 12 and log[-1]["loss"] < log[0]["loss"]
    for key in ("loss", "grad_norm", "learning_rate", "tokens_per_second", "chosen_logps"):
        assert key in log[0]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["status"] == "done" and config["method"] == "sft" and config["data_fingerprint"] == tokenized.fingerprint
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(result.checkpoint_dir)
    assert (result.checkpoint_dir / "tokenizer_config.json").exists()
    assert reloaded.config.vocab_size == 49152


def test_same_config_gives_same_numbers(tiny_model_dir, tokenized, tmp_path):
    runs = [train_preference(str(tiny_model_dir), tokenized, "simpo", {"beta": 2.0}, FAST, tmp_path / str(i),
                             progress=False, device="cpu") for i in range(2)]
    assert [r["loss"] for r in read_log(tmp_path / "0")] == [r["loss"] for r in read_log(tmp_path / "1")]
    assert runs[0].final_loss == runs[1].final_loss


def test_non_finite_loss_fails_with_a_message(tiny_model_dir, tokenized, tmp_path, monkeypatch):
    from posweep.losses.functions import LossOutput
    from posweep.training import trainer

    def nan_loss(method, **kwargs):
        nan = kwargs["policy_chosen_logps"] * float("nan")
        return LossOutput(nan, nan.detach(), nan.detach())

    monkeypatch.setattr(trainer, "compute_loss", nan_loss)
    result = train_preference(str(tiny_model_dir), tokenized, "simpo", {}, FAST, tmp_path, progress=False, device="cpu")
    assert result.status == "failed" and "non-finite loss" in result.error and "step 1" in result.error
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["status"] == "failed" and "non-finite" in config["error"]
    assert not (tmp_path / "checkpoint").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method,hparams", [("dpo", {"beta": 0.1}), ("ln_dpo", {"beta": 2.0}),
                                            ("simpo", {"beta": 2.5, "gamma_beta_ratio": 0.5})])
def test_builtin_model_learns_each_paper_method(builtin_model_dir, method, hparams, tmp_path):
    """Three full-batch steps on the real 135M model lower the loss and order every pair correctly (at this
    learning rate one step already moves the loss from 0.69 to ~0.2 for DPO; kept short: CPU time)."""
    from posweep.models import load_tokenizer

    tokenizer = load_tokenizer(str(builtin_model_dir))
    pairs = prepare_pairs("test-pairs", tokenizer, DataLimits(max_prompt_length=64, max_length=96), pairs=make_pairs())
    optim = OptimConfig(learning_rate=2e-5, epochs=20, max_steps=3, batch_size=8, micro_batch_size=8,
                        warmup_ratio=0.0, seed=0)
    result = train_preference(str(builtin_model_dir), pairs, method, hparams, optim, tmp_path, progress=False, device="cpu")
    assert result.status == "done" and result.steps == 3
    log = read_log(tmp_path)
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert log[-1]["reward_accuracy"] == 1.0  # every pair ordered correctly by the method's own rewards


def test_step_one_rewards_are_zero_under_mixed_precision(tiny_model_dir, tokenized, tmp_path):
    """At step 1 the policy is the reference, so every implicit reward must be ~0, also with bf16 autocast
    (the reference is computed under the same precision as the policy)."""
    optim = FAST.model_copy(update={"mixed_precision": "bf16"})
    reference = get_reference_logps(str(tiny_model_dir), tokenized, device="cpu", progress=False, mixed_precision="bf16")
    train_preference(str(tiny_model_dir), tokenized, "dpo", {"beta": 1.0}, optim, tmp_path,
                     reference_logps=reference, progress=False, device="cpu")
    first = read_log(tmp_path)[0]
    assert abs(first["chosen_reward"]) < 1e-3 and abs(first["rejected_reward"]) < 1e-3
    with pytest.raises(ValueError, match="mixed_precision"):
        train_preference(str(tiny_model_dir), tokenized, "dpo", {}, FAST, tmp_path / "x", reference_logps=reference,
                         progress=False, device="cpu")


def test_methods_with_extra_inputs_train(tiny_model_dir, tokenized, tmp_path):
    """LD-DPO (tails from the pass and the reference cache) and WPO (log Σ π²) get their inputs from the loop."""
    for method in ("ld_dpo", "wpo", "dpo+ld_dpo"):
        result = train_preference(str(tiny_model_dir), tokenized, method, {}, FAST, tmp_path / method, progress=False,
                                  device="cpu")
        assert result.status == "done", result.error
        assert all(math.isfinite(r["loss"]) for r in read_log(tmp_path / method))
