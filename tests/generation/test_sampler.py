"""Sampling on the tiny random model: order, determinism, padding, stop tokens and truncation; the two
hf engines (dynamic cache, static cache) sample the same tokens."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from posweep.config import SamplingSpec
from posweep.data import PromptItem, encode_prompt
from posweep.generation import (
    DynamicEngine,
    StaticEngine,
    batch_seed,
    decode_batch,
    left_pad,
    length_sorted_batches,
    next_tokens,
    sample_responses,
    split_at_stop,
)
from posweep.generation.decode import padding_groups, shared_prefix_length

QUESTIONS = ["Hi", "What is the capital of France? Answer briefly, please.", "How do I bake bread at home?",
             "Tell me a joke", "Explain photosynthesis to a ten year old in two sentences.", "Why is the sky blue?"]


@pytest.fixture
def prompts() -> list[PromptItem]:
    return [PromptItem(f"p{i}", [{"role": "user", "content": q}]) for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def untied_model(tokenizer):
    """A tiny random Llama whose LM head is not its embedding: the shared tiny model greedily repeats
    its last input token forever, which would make greedy comparisons vacuous."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def test_left_pad_masks_come_from_lengths():
    input_ids, attention_mask = left_pad([[5, 6, 7], [2]], pad_id=2)  # pad == a real token, as in SmolLM2
    assert input_ids.tolist() == [[5, 6, 7], [2, 2, 2]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_split_at_stop():
    assert split_at_stop([4, 5, 2, 2, 7], [2]) == ([4, 5], 2)
    assert split_at_stop([4, 9, 2, 7], [2, 9]) == ([4], 9)  # the first stop token of any kind
    assert split_at_stop([2, 9], [2]) == ([], 2)
    assert split_at_stop([4, 5, 6], [2]) == ([4, 5, 6], None)


def test_shared_prefix_leaves_every_row_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical rows: all but the last token
    assert shared_prefix_length([[7], [1, 2]]) == 0 and shared_prefix_length([[4, 5, 6]]) == 2


def test_padding_groups():
    assert padding_groups([10, 30, 29, 9, 28, 20], 0.1) == [[1, 2, 4], [5], [0, 3]]
    assert padding_groups([3, 3, 5], 0.0) == [[2], [0, 1]]
    assert padding_groups([3, 9, 5], float("inf")) == [[1, 2, 0]]


def test_length_sorted_batches_cover_every_index_once():
    batches = length_sorted_batches([3, 9, 1, 7, 5], batch_size=2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_next_tokens_follow_softmax_and_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]])
    uniforms = torch.rand(40_000, generator=torch.Generator().manual_seed(0))
    rows = logits.expand(len(uniforms), -1)
    spec = SamplingSpec(temperature=0.5)
    counts = torch.bincount(next_tokens(rows, spec, uniforms)[0], minlength=5).double() / len(uniforms)
    torch.testing.assert_close(counts, (logits[0].double() / 0.5).softmax(-1), atol=0.01, rtol=0)
    # top_p = 0.8 at temperature 1: probabilities ≈ [.64, .24, .09, .03, 0]; the nucleus is the first two
    nucleus = next_tokens(rows, SamplingSpec(temperature=1.0, top_p=0.8), uniforms)[0]
    counts = torch.bincount(nucleus, minlength=5).double() / len(uniforms)
    probs = logits[0].double().softmax(-1)[:2]
    torch.testing.assert_close(counts[:2], probs / probs.sum(), atol=0.01, rtol=0)
    assert counts[2:].sum() == 0
    assert next_tokens(logits, SamplingSpec(temperature=0.0), uniforms[:1])[0].tolist() == [0]


def test_greedy_matches_transformers_generate(untied_model, tokenizer, prompts):
    from transformers import GenerationConfig

    rows = [encode_prompt(tokenizer, p.prompt) for p in prompts[:4]]
    input_ids, attention_mask = left_pad(rows, tokenizer.pad_token_id)
    config = GenerationConfig(do_sample=False, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        output = untied_model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    expected = [split_at_stop(row, [tokenizer.eos_token_id]) for row in output[:, input_ids.shape[1]:].tolist()]
    ours = sample_responses(untied_model, tokenizer, prompts[:4], SamplingSpec(max_new_tokens=6, temperature=0.0),
                            progress=False)
    assert [(s.token_ids, s.stop_token_id) for s in ours] == expected


def test_samples_in_input_order_with_truncation(tiny_policy, prompts):
    model, tokenizer = tiny_policy
    samples = sample_responses(model, tokenizer, prompts, SamplingSpec(max_new_tokens=4, batch_size=4), progress=False)
    assert [s.prompt_id for s in samples] == [p.prompt_id for p in prompts]
    for sample in samples:
        assert len(sample.token_ids) == sample.length <= 4
        assert tokenizer.eos_token_id not in sample.token_ids
        # a random 49k-token model essentially never emits eos: every sample is cut at 4 tokens
        assert sample.truncated == (sample.length == 4) == (sample.stop_token_id is None)
        assert sample.text == tokenizer.decode(sample.token_ids, skip_special_tokens=True)


def test_same_seed_same_samples_and_global_rng_untouched(tiny_policy, prompts):
    model, tokenizer = tiny_policy
    spec = SamplingSpec(max_new_tokens=8, temperature=1.0, seed=3, batch_size=4)
    torch.manual_seed(123)
    first = sample_responses(model, tokenizer, prompts, spec, progress=False)
    after_first = torch.rand(1)
    torch.rand(5)  # disturb the global RNG: results must not depend on it
    second = sample_responses(model, tokenizer, prompts, spec, progress=False)
    other_seed = sample_responses(model, tokenizer, prompts, spec.model_copy(update={"seed": 4}), progress=False)
    assert [s.token_ids for s in first] == [s.token_ids for s in second]
    assert [s.token_ids for s in first] != [s.token_ids for s in other_seed]
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after_first)  # sampling consumed none of the caller's random numbers


