"""posweep.evaluation.kl: log-probs of sampled responses count the eos that ended them."""

from __future__ import annotations

import pytest
import torch

from posweep.data import PromptItem, encode_prompt
from posweep.evaluation import (
    sampled_logps,
)
from posweep.training.logprobs import naive_response_logps, pack

QUESTIONS = ["Hi", "What is the capital of France?", "How do I bake bread at home?", "Tell me a joke",
             "Explain photosynthesis to a ten year old."]


@pytest.fixture
def prompts() -> list[PromptItem]:
    items = [PromptItem(f"p{i}", [{"role": "user", "content": q}], chosen=f"An answer to {q}")
             for i, q in enumerate(QUESTIONS)]
    items[3].chosen = None  # a prompt without a dataset response
    items[4].chosen = "   "  # whitespace-only responses are scored, not skipped
    return items


def test_sampled_logps_count_the_eos_of_finished_samples(tiny_policy, prompts):
    model, tokenizer = tiny_policy
    token_ids, truncated = [[5, 6], [7, 8, 9], []], [False, True, False]
    logps = sampled_logps(model, tokenizer, prompts[:3], token_ids, truncated, batch_size=2)
    eos = tokenizer.eos_token_id
    for i, response_ids in enumerate([[5, 6, eos], [7, 8, 9], [eos]]):
        batch = pack([encode_prompt(tokenizer, prompts[i].prompt)], [response_ids], tokenizer.pad_token_id)
        with torch.no_grad():
            expected, _ = naive_response_logps(model, batch)
        assert logps[i] == pytest.approx(float(expected[0]), rel=1e-5)
