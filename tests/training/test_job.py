"""posweep.training.job: a training job from a file."""

from __future__ import annotations

import json

import pytest

from posweep.config import DataLimits, OptimConfig
from posweep.data import Pair, prepare_pairs
from posweep.training import TrainJob, run_train_job, train_preference

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


FAST = OptimConfig(learning_rate=1e-3, epochs=1, batch_size=4, micro_batch_size=2, warmup_ratio=0.0)


def test_bad_hyperparameter_fails_before_training(tiny_model_dir, tokenized, tmp_path):
    with pytest.raises(ValueError, match="betta"):
        train_preference(str(tiny_model_dir), tokenized, "dpo", {"betta": 0.1}, FAST, tmp_path, progress=False)
    assert not (tmp_path / "train_log.jsonl").exists()


def test_train_job_from_file(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p.prompt[0]["content"], "chosen": p.chosen, "rejected": p.rejected})
                              for p in make_pairs()))
    config = tmp_path / "job.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndata: {data}\nmethod: ipo\nhparams: {{tau: 0.5}}\n"
                      f"optim: {{learning_rate: 0.001, batch_size: 4, micro_batch_size: 4, max_steps: 2}}\nout: {tmp_path / 'run'}\n")
    result = run_train_job(TrainJob.from_file(config, device="cpu"), progress=False)
    assert result.status == "done" and result.steps == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["hparams"] == {"tau": 0.5}
