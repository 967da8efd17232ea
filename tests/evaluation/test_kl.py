"""posweep.evaluation.kl: the KL of a run is the KL of the distributions its samples were drawn from.

On an eight-token vocabulary with responses of at most three tokens every response can be enumerated, so
the exact sequence-level KL(π_θ,T,p ‖ π_SFT,T) is computable; the Monte-Carlo mean over sampled responses
(posweep's sampler, then ``sampled_logps`` on the sampled ids) must agree with it within its interval."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from posweep.config import SamplingSpec
from posweep.data import PromptItem, encode_prompt
from posweep.evaluation import sampled_logps
from posweep.generation import nucleus_logits, sample_responses, stop_token_ids
from posweep.training.logprobs import naive_response_logps, pack
from tests.small_vocab import END, EOS, VOCAB, phi3_like_tokenizer, small_model

MAX_NEW = 3
PROMPT = [{"role": "user", "content": "a b"}]


@pytest.fixture(scope="module")
def setup():
    tokenizer = phi3_like_tokenizer()
    return tokenizer, small_model(seed=3), small_model(seed=4)  # the run's policy, the SFT model


def next_logps(model, prefix_ids: list[list[int]], temperature: float, top_p: float) -> torch.Tensor:
    """log π_T,p(· | x, h) for each full prefix row (all rows the same length)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(prefix_ids)).logits[:, -1].float() / temperature
    return nucleus_logits(logits, top_p).log_softmax(-1)


def exact_kl(policy, sft, prompt_ids: list[int], stops: set[int], temperature: float, top_p: float) -> float:
    """Σ over non-terminal prefixes h of P(h) · KL(π_θ(·|h) ‖ π_SFT(·|h)), prefixes enumerated exhaustively
    (responses end at a stop token or after MAX_NEW tokens)."""
    continuing = [t for t in range(len(VOCAB)) if t not in stops]
    total = 0.0
    for depth in range(MAX_NEW):
        prefixes = [list(h) for h in itertools.product(continuing, repeat=depth)]
        rows = [prompt_ids + h for h in prefixes]
        p = next_logps(policy, rows, temperature, top_p).double()
        q = next_logps(sft, rows, temperature, 1.0).double()
        probability_of_prefix = torch.ones(len(prefixes), dtype=torch.float64)
        for step in range(depth):  # P(h) under the policy's sampling distribution
            step_rows = [prompt_ids + h[:step] for h in prefixes]
            step_logps = next_logps(policy, step_rows, temperature, top_p).double()
            probability_of_prefix *= step_logps.exp()[torch.arange(len(prefixes)), [h[step] for h in prefixes]]
        terms = torch.where(p > -math.inf, p.exp() * (p - q), torch.zeros_like(p)).sum(-1)
        total += float((probability_of_prefix * terms).sum())
    return total


@pytest.mark.parametrize("temperature, top_p", [(0.7, 1.0), (1.0, 1.0), (1.0, 0.8)])
def test_monte_carlo_kl_matches_the_exact_kl(setup, temperature, top_p):
    tokenizer, policy, sft = setup
    n = 3000
    prompts = [PromptItem(f"p{i}", PROMPT) for i in range(n)]
    spec = SamplingSpec(max_new_tokens=MAX_NEW, temperature=temperature, top_p=top_p, seed=0, batch_size=1000,
                        backend="hf")
    samples = sample_responses(policy, tokenizer, prompts, spec, progress=False)
    token_ids, stops = [s.token_ids for s in samples], [s.stop_token_id for s in samples]
    assert {s.stop_token_id for s in samples} >= {END, EOS, None}  # both stop tokens and truncation occur
    policy_logp = sampled_logps(policy, tokenizer, prompts, token_ids, stops, temperature, top_p, batch_size=1000)
    # the sampler's own log-probs (what evaluation uses for the policy) are the forward pass's, token for token
    np.testing.assert_allclose([s.logp for s in samples], policy_logp, rtol=1e-4, atol=1e-4)
    kl = policy_logp - sampled_logps(sft, tokenizer, prompts, token_ids, stops, temperature, 1.0, batch_size=1000)
    exact = exact_kl(policy, sft, encode_prompt(tokenizer, PROMPT), set(stop_token_ids(tokenizer)), temperature, top_p)
    standard_error = kl.std(ddof=1) / math.sqrt(n)
    assert exact > 10 * standard_error  # a KL clearly away from zero: the comparison has power
    assert abs(kl.mean() - exact) < 4 * standard_error, (kl.mean(), exact, standard_error)
    if temperature != 1.0:
        # the old estimator (temperature-1 log-probs of samples drawn at T) misses the exact KL by far
        raw = (sampled_logps(policy, tokenizer, prompts, token_ids, stops, 1.0, 1.0, batch_size=1000)
               - sampled_logps(sft, tokenizer, prompts, token_ids, stops, 1.0, 1.0, batch_size=1000))
        assert abs(raw.mean() - exact) > 8 * standard_error


def test_sampled_logps_count_the_stop_token_that_ended_the_sample(tiny_policy):
    model, tokenizer = tiny_policy
    prompts = [PromptItem(f"p{i}", [{"role": "user", "content": q}]) for i, q in enumerate(["Hi", "Why?", "Tell me"])]
    token_ids, stops = [[5, 6], [7, 8, 9], []], [tokenizer.eos_token_id, None, 11]
    logps = sampled_logps(model, tokenizer, prompts, token_ids, stops, batch_size=2)
    for i, response_ids in enumerate([[5, 6, tokenizer.eos_token_id], [7, 8, 9], [11]]):
        batch = pack([encode_prompt(tokenizer, prompts[i].prompt)], [response_ids], tokenizer.pad_token_id)
        with torch.no_grad():
            expected, _ = naive_response_logps(model, batch)
        assert logps[i] == pytest.approx(float(expected[0]), rel=1e-5)
    # at temperature T the log-probs are those of softmax(logits / T)
    batch = pack([encode_prompt(tokenizer, prompts[0].prompt)], [[5, 6, tokenizer.eos_token_id]], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids).logits[0].float() / 0.5
    start = len(encode_prompt(tokenizer, prompts[0].prompt)) - 1
    expected = sum(float(logits[start + k].log_softmax(-1)[t]) for k, t in enumerate([5, 6, tokenizer.eos_token_id]))
    tempered = sampled_logps(model, tokenizer, prompts[:1], token_ids[:1], stops[:1], temperature=0.5)
    assert tempered[0] == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(tempered).all()
