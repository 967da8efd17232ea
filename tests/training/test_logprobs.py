"""Chunked response log-probs (posweep.training.logprobs) against the textbook full-logits computation."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from posweep.training.logprobs import naive_response_logps, pack, response_logps, response_target_mask


def random_rows(vocab_size: int, eos_id: int, prompt_lengths, response_lengths, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in prompt_lengths]
    responses = [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in response_lengths]
    for response in responses[::2]:
        if response:
            response[-1] = eos_id  # like real data: a response ends in eos, which is also the pad id here
    return prompts, responses


def test_target_mask_covers_exactly_the_response_tokens():
    batch = pack([[5, 6, 7], [5], [5, 6]], [[8, 9], [8, 9, 10, 11], []], pad_id=0)
    mask = response_target_mask(batch)
    # Row 0: positions 2, 3 predict tokens 3, 4 (the response); position 4 is padding.
    assert mask.tolist() == [[False, False, True, True], [True, True, True, True], [False, False, False, False]]
    assert mask.sum(1).tolist() == batch.response_lengths.tolist() == [2, 4, 0]
    assert batch.attention_mask.sum(1).tolist() == [5, 5, 2]


def test_chunked_equals_naive_values_and_gradients(tiny_policy):
    model, tokenizer = tiny_policy
    prompts, responses = random_rows(len(tokenizer), tokenizer.eos_token_id, [3, 9, 1, 5], [6, 2, 11, 1])
    batch = pack(prompts, responses, tokenizer.pad_token_id)

    model.zero_grad()
    naive, naive_counts = naive_response_logps(model, batch)
    naive.sum().backward()
    naive_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    # One position per chunk, chunks that straddle rows, one chunk larger than all 20 positions.
    for chunk_size in (1, 7, 4096):
        model.zero_grad()
        chunked, counts = response_logps(model, batch, chunk_size=chunk_size)
        chunked.sum().backward()
        assert chunked.dtype == torch.float32 and counts.tolist() == naive_counts.tolist() == [6, 2, 11, 1]
        torch.testing.assert_close(chunked, naive, rtol=1e-5, atol=1e-5)
        for name, p in model.named_parameters():
            # Summation order differs (chunks vs one matmul): float32 noise ~1e-5 on gradients of size ~1.
            torch.testing.assert_close(p.grad, naive_grads[name], rtol=1e-4, atol=1e-4)
    model.zero_grad()


def test_rows_do_not_see_each_others_padding_and_pad_equal_to_eos_does_not_leak(tiny_policy):
    model, tokenizer = tiny_policy
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: the case this test is about
    prompts, responses = random_rows(len(tokenizer), tokenizer.eos_token_id, [4, 12, 2], [3, 8, 1], seed=1)
    with torch.no_grad():
        together, counts = response_logps(model, pack(prompts, responses, tokenizer.pad_token_id), chunk_size=5)
        other_pad, _ = response_logps(model, pack(prompts, responses, pad_id=17), chunk_size=5)
        alone = [response_logps(model, pack([p], [r], tokenizer.pad_token_id))[0].item() for p, r in zip(prompts, responses)]
    assert counts.tolist() == [len(r) for r in responses]  # the final eos is counted, the padding after it is not
    torch.testing.assert_close(together, torch.tensor(alone), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together, other_pad)


class BagOfTokensLM(torch.nn.Module):
    """A causal LM whose hidden state at position t depends only on token t (no attention), so the logits of
    any position can be changed by changing its input token alone."""

    def __init__(self, vocab_size: int = 11, hidden: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace()
        self.embed = torch.nn.Embedding(vocab_size, hidden)
        self.head = torch.nn.Linear(hidden, vocab_size, bias=False)

    def get_decoder(self):
        embed = self.embed
        return lambda input_ids, attention_mask: SimpleNamespace(last_hidden_state=embed(input_ids))

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.head(self.embed(input_ids)))


@pytest.mark.parametrize("compute", [response_logps, naive_response_logps])
def test_logits_at_prompt_positions_do_not_count(compute):
    model = BagOfTokensLM()
    prompt, response = [1, 2, 3, 4], [5, 6, 7]
    with torch.no_grad():
        base, count = compute(model, pack([prompt], [response], pad_id=0))
        # Tokens 0..2 only produce the logits that predict prompt tokens 1..3: irrelevant to the response.
        changed_early, _ = compute(model, pack([[9, 9, 9, 4]], [response], pad_id=0))
        # The last prompt token's logits predict the first response token: that must matter.
        changed_last, _ = compute(model, pack([[1, 2, 3, 9]], [response], pad_id=0))
    assert count.item() == len(response)
    assert torch.equal(base, changed_early)
    assert not torch.allclose(base, changed_last)


def test_no_grad_path_matches_and_bf16_weights_return_float32(tiny_policy):
    model, tokenizer = tiny_policy
    prompts, responses = random_rows(len(tokenizer), tokenizer.eos_token_id, [3, 6], [4, 7], seed=2)
    batch = pack(prompts, responses, tokenizer.pad_token_id)
    with torch.no_grad():
        chunked, _ = response_logps(model, batch, chunk_size=3)
        naive, _ = naive_response_logps(model, batch)
    torch.testing.assert_close(chunked, naive, rtol=1e-5, atol=1e-5)
    assert torch.all(chunked < 0)
    with torch.no_grad():
        low_precision, _ = response_logps(copy.deepcopy(model).to(torch.bfloat16), batch, chunk_size=3)
    assert low_precision.dtype == torch.float32  # summed in float32 whatever the weights
    torch.testing.assert_close(low_precision, chunked, rtol=0.02, atol=0.5)


def test_pack_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        pack([[1], [2]], [[3]], pad_id=0)


def test_heads_that_rescale_logits_are_refused_rather_than_miscomputed():
    model = BagOfTokensLM()
    model.config.logits_scaling = 8.0  # Granite divides its logits by this after the LM head
    with pytest.raises(NotImplementedError, match="logits_scaling"):
        response_logps(model, pack([[1, 2]], [[3]], pad_id=0))
