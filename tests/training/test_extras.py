"""posweep.training.logprobs extras from the same chunked pass: LD-DPO's tail sums and WPO's log Σ π²,
equal in padded and packed layouts and to a textbook computation from full logits."""

from __future__ import annotations

import torch

from posweep.training.logprobs import ResponseLogps, pack, ranks_in_sequence, response_logps
from posweep.training.packing import Packing, pack_pairs

PROMPTS = [[5, 6, 7], [8, 9]]
CHOSEN = [[11, 12, 13, 14, 15], [16, 17]]
REJECTED = [[21, 22], [23, 24, 25, 26]]


def textbook(model, prompts, responses):
    """Per response: every token's log-prob and log Σ_v π(v)², from full logits of its own unpadded row."""
    per_token, per_sq = [], []
    for prompt, response in zip(prompts, responses):
        ids = torch.tensor([prompt + response])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
        logps = logits.log_softmax(-1)
        per_token.append(logps.gather(-1, ids[0, len(prompt):, None]).squeeze(-1))
        per_sq.append(torch.logsumexp(2 * logps, -1))
    return per_token, per_sq


def test_ranks_follow_each_response_in_order():
    sequence = torch.tensor([1, 0, 0, 1, 2, 0])
    counts = torch.bincount(sequence)
    assert ranks_in_sequence(sequence, counts).tolist() == [0, 0, 1, 1, 0, 2]


def test_tails_and_log_sum_sq_match_the_textbook_in_both_layouts(tiny_policy):
    model, _ = tiny_policy
    model.eval()
    responses = CHOSEN + REJECTED
    per_token, per_sq = textbook(model, PROMPTS + PROMPTS, responses)
    shared = [min(len(c), len(r)) for c, r in zip(CHOSEN, REJECTED)] * 2
    expected_tail = torch.stack([t[k:].sum() for t, k in zip(per_token, shared)]).float()
    expected_sq = torch.stack([s.sum() for s in per_sq]).float()
    assert expected_tail[0] != 0 and expected_tail[3] != 0 and expected_tail[1] == expected_tail[2] == 0

    scorer = ResponseLogps(model, packing=True)
    with torch.no_grad():
        padded = response_logps(model, pack(PROMPTS + PROMPTS, responses, 0), pairs_of=2, log_sum_sq=True)
        packed = scorer(pack_pairs(PROMPTS, CHOSEN, REJECTED, 0, scorer.packing or Packing()), pairs_of=2,
                        log_sum_sq=True)
    for sums, counts, extras in (padded, packed):
        assert counts.tolist() == [len(r) for r in responses]
        torch.testing.assert_close(sums, torch.stack([t.sum() for t in per_token]).float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(extras["tail"], expected_tail, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(extras["log_sum_sq"], expected_sq, rtol=1e-5, atol=1e-5)


def test_tails_carry_gradients_and_log_sum_sq_does_not(tiny_policy):
    model, _ = tiny_policy
    sums, _, extras = response_logps(model, pack(PROMPTS + PROMPTS, CHOSEN + REJECTED, 0), pairs_of=2, log_sum_sq=True)
    assert sums.requires_grad and extras["tail"].requires_grad and not extras["log_sum_sq"].requires_grad
    extras["tail"].sum().backward()
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
