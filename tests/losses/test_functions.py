"""posweep.losses.functions: hand-computed values, gradients, reference use, LN-DPO = SimPO with a per-pair margin."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posweep.losses import METHODS
from posweep.losses.functions import LossOutput, compute_loss, simpo_loss

# (lw, ll, log πref(y_w), log πref(y_l), |y_w|, |y_l|); the last pair has lw/|y_w| > −log 2, which sends
# ORPO's log(1 − p) through its other numerical branch.
PAIRS = [
    SimpleNamespace(lw=-12.0, ll=-15.0, ref_w=-13.0, ref_l=-14.0, len_w=4, len_l=6),
    SimpleNamespace(lw=-30.0, ll=-8.0, ref_w=-28.5, ref_l=-9.5, len_w=10, len_l=2),
    SimpleNamespace(lw=-1.2, ll=-2.5, ref_w=-1.0, ref_l=-3.0, len_w=3, len_l=5),
]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def log_odds(average_logp: float) -> float:
    return average_logp - math.log(1 - math.exp(average_logp))


def expected(method: str, p, hp: dict) -> tuple[float, float, float]:
    """(loss, chosen reward, rejected reward) of one pair, with plain floats."""
    rw, rl = p.lw - p.ref_w, p.ll - p.ref_l
    aw, al = p.lw / p.len_w, p.ll / p.len_l
    if method == "dpo":
        b = hp["beta"]
        return -log_sigmoid(b * (rw - rl)), b * rw, b * rl
    if method == "ln_dpo":
        b = hp["beta"]
        return -log_sigmoid(b * (rw / p.len_w - rl / p.len_l)), b * rw / p.len_w, b * rl / p.len_l
    if method == "simpo":
        b, gamma = hp["beta"], hp["gamma_beta_ratio"] * hp["beta"]
        return -log_sigmoid(b * (aw - al) - gamma), b * aw, b * al
    if method == "r_dpo":
        b, a = hp["beta"], hp["alpha"]
        return -log_sigmoid(b * (rw - rl) + a * (p.len_w - p.len_l)), b * rw, b * rl
    if method == "ipo":
        t = hp["tau"]
        return (rw / p.len_w - rl / p.len_l - 1 / (2 * t)) ** 2, t * rw / p.len_w, t * rl / p.len_l
    if method == "cdpo":
        b, e = hp["beta"], hp["epsilon"]
        h = rw - rl
        return -(1 - e) * log_sigmoid(b * h) - e * log_sigmoid(-b * h), b * rw, b * rl
    if method == "hinge":
        b = hp["beta"]
        return max(0.0, 1 - b * (rw - rl)), b * rw, b * rl
    if method == "cpo":
        b, lam = hp["beta"], hp["nll_weight"]
        return -log_sigmoid(b * (p.lw - p.ll)) - lam * aw, b * p.lw, b * p.ll
    if method == "orpo":
        lam = hp["odds_ratio_weight"]
        return -aw - lam * log_sigmoid(log_odds(aw) - log_odds(al)), lam * aw, lam * al
    raise AssertionError(method)


# Non-default values, so the test also checks that hparams reach the loss.
HAND_HPARAMS = {
    "dpo": {"beta": 0.3}, "ln_dpo": {"beta": 5.0}, "simpo": {"beta": 2.0, "gamma_beta_ratio": 0.8},
    "r_dpo": {"beta": 0.05, "alpha": 0.5}, "ipo": {"tau": 0.5}, "cdpo": {"beta": 0.5, "epsilon": 0.2},
    "hinge": {"beta": 1.0}, "cpo": {"beta": 0.05, "nll_weight": 1.0}, "orpo": {"odds_ratio_weight": 2.0},
}


def tensor_inputs(pairs, dtype=torch.float64) -> dict[str, torch.Tensor]:
    def column(name: str, column_dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.tensor([getattr(p, name) for p in pairs], dtype=column_dtype)

    return {"policy_chosen_logps": column("lw"), "policy_rejected_logps": column("ll"),
            "reference_chosen_logps": column("ref_w"), "reference_rejected_logps": column("ref_l"),
            "chosen_lengths": column("len_w", torch.long), "rejected_lengths": column("len_l", torch.long)}


@pytest.mark.parametrize("method", list(HAND_HPARAMS))
def test_loss_matches_hand_computed_values(method):
    hp = HAND_HPARAMS[method]
    output = compute_loss(method, hparams=hp, **tensor_inputs(PAIRS))
    want = torch.tensor([expected(method, p, hp) for p in PAIRS], dtype=torch.float64)
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
