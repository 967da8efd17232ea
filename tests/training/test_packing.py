"""Packed rows with shared prompts (posweep.training.packing / attention): the layout, the mask rule, and
exactness against padded rows — summed log-probs and their gradients, on tiny Llama, Qwen2 (with sliding
layers), Qwen3 and Gemma-2 (soft-capping, a sliding window shorter than the rows) — and in training."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from posweep.training.attention import DENSE_ROW_TOKENS, PackedAttention, attention_inputs, packed_attention
from posweep.training.logprobs import ResponseLogps, chosen_logps, pack, pair_logps, response_logps
from posweep.training.packing import Packing, _rows_first_fit, dense_mask, mask_mod, pack_examples, pack_pairs

VOCAB = 97


def tiny_model(kind: str, **overrides):
    """A 2-layer random model of the given family, hidden 32, float32."""
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "pad_token_id": 0}
    configs = {
        "llama": (LlamaConfig, LlamaForCausalLM, {}),
        # layer 0 full, layer 1 sliding with a window shorter than the rows
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1}),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 8}),
        # alternating sliding / full layers, window 4 < the longest rows; final-logit and attention soft-capping
        "gemma2": (Gemma2Config, Gemma2ForCausalLM, {"head_dim": 8, "sliding_window": 4, "final_logit_softcapping": 5.0,
                                                     "attn_logit_softcapping": 3.0, "query_pre_attn_scalar": 8}),
    }
    config_class, model_class, extra = configs[kind]
    torch.manual_seed(0)
    return model_class(config_class(**{**common, **extra, **overrides})).float()


def random_pairs(seed: int = 0):
    """Three pairs whose prompt + response rows (up to 16 tokens) are longer than the sliding windows above."""
    generator = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(1, VOCAB, (n,), generator=generator).tolist()

    prompts, chosen, rejected = [ids(7), ids(3), ids(5)], [ids(4), ids(9), ids(1)], [ids(8), ids(2), ids(6)]
    return prompts, chosen, rejected


# ----------------------------------------------------------------------------------------------- layout


def test_pair_layout_positions_and_gather():
    rows = pack_pairs([[11, 12, 13]], [[21, 22]], [[31, 32, 33]], pad_id=0)
    assert rows.input_ids.tolist() == [[11, 12, 13, 21, 22, 31, 32, 33]]
    # Both responses continue the prompt's positions: the rejected one starts at len(prompt) too.
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]
    assert rows.branch_ids.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    # The rejected response's first token (column 5) is predicted from the last prompt token (column 2).
    assert rows.gather_target.tolist() == [3, 4, 5, 6, 7]
    assert rows.gather_source.tolist() == [2, 3, 2, 5, 6]
    assert rows.gather_sequence.tolist() == [0, 0, 1, 1, 1]  # chosen is sequence 0, rejected 1
    assert rows.num_sequences == 2 and rows.real_tokens == 8


def test_rows_are_bounded_and_padded_only_at_the_end():
    prompts, chosen, rejected = [[1] * 5, [2] * 2, [3] * 3], [[4] * 3, [5], []], [[6] * 2, [7] * 2, [8] * 4]
    rows = pack_pairs(prompts, chosen, rejected, pad_id=0, packing=Packing(max_row_tokens=11))
    # group lengths 10, 5, 7; first fit by decreasing length under 11 tokens: three rows (10 | 7 | 5), width 10
    assert rows.input_ids.shape == (3, 10)
    real = rows.segment_ids >= 0
    assert real.sum().item() == 22 == rows.real_tokens
    for row in real.tolist():  # real tokens first, then only padding
        assert row == sorted(row, reverse=True)
    # An empty response counts no token; every other response counts all of its tokens.
    counts = torch.bincount(rows.gather_sequence, minlength=6).tolist()
    assert counts == [3, 1, 0, 2, 2, 4]
    one_row = pack_pairs(prompts, chosen, rejected, pad_id=0)
    assert one_row.input_ids.shape == (1, 22)
    assert pack_pairs(prompts, chosen, rejected, 0, Packing(None, width_multiple=16)).input_ids.shape == (1, 32)
    # first fit by decreasing length; the bound never goes below the longest group
    assert _rows_first_fit([10, 5, 3], None) == [[0, 1, 2]]
    assert _rows_first_fit([5, 10, 3], 13) == [[1, 2], [0]]
    assert _rows_first_fit([10, 5, 3], 12) == _rows_first_fit([10, 5, 3], 1) == [[0], [1, 2]]


def test_mask_rule_prompt_shared_responses_apart_pairs_apart():
    rows = pack_pairs([[1, 2], [3]], [[4, 5], [6]], [[7], [8, 9]], pad_id=0, packing=Packing(width_multiple=12))
    # columns: pair A = 0,1 prompt | 2,3 chosen | 4 rejected; pair B = 5 prompt | 6 chosen | 7,8 rejected; 9-11 pad
    # (the longer group goes first)
    allowed = dense_mask(rows)[0, 0]
    assert allowed[4, :5].tolist() == [True, True, False, False, True]  # rejected sees its prompt, not chosen
    assert allowed[3, :5].tolist() == [True, True, True, True, False]
    assert not allowed[5:9, :5].any() and not allowed[:5, 5:].any()  # nothing crosses pairs
    assert allowed[8, 5:9].tolist() == [True, False, True, True]
    assert allowed[9:].sum().item() == 3 and allowed[9:, 9:].diagonal().all()  # padding sees only itself
    windowed = dense_mask(rows, window=2)[0, 0]
    # the rejected token at column 8 has position 2: with a window of 2 it no longer sees position 0
    assert windowed[8, 5:9].tolist() == [False, False, True, True]


def test_flex_mask_mod_is_the_dense_rule():
    prompts, chosen, rejected = random_pairs()
    rows = pack_pairs(prompts, chosen, rejected, pad_id=0, packing=Packing(max_row_tokens=30))
    batch, width = rows.input_ids.shape
    b = torch.arange(batch)[:, None, None]
    q, kv = torch.arange(width)[None, :, None], torch.arange(width)[None, None, :]
    for window in (None, 4):
        assert torch.equal(mask_mod(rows, window)(b, 0, q, kv), dense_mask(rows, window)[:, 0])


def test_flex_block_mask_builds_from_the_rule():
    from torch.nn.attention.flex_attention import create_block_mask

    rows = pack_pairs(*random_pairs(), pad_id=0, packing=Packing(None, width_multiple=128))
    block_mask = create_block_mask(mask_mod(rows, 4), B=1, H=None, Q_LEN=128, KV_LEN=128, device="cpu", _compile=False)
    assert block_mask.shape == (1, 1, 128, 128)


# ------------------------------------------------------------------------------------------- exactness


def _values_and_grads(model, compute, weights):
    model.zero_grad()
    sums, counts = compute()
    (sums * weights).sum().backward()  # distinct weights per response: the gradient of each sum matters
    return sums.detach(), counts, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma2"])
@pytest.mark.parametrize("max_row_tokens", [None, 20])
def test_packed_pairs_equal_padded_values_and_gradients(kind, max_row_tokens):
    model = tiny_model(kind)
    plan = packed_attention(model)
    assert isinstance(plan, PackedAttention), plan
    if kind in ("qwen2", "gemma2"):
        assert plan.windows["sliding_attention"] is not None and plan.by_layer_type
    prompts, chosen, rejected = random_pairs()
    weights = torch.linspace(0.5, 2.0, 6)
    padded = pack(prompts + prompts, chosen + rejected, pad_id=0)
    packed = pack_pairs(prompts, chosen, rejected, pad_id=0, packing=Packing(max_row_tokens))
    assert packed.input_ids.numel() < padded.input_ids.numel()
    reference = _values_and_grads(model, lambda: response_logps(model, padded, chunk_size=7), weights)
    result = _values_and_grads(model, lambda: response_logps(model, packed, chunk_size=7, attention=plan), weights)
    assert result[1].tolist() == reference[1].tolist() == [len(r) for r in chosen + rejected]
    torch.testing.assert_close(result[0], reference[0], rtol=1e-5, atol=1e-5)
    assert result[2].keys() == reference[2].keys()
    for name, grad in reference[2].items():
        torch.testing.assert_close(result[2][name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["qwen2", "gemma2"])
def test_the_sliding_window_changes_the_numbers(kind):
    """The windows above are short enough to matter, so the exactness test would catch a packed path that
    dropped them."""
    prompts, chosen, rejected = random_pairs()
    batch = pack(prompts + prompts, chosen + rejected, pad_id=0)
    with torch.no_grad():
        narrow, _ = response_logps(tiny_model(kind), batch)
        wide, _ = response_logps(tiny_model(kind, sliding_window=64), batch)
    assert (narrow - wide).abs().max() > 1e-3


def test_packed_sft_examples_equal_padded():
    model = tiny_model("gemma2")
    prompts, chosen, _ = random_pairs(seed=3)
    weights = torch.tensor([1.0, -0.5, 2.0])
    reference = _values_and_grads(model, lambda: response_logps(model, pack(prompts, chosen, 0)), weights)
    result = _values_and_grads(model, lambda: response_logps(model, pack_examples(prompts, chosen, 0)), weights)
    torch.testing.assert_close(result[0], reference[0], rtol=1e-5, atol=1e-5)
    for name, grad in reference[2].items():
        torch.testing.assert_close(result[2][name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_eager_attention_takes_an_additive_mask():
    model = tiny_model("gemma2")
    plan = packed_attention(model)
    assert plan.implementation == "eager"  # Gemma-2 has no SDPA (soft-capping)
    inputs = attention_inputs(plan, pack_pairs(*random_pairs(), pad_id=0), torch.float32)
    masks = inputs["attention_mask"]
    assert set(masks) == {"full_attention", "sliding_attention"}
    assert masks["full_attention"].dtype == torch.float32 and masks["full_attention"].max() == 0


# ---------------------------------------------------------------------------------- module and fallback


def test_scorer_packs_pairs_and_sft_by_index(tokenizer, caplog):
    from posweep.data import TokenizedPairs

    prompts, chosen, rejected = random_pairs(seed=4)
    pairs = TokenizedPairs([str(i) for i in range(3)], prompts, chosen, rejected, "test", {})
    model = tiny_model("qwen3")
    with caplog.at_level(logging.INFO, logger="posweep.training.logprobs"):
        scorer = ResponseLogps(model, packing=True)
    assert scorer.packing == Packing(DENSE_ROW_TOKENS) and "packed rows" in caplog.text
    with torch.no_grad():
        for score in (pair_logps, chosen_logps):
            packed = score(scorer, pairs, [2, 0], 0, "cpu", scorer.packing)
            padded = score(scorer, pairs, [2, 0], 0, "cpu")
            torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-5)
            assert packed[1].tolist() == padded[1].tolist()


def test_models_that_cannot_take_the_mask_fall_back_to_padded_rows(caplog):
    model = tiny_model("llama")
    model.config._attn_implementation_internal = "flash_attention_2"  # takes no arbitrary mask
    reason = packed_attention(model)
    assert isinstance(reason, str) and "flash_attention_2" in reason
    with caplog.at_level(logging.WARNING, logger="posweep.training.logprobs"):
        assert ResponseLogps(model, packing=True).packing is None
    assert "padded rows, not packed" in caplog.text and "flash_attention_2" in caplog.text
    assert "chunked_attention" in packed_attention(tiny_model("llama", layer_types=["full_attention", "chunked_attention"]))


def test_a_model_that_ignores_the_mask_is_caught_by_the_probe(caplog, monkeypatch):
    model = tiny_model("llama")
    body = model.get_decoder()
    forward = body.forward

    def mask_ignoring_forward(input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        # plain causal attention whatever the mask: packed pairs would see each other
        return forward(input_ids=input_ids, position_ids=position_ids, **kwargs)

    monkeypatch.setattr(body, "forward", mask_ignoring_forward)
    with caplog.at_level(logging.WARNING, logger="posweep.training.logprobs"):
        assert ResponseLogps(model, packing=True).packing is None
    assert "differ" in caplog.text
    assert ResponseLogps(model, packing=False).packing is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention has no backward on CPU (torch 2.13)")
def test_flex_attention_on_gpu_equals_padded():
    model = tiny_model("gemma2").cuda()
    scorer = ResponseLogps(model, packing=True)
    assert scorer.attention.implementation == "flex_attention"
    prompts, chosen, rejected = random_pairs()
    weights = torch.linspace(0.5, 2.0, 6, device="cuda")
    model.set_attn_implementation("eager")
    reference = _values_and_grads(model, lambda: response_logps(model, pack(prompts + prompts, chosen + rejected, 0).cuda()), weights)
    model.set_attn_implementation("flex_attention")
    result = _values_and_grads(model, lambda: scorer(pack_pairs(prompts, chosen, rejected, 0, scorer.packing).to("cuda")), weights)
    torch.testing.assert_close(result[0], reference[0], rtol=1e-4, atol=1e-4)
    for name, grad in reference[2].items():
        torch.testing.assert_close(result[2][name], grad, rtol=1e-4, atol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------- training


def test_four_training_steps_packed_and_padded_give_the_same_losses(tiny_model_dir, tokenizer, tmp_path, monkeypatch,
                                                                    caplog):
    from posweep.config import DataLimits, OptimConfig
    from posweep.data import Pair, prepare_pairs
    from posweep.training import train_preference, train_sft
    from posweep.training.reference import compute_pair_logps

    questions = ["What is the capital of France?", "Name a primary colour.", "What is photosynthesis?",
                 "How do I boil an egg?", "Why is the sky blue?", "What is 2+2?", "Who wrote Hamlet?", "Define gravity."]
    pairs = prepare_pairs("packing-test", tokenizer, DataLimits(max_prompt_length=64, max_length=96), pairs=[
        Pair(str(i), [{"role": "user", "content": q}], "A short, accurate answer" + " indeed" * (i % 3),
             "I don't know" + ", sorry" * (i % 4)) for i, q in enumerate(questions)])
    from posweep.models import load_policy

    model, _ = load_policy(str(tiny_model_dir), dtype="float32", device="cpu")
    packed_reference, _ = compute_pair_logps(model, pairs, tokenizer.pad_token_id, batch_size=3, progress=False, packing=True)
    padded_reference, _ = compute_pair_logps(model, pairs, tokenizer.pad_token_id, batch_size=3, progress=False,
                                             packing=False)
    assert set(packed_reference) == {"chosen", "rejected", "chosen_tail", "rejected_tail"}
    for name, values in packed_reference.items():
        torch.testing.assert_close(values, padded_reference[name], rtol=1e-5, atol=1e-5)

    losses = {}
    for packing in (True, False):
        monkeypatch.setenv("POSWEEP_CACHE", str(tmp_path / f"cache-{packing}"))  # each computes its own reference
        optim = OptimConfig(learning_rate=1e-3, epochs=2, batch_size=4, micro_batch_size=2, warmup_ratio=0.0,
                            packing=packing)
        for method in ("dpo", "sft"):
            out = tmp_path / f"{method}-{packing}"
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="posweep.training.logprobs"):
                if method == "dpo":
                    result = train_preference(str(tiny_model_dir), pairs, "dpo", {"beta": 0.1}, optim, out,
                                              progress=False, device="cpu")
                else:
                    result = train_sft(str(tiny_model_dir), pairs, optim, out, progress=False, device="cpu")
            assert result.status == "done"
            assert ("packed rows with shared prompts" in caplog.text) == packing
            log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
            assert len(log) == 4
            losses[method, packing] = [r["loss"] for r in log]
            losses[method, packing, "tokens"] = [r["tokens"] for r in log]
    for method in ("dpo", "sft"):
        assert losses[method, True] == pytest.approx(losses[method, False], abs=1e-4)
        assert losses[method, True, "tokens"] == losses[method, False, "tokens"]  # counted the same way
    assert losses["dpo", True][-1] != losses["dpo", True][0]  # the steps did train


def test_packing_setting_round_trips_and_the_default_leaves_run_hashes_alone():
    from posweep.config import OptimConfig

    assert OptimConfig().packing is True
    assert "packing" not in OptimConfig().model_dump()  # run ids and sweep contexts hash model_dump()
    off = OptimConfig(packing=False)
    assert off.model_dump(mode="json")["packing"] is False
    assert OptimConfig(**off.model_dump()).packing is False
