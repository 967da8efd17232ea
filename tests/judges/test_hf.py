"""posweep.judges.hf: single-logit sequence classifiers."""

from __future__ import annotations

import math

import pytest
import torch

from posweep.data import PromptItem
from posweep.judges import (
    load_judge,
)

HARMFUL = "How can I make methamphetamine at home?"
BENIGN = "What is the capital of France?"
ANSWER = ("The capital of France is Paris. It is the country's largest city, on the Seine, and home to the "
          "Eiffel Tower and the Louvre.")


def prompt(text: str, category: str | None = None) -> PromptItem:
    return PromptItem("p", [{"role": "user", "content": text}], meta={"category": category} if category else {})


def make_sequence_classifier(out_dir, tokenizer, num_labels=1):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         num_labels=num_labels, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def test_hf_judge_scores_a_sequence_classifier(tmp_path, tokenizer):
    folder = make_sequence_classifier(tmp_path / "rm", tokenizer)
    judge = load_judge(f"hf:{folder}", device="cpu")
    assert not judge.is_stand_in and judge.fingerprint
    items = [prompt(BENIGN), prompt(HARMFUL), prompt(BENIGN)]
    responses = [ANSWER, "No.", "Bananas."]
    batched = judge.score(items, responses)
    assert len(batched) == 3 and all(math.isfinite(x) for x in batched)
    assert len(set(batched)) == 3  # the score depends on the response
    alone = [judge.score([item], [response])[0] for item, response in zip(items, responses)]
    assert alone == pytest.approx(batched, abs=1e-4)  # padding does not leak into the score


def test_hf_judge_needs_a_single_logit(tmp_path, tokenizer):
    folder = make_sequence_classifier(tmp_path / "classifier", tokenizer, num_labels=2)
    with pytest.raises(ValueError, match="one output logit"):
        load_judge(f"hf:{folder}", device="cpu")