def test_greedy_batched_equals_one_by_one(untied_model, tokenizer, prompts):
    """Left padding with length masks and position ids changes nothing: batch of 6 == six batches of 1."""
    model = untied_model
    greedy = SamplingSpec(max_new_tokens=6, temperature=0.0, batch_size=6)
    batched = sample_responses(model, tokenizer, prompts, greedy, progress=False)
    alone = sample_responses(model, tokenizer, prompts, greedy.model_copy(update={"batch_size": 1}), progress=False)
    assert [s.token_ids for s in batched] == [s.token_ids for s in alone]
    assert len({tuple(s.token_ids) for s in batched}) > 1  # not a degenerate constant output
    # and it is what a plain forward-pass argmax gives for the first token
    first_ids = encode_prompt(tokenizer, prompts[1].prompt)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([first_ids])).logits[0, -1]
    assert batched[1].token_ids[0] == int(logits.argmax())


def test_stops_at_eos_and_excludes_it(tiny_policy, prompts):
    """Declare a token of one sample the eos and sample again with the same seed: the random draws are
    the same, so sampling must stop exactly there, drop the eos and record it as the stop token; the other
    rows must be unchanged up to their own first eos, though finished rows leave the batch."""
    model, tokenizer = tiny_policy
    spec = SamplingSpec(max_new_tokens=6, temperature=1.0, seed=1, batch_size=3)
    reference = sample_responses(model, tokenizer, prompts[:3], spec, progress=False)
    target = reference[0].token_ids
    stop_token = next(t for t in target[1:] if t != target[0])
    k = target.index(stop_token)  # k >= 1: a non-empty response before the eos
    eos_tokenizer = copy.deepcopy(tokenizer)
    eos_tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stop_token)
    assert eos_tokenizer.eos_token_id == stop_token
    stopped = sample_responses(model, eos_tokenizer, prompts[:3], spec, progress=False)
    assert stopped[0].token_ids == target[:k]
    assert stopped[0].length == k and not stopped[0].truncated and stopped[0].stop_token_id == stop_token
    for before, after in zip(reference[1:], stopped[1:]):
        expected, stop = split_at_stop(before.token_ids, [stop_token, tokenizer.eos_token_id])
        assert (after.token_ids, after.stop_token_id) == (expected, stop)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_engine_samples_what_the_dynamic_engine_samples(untied_model, tokenizer, prompts, temperature):
    """The static cache (buckets, stopped rows computed and ignored) changes no row's tokens. Stop tokens
    are the tokens the dynamic engine drew at step 2 of some rows, so rows stop at different steps and the
    static engine shrinks through its buckets."""
    rows = [encode_prompt(tokenizer, p.prompt) for p in prompts]
    spec = SamplingSpec(max_new_tokens=6, temperature=temperature, batch_size=6)

    def decode(engine, stop_ids):
        generator = torch.Generator().manual_seed(batch_seed(0, 0))
        with torch.inference_mode():
            return decode_batch(engine, rows, spec, stop_ids, generator, tokenizer.pad_token_id)

    def same(results, expected):  # the same tokens and stops; log-probs equal up to float rounding
        assert [r[:2] for r in results] == [e[:2] for e in expected]
        np.testing.assert_allclose([r[2] for r in results], [e[2] for e in expected], rtol=1e-4, atol=1e-4)

    free = decode(DynamicEngine(untied_model), [tokenizer.eos_token_id])
    stop_ids = sorted({tokens[2] for tokens, _, _ in free[:3]})
    dynamic = decode(DynamicEngine(untied_model), stop_ids)
    assert len({len(tokens) for tokens, _, _ in dynamic}) > 1  # rows stopped at different steps
    static = StaticEngine(untied_model, max(map(len, rows)), spec.max_new_tokens, compile_step=False)
    same(decode(static, stop_ids), dynamic)
    same(decode(DynamicEngine(untied_model, prefill_padding=float("inf")), stop_ids), dynamic)  # one padded call


def test_empty_prompt_list(tiny_policy):
    model, tokenizer = tiny_policy
    assert sample_responses(model, tokenizer, [], SamplingSpec(), progress=False) == []
