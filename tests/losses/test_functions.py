"""posweep.losses.functions: hand-computed values, gradients, reference use, LN-DPO = SimPO with a per-pair margin."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posweep.losses import METHODS, get_method
from posweep.losses.functions import LossOutput, compute_loss, simpo_loss
from tests.losses.hand import BATCH_LEVEL, HAND_HPARAMS, PAIRS, aot_batch, expected, tensor_inputs


def test_hand_hparams_cover_every_method():
    assert set(HAND_HPARAMS) == set(METHODS)


@pytest.mark.parametrize("method", sorted(set(HAND_HPARAMS) - BATCH_LEVEL))
def test_loss_matches_hand_computed_values(method):
    hp = HAND_HPARAMS[method]
    output = compute_loss(method, hparams=hp, **tensor_inputs(PAIRS))
    full = get_method(method).loss_kwargs(hp)
    want = torch.tensor([expected(method, p, full) for p in PAIRS], dtype=torch.float64)
    torch.testing.assert_close(output.losses, want[:, 0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(output.chosen_rewards, want[:, 1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(output.rejected_rewards, want[:, 2], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(output.margins, want[:, 1] - want[:, 2], rtol=1e-9, atol=1e-12)
    assert output.loss.item() == pytest.approx(want[:, 0].mean().item(), rel=1e-9)


@pytest.mark.parametrize("method", list(METHODS))
def test_losses_carry_gradients_and_rewards_do_not(method):
    inputs = tensor_inputs(PAIRS, dtype=torch.float32)
    policy_chosen = inputs["policy_chosen_logps"].requires_grad_()
    output = compute_loss(method, **inputs)
    assert isinstance(output, LossOutput) and output.losses.shape == (len(PAIRS),)
    assert not output.chosen_rewards.requires_grad and not output.rejected_rewards.requires_grad
    output.loss.backward()
    assert policy_chosen.grad is not None and torch.isfinite(policy_chosen.grad).all()


@pytest.mark.parametrize("method", [m.name for m in METHODS.values() if not m.needs_reference])
def test_reference_free_methods_ignore_reference_logps(method):
    inputs = tensor_inputs(PAIRS)
    with_reference = compute_loss(method, **inputs)
    inputs.update(reference_chosen_logps=None, reference_rejected_logps=None)
    torch.testing.assert_close(compute_loss(method, **inputs).losses, with_reference.losses)


def test_zero_length_response_is_finite():
    inputs = tensor_inputs(PAIRS)
    inputs["rejected_lengths"] = torch.tensor([0, 2, 5])
    inputs["policy_rejected_logps"] = torch.tensor([0.0, -8.0, -2.5], dtype=torch.float64)
    for method in METHODS:
        assert torch.isfinite(compute_loss(method, **inputs).losses).all(), method
    inputs["chosen_lengths"] = torch.tensor([0, 10, 3])  # an empty chosen response too (nll divides by it)
    inputs["policy_chosen_logps"] = torch.tensor([0.0, -30.0, -1.2], dtype=torch.float64)
    for method in METHODS:
        assert torch.isfinite(compute_loss(method, **inputs).losses).all(), method


pair_values = st.tuples(st.floats(-300, -0.01), st.floats(-300, -0.01), st.floats(-300, -0.01),
                        st.floats(-300, -0.01), st.integers(1, 400), st.integers(1, 400))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(pair_values, min_size=1, max_size=8), beta=st.floats(0.1, 20.0))
def test_ln_dpo_is_simpo_with_per_pair_reference_margin(rows, beta):
    """Eq. 1 of the paper: LN-DPO(β) = SimPO(β, γ) with γ = β(log πref(y_w)/|y_w| − log πref(y_l)/|y_l|)."""
    lw, ll, ref_w, ref_l = (torch.tensor([r[i] for r in rows], dtype=torch.float64) for i in range(4))
    len_w, len_l = (torch.tensor([r[i] for r in rows]) for i in (4, 5))
    ln_dpo = compute_loss("ln_dpo", hparams={"beta": beta}, policy_chosen_logps=lw, policy_rejected_logps=ll,
                          reference_chosen_logps=ref_w, reference_rejected_logps=ref_l,
                          chosen_lengths=len_w, rejected_lengths=len_l)
    margin = ref_w / len_w - ref_l / len_l  # γ/β per pair: γ = β · margin
    simpo = simpo_loss(lw, ll, None, None, len_w, len_l, beta=beta, gamma_beta_ratio=margin)
    torch.testing.assert_close(ln_dpo.losses, simpo.losses, rtol=1e-9, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(rows=st.lists(pair_values, min_size=1, max_size=8), beta=st.floats(0.01, 1.0))
def test_cdpo_and_r_dpo_reduce_to_dpo(rows, beta):
    """cDPO with ε = 0 and R-DPO with α = 0 are DPO."""
    inputs = tensor_inputs([SimpleNamespace(lw=r[0], ll=r[1], ref_w=r[2], ref_l=r[3], len_w=r[4], len_l=r[5])
                            for r in rows])
    dpo = compute_loss("dpo", hparams={"beta": beta}, **inputs).losses
    cdpo = compute_loss("cdpo", hparams={"beta": beta, "epsilon": 0.0}, **inputs).losses
    r_dpo = compute_loss("r_dpo", hparams={"beta": beta, "alpha": 0.0}, **inputs).losses
    torch.testing.assert_close(cdpo, dpo, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r_dpo, dpo, rtol=1e-12, atol=1e-12)


def test_reference_methods_require_reference_logps():
    inputs = tensor_inputs(PAIRS)
    inputs["reference_rejected_logps"] = None
    with pytest.raises(ValueError, match="'hinge' needs reference log-probs"):
        compute_loss("hinge", **inputs)


@pytest.mark.parametrize("method", sorted(BATCH_LEVEL))
def test_aot_is_a_batch_level_loss(method):
    """AOT sorts the batch: its mean equals the quantile-matched hand value, which is not the mean of the pairs'
    own losses; one pair alone is cdpo (the sort is then the identity)."""
    hp = HAND_HPARAMS[method]
    assert get_method(method).batch_level
    batch = compute_loss(method, hparams=hp, **tensor_inputs(PAIRS))
    assert batch.loss.item() == pytest.approx(aot_batch(method, PAIRS, hp), rel=1e-9)
    singles = [compute_loss(method, hparams=hp, **tensor_inputs([p])).loss.item() for p in PAIRS]
    assert abs(batch.loss.item() - sum(singles) / len(singles)) > 1e-3
    cdpo = compute_loss("cdpo", hparams=hp, **tensor_inputs(PAIRS)).losses
    torch.testing.assert_close(torch.tensor(singles, dtype=torch.float64), cdpo, rtol=1e-9, atol=1e-12)
    # rewards stay per pair (β·rw), in the batch's order
    torch.testing.assert_close(batch.chosen_rewards, cdpo.new_tensor([hp["beta"] * (p.lw - p.ref_w) for p in PAIRS]))


@settings(max_examples=20, deadline=None)
@given(rows=st.lists(pair_values, min_size=1, max_size=8), beta=st.floats(0.01, 1.0))
def test_dpo_options_reduce_to_dpo(rows, beta):
    """f-DPO with α = 1 (reverse KL), LD-DPO with α = 1, WPO with weights 1 and RPO without NLL are DPO."""
    pairs = [SimpleNamespace(lw=r[0], ll=r[1], ref_w=r[2], ref_l=r[3], len_w=r[4], len_l=r[5],
                             tail_w=r[0] / 2, tail_l=r[1] / 3, ref_tail_w=r[2] / 2, ref_tail_l=r[3] / 3,
                             lss_w=r[0], lss_l=r[1]) for r in rows]  # lss = l: WPO weights exp(0) = 1
    inputs = tensor_inputs(pairs)
    dpo = compute_loss("dpo", hparams={"beta": beta}, **inputs)
    for method, hp in [("f_dpo", {"f_alpha": 1.0}), ("ld_dpo", {"ld_alpha": 1.0}), ("wpo", {}),
                       ("rpo", {"nll_weight": 0.0})]:
        other = compute_loss(method, hparams={"beta": beta, **hp}, **inputs)
        torch.testing.assert_close(other.losses, dpo.losses, rtol=1e-9, atol=1e-9, msg=method)
        torch.testing.assert_close(other.chosen_rewards, dpo.chosen_rewards, rtol=1e-9, atol=1e-9, msg=method)


def test_f_dpo_at_zero_is_forward_kl_and_clamps_like_trl():
    inputs = tensor_inputs(PAIRS)
    rw = inputs["policy_chosen_logps"] - inputs["reference_chosen_logps"]
    rl = inputs["policy_rejected_logps"] - inputs["reference_rejected_logps"]
    forward_kl = -torch.nn.functional.logsigmoid(0.3 * ((1 - torch.exp(-rw)) - (1 - torch.exp(-rl))))
    out = compute_loss("f_dpo", hparams={"beta": 0.3, "f_alpha": 0.0}, **inputs)
    torch.testing.assert_close(out.losses, forward_kl, rtol=1e-12, atol=1e-12)
    from posweep.losses.options import alpha_divergence_scores

    # (α − 1)·r capped at 80 (11 in float16) before exp, as TRL: a log-ratio of −1000 stays finite
    huge = torch.tensor([-1000.0])
    assert alpha_divergence_scores(huge, 0.0).item() == pytest.approx(1 - torch.exp(torch.tensor(80.0)).item())
    assert torch.isfinite(alpha_divergence_scores(huge.half(), 0.0)).all()


def test_ld_dpo_weights_only_the_longer_responses_tail():
    """ld_alpha = 0 compares the pairs on their shared length only: a tail change moves nothing."""
    inputs = tensor_inputs(PAIRS)
    base = compute_loss("ld_dpo", hparams={"ld_alpha": 0.0}, **inputs).losses
    moved = dict(inputs, policy_rejected_tail_logps=inputs["policy_rejected_tail_logps"] - 5.0,
                 policy_rejected_logps=inputs["policy_rejected_logps"] - 5.0)
    torch.testing.assert_close(compute_loss("ld_dpo", hparams={"ld_alpha": 0.0}, **moved).losses, base)
    assert not torch.allclose(compute_loss("ld_dpo", hparams={"ld_alpha": 0.5}, **moved).losses, base)


def test_wpo_weights_carry_no_gradient():
    inputs = tensor_inputs(PAIRS)
    policy = inputs["policy_chosen_logps"].requires_grad_()
    compute_loss("wpo", **inputs).loss.backward()
    from posweep.losses.options import wpo_weights

    weights = (wpo_weights(inputs["policy_chosen_logps"], inputs["policy_chosen_log_sum_sq_probs"],
                           inputs["chosen_lengths"])
               * wpo_weights(inputs["policy_rejected_logps"], inputs["policy_rejected_log_sum_sq_probs"],
                             inputs["rejected_lengths"]))
    plain = tensor_inputs(PAIRS)
    dpo_policy = plain["policy_chosen_logps"].requires_grad_()
    (compute_loss("dpo", **plain).losses * weights / len(PAIRS)).sum().backward()
    torch.testing.assert_close(policy.grad, dpo_policy.grad)  # weight × DPO's gradient, no d(weight)


def test_methods_that_need_extra_inputs_say_which():
    inputs = tensor_inputs(PAIRS)
    inputs["policy_rejected_tail_logps"] = None
    with pytest.raises(ValueError, match="'ld_dpo' needs the per-pair inputs policy_rejected_tail_logps"):
        compute_loss("ld_dpo", **inputs)
    compute_loss("dpo", **inputs)  # a method that does not use them ignores them
    with pytest.raises(ValueError, match="'wpo' needs the per-pair inputs policy_chosen_log_sum_sq_probs"):
        compute_loss("wpo", **{**inputs, "policy_chosen_log_sum_sq_probs": None})


def test_an_ad_hoc_combination_is_the_weighted_sum_of_its_components():
    inputs = tensor_inputs(PAIRS)
    combo = compute_loss("simpo+nll+apo_zero", hparams={"beta": 2.0, "nll_weight": 0.5, "apo_zero_weight": 2.0},
                         **inputs)
    simpo = compute_loss("simpo", hparams={"beta": 2.0}, **inputs)
    nll = compute_loss("nll", **inputs)
    apo = compute_loss("apo_zero", hparams={"beta": 2.0}, **inputs)  # β is shared
    torch.testing.assert_close(combo.losses, simpo.losses + 0.5 * nll.losses + 2.0 * apo.losses)
    torch.testing.assert_close(combo.chosen_rewards, simpo.chosen_rewards)  # the first component's rewards
    # the same components as a preset and ad hoc give the same loss
    torch.testing.assert_close(compute_loss("dpo+nll", hparams={"nll_weight": 0.3}, **inputs).losses,
                               compute_loss("rpo", hparams={"nll_weight": 0.3}, **inputs).losses)


def test_discopop_stays_finite_where_trls_expression_is_nan():
    """TRL computes σ(βh/τ)·exp(−βh), which is 0·inf = NaN in float32 once βh < −88; posweep's
    exp(log σ(βh/τ) − βh) is the same number and stays finite (≈ the logistic term there)."""
    import torch.nn.functional as F

    h = torch.tensor([-5000.0, -10.0, 0.0, 10.0])  # float32 log-ratio gaps
    beta, tau = 0.05, 0.05
    zero = torch.zeros_like(h)
    ours = compute_loss("discopop", hparams={"beta": beta, "tau": tau}, policy_chosen_logps=h,
                        policy_rejected_logps=zero, reference_chosen_logps=zero, reference_rejected_logps=zero,
                        chosen_lengths=torch.ones(4), rejected_lengths=torch.ones(4)).losses
    x = beta * h
    m = torch.sigmoid(x / tau)
    trl = -F.logsigmoid(x) * (1 - m) + torch.exp(-x) * m
    assert torch.isnan(trl[0]) and torch.isfinite(ours).all()
    assert ours[0].item() == pytest.approx(-F.logsigmoid(x[0]).item())
    torch.testing.assert_close(ours[1:], trl[1:])
