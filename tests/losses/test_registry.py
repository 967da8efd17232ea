"""posweep.losses.registry: entries complete, defaults, errors naming the method and key, importable without torch, and the `posweep methods` command."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from posweep.losses import EXTRA_INPUTS, METHODS, PAPER_METHODS, get_method
from posweep.losses.functions import compute_loss, loss_function, simpo_loss
from tests.losses.hand import BATCH_LEVEL, PAIRS, aot_batch, expected, tensor_inputs

TRL_LOSS_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]

def test_defaults_are_used_when_hparams_are_omitted():
    for method in METHODS.values():
        output = compute_loss(method.name, **tensor_inputs(PAIRS))
        if method.name in BATCH_LEVEL:
            assert output.loss.item() == pytest.approx(aot_batch(method.name, PAIRS, method.hyperparameters))
            continue
        want = [expected(method.name, p, method.hyperparameters)[0] for p in PAIRS]
        torch.testing.assert_close(output.losses, torch.tensor(want, dtype=torch.float64),
                                   rtol=1e-9, atol=1e-12)


def test_registry_entries_are_complete():
    assert PAPER_METHODS == ("dpo", "ln_dpo", "simpo", "r_dpo", "ipo", "cdpo", "hinge", "cpo", "orpo")
    assert list(METHODS)[: len(PAPER_METHODS)] == list(PAPER_METHODS)
    reference_free = {name for name, method in METHODS.items() if not method.needs_reference}
    assert reference_free == {"simpo", "cpo", "orpo", "nll"}
    # every TRL 1.16 DPOTrainer loss type is some single method's (checked against TRL's own list in
    # test_trl_parity.py)
    assert sorted(m.trl_loss_type for m in METHODS.values() if m.trl_loss_type) == sorted(TRL_LOSS_TYPES)
    for name, method in METHODS.items():
        assert method.name == name and method.formula and method.source, name
        assert method.trl_name or name in {"r_dpo", "cdpo"}, name
        assert callable(loss_function(name)) if not method.components else not method.loss
        assert set(method.study_grid) == set(method.hyperparameters), name
        assert set(method.bounds) <= set(method.hyperparameters), name
        assert set(method.inputs) <= set(EXTRA_INPUTS), name
        for key, default in method.hyperparameters.items():
            assert method.study_grid[key] and default in method.study_grid[key], (name, key)
            for value in [default, *method.study_grid[key]]:
                assert method.check_value(key, value) is None, (name, key, value)
    assert {m.name for m in METHODS.values() if m.batch_level} == BATCH_LEVEL


def test_combination_presets_and_the_naming_rule():
    rpo, mpo = get_method("rpo"), get_method("mpo")
    assert rpo.components == ("dpo", "nll") and rpo.hyperparameters == {"beta": 0.1, "dpo_weight": 1.0,
                                                                         "nll_weight": 1.0}
    assert mpo.components == ("dpo", "bco_pair", "nll")
    assert mpo.hyperparameters == {"beta": 0.1, "dpo_weight": 0.8, "bco_pair_weight": 0.2, "nll_weight": 1.0}
    assert "loss_type=['sigmoid', 'bco_pair', 'sft']" in mpo.trl_name and mpo.needs_reference
    # ad hoc: components' hyperparameters (a shared name once, first default), then <component>_weight = 1
    combo = get_method("simpo+orpo+ld_dpo")
    assert list(combo.hyperparameters) == ["beta", "gamma_beta_ratio", "odds_ratio_weight", "ld_alpha",
                                           "simpo_weight", "orpo_weight", "ld_dpo_weight"]
    assert combo.hyperparameters["beta"] == 2.5 and combo.hyperparameters["ld_dpo_weight"] == 1.0
    assert combo.needs_reference and combo.inputs == get_method("ld_dpo").inputs
    assert combo.trl_name is None  # simpo is not a DPOTrainer loss type
    assert get_method("dpo+aot").batch_level and get_method("dpo+nll") is get_method("dpo+nll")


@pytest.mark.parametrize("name, message", [
    ("dpo+kto", r"'kto' is not a single registry method"),
    ("rpo+nll", r"'rpo' is not a single registry method"),
    ("dpo+dpo", r"two or more different components"),
    ("cpo+nll", r"weight 'nll_weight' of 'nll' collides"),
])
def test_bad_combinations_say_why(name, message):
    with pytest.raises(ValueError, match=message):
        get_method(name)


def test_bounds_reject_values_that_break_the_loss():
    with pytest.raises(ValueError, match=r"'exo_pair'.*'epsilon' must be > 0 and < 1, got 0"):
        get_method("exo_pair").loss_kwargs({"epsilon": 0})
    with pytest.raises(ValueError, match=r"'robust'.*'epsilon' must be >= 0 and < 0.5, got 0.5"):
        get_method("robust").loss_kwargs({"epsilon": 0.5})
    with pytest.raises(ValueError, match=r"'ld_dpo'.*'ld_alpha' must be >= 0 and <= 1"):
        compute_loss("ld_dpo", hparams={"ld_alpha": 1.5}, **tensor_inputs(PAIRS))
    with pytest.raises(ValueError, match=r"'mpo'.*'nll_weight' must be >= 0"):
        get_method("mpo").loss_kwargs({"nll_weight": -1.0})
    with pytest.raises(ValueError, match=r"'dpo'.*'beta' must be > 0"):
        get_method("dpo").loss_kwargs({"beta": 0.0})


def test_compute_loss_takes_every_extra_input_by_name():
    parameters = inspect.signature(compute_loss).parameters
    assert set(EXTRA_INPUTS) <= set(parameters)
    assert all(parameters[name].default is None for name in EXTRA_INPUTS)


def test_loss_kwargs_are_the_loss_functions_own_parameters():
    """No conversion between study parameters and loss parameters: SimPO's loss takes γ/β itself. A loss
    function's keyword-only parameters are its extra inputs, then its hyperparameters."""
    simpo = get_method("simpo")
    assert simpo.loss_kwargs({"beta": 5.0, "gamma_beta_ratio": 0.3}) == {"beta": 5.0, "gamma_beta_ratio": 0.3}
    assert simpo.loss_kwargs({"beta": 10.0}) == {"beta": 10.0, "gamma_beta_ratio": 0.5}  # default ratio
    assert get_method("dpo").loss_kwargs(None) == {"beta": 0.1}
    for name, method in METHODS.items():
        if method.components:
            continue
        keyword_only = [p.name for p in inspect.signature(loss_function(name)).parameters.values()
                        if p.kind is p.KEYWORD_ONLY]
        assert keyword_only == [*method.inputs, *method.hyperparameters], name
    # γ = (γ/β)·β inside the loss: margin 1.5 at β = 5, ratio 0.3
    ones = torch.zeros(1, dtype=torch.float64)
    out = simpo_loss(ones, ones, None, None, torch.ones(1), torch.ones(1), beta=5.0, gamma_beta_ratio=0.3)
    torch.testing.assert_close(out.losses, -torch.nn.functional.logsigmoid(torch.tensor([-1.5], dtype=torch.float64)))


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="unknown method 'kto'.*dpo, ln_dpo, simpo.*combination"):
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
    by_name = {row["name"]: row for row in rows}
    simpo = by_name["simpo"]
    assert simpo["hyperparameters"] == {"beta": 2.5, "gamma_beta_ratio": 0.5}
    assert simpo["study_grid"]["gamma_beta_ratio"] == [0.3, 0.5, 0.8, 1.0]
    assert simpo["needs_reference"] is False and "simpo" in simpo["trl_name"]
    assert by_name["mpo"]["components"] == {"dpo": 0.8, "bco_pair": 0.2, "nll": 1.0}
    assert by_name["dpo"]["components"] is None and by_name["dpo"]["bounds"] == {"beta": "> 0"}
    assert by_name["ld_dpo"]["inputs"] == list(get_method("ld_dpo").inputs)
    assert by_name["aot"]["batch_level"] is True and "loss_type='aot'" in by_name["aot"]["trl_name"]
    assert "loss_type='sft'" in by_name["nll"]["trl_name"]

    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    for name in METHODS:
        assert name in result.output
    for trl_type in TRL_LOSS_TYPES:
        assert f"'{trl_type}'" in result.output, trl_type
