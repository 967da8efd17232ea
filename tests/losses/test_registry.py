"""posweep.losses.registry: entries complete, defaults, errors naming the method and key, importable without torch, and the `posweep methods` command."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from posweep.losses import METHODS, get_method
from posweep.losses.functions import compute_loss, loss_function, simpo_loss

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


def test_hand_hparams_cover_every_method():
    assert set(HAND_HPARAMS) == set(METHODS)


def test_defaults_are_used_when_hparams_are_omitted():
    for method in METHODS.values():
        output = compute_loss(method.name, **tensor_inputs(PAIRS))
        want = [expected(method.name, p, method.hyperparameters)[0] for p in PAIRS]
        torch.testing.assert_close(output.losses, torch.tensor(want, dtype=torch.float64),
                                   rtol=1e-9, atol=1e-12)


def test_registry_entries_are_complete():
    assert set(METHODS) == {"dpo", "ln_dpo", "simpo", "r_dpo", "ipo", "cdpo", "hinge", "cpo", "orpo"}
    reference_free = {name for name, method in METHODS.items() if not method.needs_reference}
    assert reference_free == {"simpo", "cpo", "orpo"}
    for name, method in METHODS.items():
        assert method.name == name and method.formula and callable(loss_function(name))
        assert set(method.study_grid) == set(method.hyperparameters), name
        for key, default in method.hyperparameters.items():
            assert method.study_grid[key] and default in method.study_grid[key], (name, key)


def test_loss_kwargs_are_the_loss_functions_own_parameters():
    """No conversion between study parameters and loss parameters: SimPO's loss takes γ/β itself."""
    import inspect

    simpo = get_method("simpo")
    assert simpo.loss_kwargs({"beta": 5.0, "gamma_beta_ratio": 0.3}) == {"beta": 5.0, "gamma_beta_ratio": 0.3}
    assert simpo.loss_kwargs({"beta": 10.0}) == {"beta": 10.0, "gamma_beta_ratio": 0.5}  # default ratio
    assert get_method("dpo").loss_kwargs(None) == {"beta": 0.1}
    for name, method in METHODS.items():
        keyword_only = [p.name for p in inspect.signature(loss_function(name)).parameters.values()
                        if p.kind is p.KEYWORD_ONLY]
        assert keyword_only == list(method.hyperparameters), name
    # γ = (γ/β)·β inside the loss: margin 1.5 at β = 5, ratio 0.3
    ones = torch.zeros(1, dtype=torch.float64)
    out = simpo_loss(ones, ones, None, None, torch.ones(1), torch.ones(1), beta=5.0, gamma_beta_ratio=0.3)
    torch.testing.assert_close(out.losses, -torch.nn.functional.logsigmoid(torch.tensor([-1.5], dtype=torch.float64)))


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="unknown method 'kto'.*dpo, ln_dpo, simpo"):
        get_method("kto")
    with pytest.raises(ValueError, match="unknown method"):
        compute_loss("kto", **tensor_inputs(PAIRS))


def test_unknown_hyperparameter_names_method_key_and_allowed():
    with pytest.raises(ValueError, match=r"'simpo'.*'gamma'.*allowed: beta, gamma_beta_ratio"):
        get_method("simpo").loss_kwargs({"gamma": 1.0})
    with pytest.raises(ValueError, match=r"'dpo'.*'learning_rate'"):
        compute_loss("dpo", hparams={"learning_rate": 1e-6}, **tensor_inputs(PAIRS))
    with pytest.raises(ValueError, match=r"'ipo'.*'tau' must be a number"):
        get_method("ipo").loss_kwargs({"tau": "0.1"})


def test_methods_command_json_and_table():
    from typer.testing import CliRunner

    from posweep.cli import app

    result = CliRunner().invoke(app, ["methods", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["name"] for row in rows] == list(METHODS)
    simpo = next(row for row in rows if row["name"] == "simpo")
    assert simpo["hyperparameters"] == {"beta": 2.5, "gamma_beta_ratio": 0.5}
    assert simpo["study_grid"]["gamma_beta_ratio"] == [0.3, 0.5, 0.8, 1.0]
    assert simpo["needs_reference"] is False and "simpo" in simpo["trl_name"]

    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    for name in METHODS:
        assert name in result.output
