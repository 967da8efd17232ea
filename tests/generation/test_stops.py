"""posweep.generation.stops: responses end at the model's own end-of-turn token, in every backend.

The tokenizer here closes turns with ``<|end|>`` while its eos is ``<|endoftext|>`` (Phi-3's arrangement) and
the model's generation config names only the eos: sampling must stop at ``<|end|>`` too, the response must
exclude it, the KL must count it, and training responses must end with it."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from posweep.config import DataLimits, SamplingSpec
from posweep.data import (
    PromptItem,
    encode_prompt,
    encode_response,
    end_of_turn_id,
    pairs_from_rows,
    tokenize_pairs,
)
from posweep.evaluation import sampled_logps
from posweep.generation import sample_responses, split_at_stop, stop_token_ids
from posweep.generation.vllm_backend import completion_result, prompt_seed, sample_vllm
from posweep.training.logprobs import naive_response_logps, pack
from tests.small_vocab import END, EOS, phi3_like_tokenizer, small_model


@pytest.fixture(scope="module")
def phi3():
    return phi3_like_tokenizer()


def test_end_of_turn_token_comes_from_the_template(phi3, tokenizer):
    assert end_of_turn_id(phi3) == END != phi3.eos_token_id
    assert end_of_turn_id(tokenizer) == tokenizer.eos_token_id  # SmolLM2: <|im_end|> is both
    plain = phi3_like_tokenizer()
    plain.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_id(plain) == EOS  # a turn closed by plain text: fall back to eos
    assert stop_token_ids(phi3) == [END, EOS]
    assert stop_token_ids(phi3, SimpleNamespace(eos_token_id=[EOS, 4])) == [END, EOS, 4]  # Phi-3 lists <|assistant|>


def test_sampling_stops_at_the_end_of_turn_token_and_the_kl_counts_it(phi3):
    model = small_model(seed=3)
    assert model.generation_config.eos_token_id == EOS  # the end-of-turn token is not in the model's config
    prompts = [PromptItem(f"p{i}", [{"role": "user", "content": "a b"}]) for i in range(200)]
    samples = sample_responses(model, phi3, prompts, SamplingSpec(max_new_tokens=4, temperature=1.0, batch_size=64),
                               progress=False)
    ended = [s for s in samples if s.stop_token_id == END]
    assert ended and any(s.stop_token_id == EOS for s in samples)
    for sample in samples:
        assert END not in sample.token_ids and EOS not in sample.token_ids  # the response excludes it
        assert sample.truncated == (sample.stop_token_id is None) == (sample.length == 4 and sample.stop_token_id is None)
    # the KL's log-probs include the stop token: the textbook sum over the response ids + <|end|>
    sample = max(ended, key=lambda s: s.length)
    logp = sampled_logps(model, phi3, prompts[:1], [sample.token_ids], [sample.stop_token_id])
    batch = pack([encode_prompt(phi3, prompts[0].prompt)], [sample.token_ids + [END]], phi3.pad_token_id)
    with torch.no_grad():
        expected, counted = naive_response_logps(model, batch)
    assert int(counted[0]) == sample.length + 1 and logp[0] == pytest.approx(float(expected[0]), rel=1e-5)


def test_training_responses_end_with_the_end_of_turn_token(phi3):
    assert encode_response(phi3, "a b") == [5, 6, END]
    pairs, _ = pairs_from_rows([{"prompt": "a", "chosen": "b c", "rejected": "c"}], "mem")
    tokenized = tokenize_pairs(pairs, phi3, DataLimits(max_prompt_length=16, max_length=32))
    assert tokenized.chosen_ids == [[6, 7, END]] and tokenized.rejected_ids == [[7, END]]


class FakeVllm:
    """Stands in for the ``vllm`` module: records what posweep asks for and returns completions that keep
    the stop token in ``token_ids``, as vLLM does."""

    def __init__(self, outputs):
        self.outputs, self.params, self.engine_args = outputs, [], {}

    def module(self):
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.engine_args = kwargs

            def generate(self, requests, params):
                fake.params = params
                return [SimpleNamespace(outputs=[completion]) for completion in fake.outputs[: len(requests)]]

        return types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kwargs: kwargs)


def test_vllm_backend_stops_and_returns_like_the_hf_backend(phi3, monkeypatch, tmp_path):
    stops = stop_token_ids(phi3)
    rows = [[5, END, 6], [5, 6, 7], [EOS], [6, 7]]  # what vLLM generated (stop token kept)
    completions = [SimpleNamespace(token_ids=r, finish_reason="stop" if set(r) & set(stops) else "length",
                                   stop_reason=END if END in r else None) for r in rows[:3]]
    completions.append(SimpleNamespace(token_ids=[6, 7], finish_reason="stop", stop_reason=END))  # stop id dropped
    fake = FakeVllm(completions)
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    model = SimpleNamespace(config=SimpleNamespace(_name_or_path=str(tmp_path)), device=torch.device("cuda"),
                            dtype=torch.bfloat16)
    spec = SamplingSpec(max_new_tokens=3, temperature=0.7, top_p=0.9, seed=5)
    results = sample_vllm(model, [[1], [2], [3], [4]], spec, stops)
    assert results[:3] == [split_at_stop(r, stops) for r in rows[:3]]  # exactly the hf backend's rule
    assert results[3] == ([6, 7], END) == completion_result([6, 7], "stop", END, stops)
    assert [p["stop_token_ids"] for p in fake.params] == [stops] * 4
    assert [p["seed"] for p in fake.params] == [prompt_seed(5, i) for i in range(4)]  # one seed per prompt
    assert {p["temperature"] for p in fake.params} == {0.7} and {p["max_tokens"] for p in fake.params} == {3}
    assert fake.engine_args["model"] == str(tmp_path) and fake.engine_args["dtype"] == "bfloat16"
