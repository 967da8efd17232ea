"""posweep.sweep.config: validation names every bad key before any work; the presets."""

from __future__ import annotations

import math

import pytest
import yaml

from posweep.sweep import (
    SweepConfigError,
    load_config,
    plan_runs,
    quick_config,
    run_sweep,
    validate_config,
)


@pytest.mark.parametrize("change, expected", [
    ({"methods": {"dpp": {}}}, "methods.dpp: unknown method (known: dpo, ln_dpo, simpo"),
    ({"methods": {"dpo": {"grid": {"betta": [0.1]}}}},
     "methods.dpo.grid.betta: unknown hyperparameter for dpo (known: beta, learning_rate, epochs)"),
    ({"methods": {"simpo": {"grid": {"beta": [2.0, "high"]}}}}, "methods.simpo.grid.beta.1: Input should be a valid number"),
    ({"sft": {"grid": {"learning_rate": "fast"}}}, "sft.grid.learning_rate.0: Input should be a valid number"),
    ({"sft": {"grid": {"beta": [0.1]}}}, "sft.grid.beta: unknown key for sft.grid (known: learning_rate, epochs)"),
    ({"optim": {"learning_rte": 1e-6}}, "optim.learning_rte: unknown key"),
    ({"sampling": {"max_new_tokens": 0}}, "sampling.max_new_tokens: Input should be greater than 0"),
    ({"sampling": {"backend": "tgi"}}, "sampling.backend: Input should be 'auto', 'hf', 'hf-compiled' or 'vllm'"),
    ({"test_prompts": {"source": "x.jsonl", "layout": "prompts", "selection_fraction": 1.0}},
     "test_prompts.selection_fraction: Input should be less than 1"),
    ({"train_data": {"source": "x.jsonl"}}, "train_data.layout: Field required"),
    ({"shared_grid": {"learning_rate": [1e-6, 1e-6]}}, "shared_grid.learning_rate: repeated values [1e-06]"),
])
def test_config_errors_name_the_key(micro_config, change, expected):
    with pytest.raises(SweepConfigError) as error:
        validate_config({**micro_config, **change}, "my.yaml")
    assert "my.yaml: invalid sweep config" in str(error.value)
    assert expected in str(error.value)


def test_bad_config_fails_before_any_work(tmp_path, fakes, micro_config):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**micro_config, "methods": {"dpo": {"grid": {"betta": [0.1]}}}}))
    with pytest.raises(SweepConfigError, match="methods.dpo.grid.betta"):
        run_sweep(path, tmp_path / "out", progress=False)
    assert fakes.calls == [] and not (tmp_path / "out").exists()
    with pytest.raises(SweepConfigError, match="no such file, and not a preset"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_the_bad_key(tmp_path, micro_config):
    from typer.testing import CliRunner

    from posweep.cli import app

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**micro_config, "methods": {"orpo": {"grid": {"lambda_": [0.1]}}}}))
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "methods.orpo.grid.lambda_: unknown hyperparameter for orpo" in " ".join(result.output.split())


def test_paper_preset_expands_to_the_design_grids():
    from posweep.losses import METHODS, PAPER_METHODS

    config = load_config("paper")
    runs = plan_runs(config)
    assert list(config.methods) == list(PAPER_METHODS)  # the paper's nine methods
    assert [r.method for r in runs[:6]] == ["sft"] * 6  # SFT runs first: epochs {1,2,3} × lr {1e-5, 2e-5}
    assert {(r.optim.learning_rate, r.optim.epochs) for r in runs[:6]} == {(lr, e) for lr in (1e-5, 2e-5) for e in (1, 2, 3)}
    for name, method in ((name, METHODS[name]) for name in PAPER_METHODS):
        # The preset's grid is the study grid of DESIGN.md section 2 (also the registry's) ...
        assert config.methods[name].grid == method.study_grid, name
        # ... times the shared lr {3e-7, 5e-7, 1e-6} × epochs {1, 2}.
        expected = math.prod(len(values) for values in method.study_grid.values()) * 3 * 2
        method_runs = [r for r in runs if r.method == name]
        assert len(method_runs) == expected, name
        assert len({r.run_id for r in method_runs}) == expected
    assert len([r for r in runs if r.method == "dpo"]) == 30 and len([r for r in runs if r.method == "simpo"]) == 96
    assert config.optim.batch_size == 256 and config.train_data.layout == "pku-saferlhf"
    assert config.test_prompts.layout == "hh-rlhf" and config.judge.startswith("oasst:")


def test_demo_preset_validates_and_quick_is_a_subset():
    config = load_config("demo")
    runs = plan_runs(config)
    for method in ("dpo", "ln_dpo", "simpo"):
        assert len([r for r in runs if r.method == method]) >= 4  # so the 75th-percentile run is not the best
    assert runs[0].method == "sft"
    quick_runs = plan_runs(quick_config(config))
    assert sorted(r.method for r in quick_runs) == sorted(["sft", *config.methods])  # one setting per method
    assert {r.run_id for r in quick_runs} <= {r.run_id for r in runs}  # a later full demo reuses them


def test_combinations_and_hyperparameter_bounds_in_a_sweep_config(micro_config):
    """A method key may be a combination of registry methods (dpo+nll); its grid names the shared β and
    <component>_weight; values outside a hyperparameter's bounds fail with the key."""
    config = validate_config({**micro_config, "methods": {
        "dpo+nll": {"grid": {"beta": [0.1], "nll_weight": [0.2, 1.0]}}, "mpo": {}}})
    runs = [r for r in plan_runs(config) if r.stage == "po"]
    assert {r.method for r in runs} == {"dpo+nll", "mpo"}
    assert sorted(r.hparams["nll_weight"] for r in runs if r.method == "dpo+nll") == [0.2, 1.0]
    assert next(r for r in runs if r.method == "mpo").hparams["bco_pair_weight"] == 0.2
    for methods, expected in [
        ({"dpo+kto": {}}, "methods.dpo+kto: combination 'dpo+kto': 'kto' is not a single registry method"),
        ({"robust": {"grid": {"epsilon": [0.1, 0.5]}}},
         "methods.robust.grid.epsilon: method 'robust': hyperparameter 'epsilon' must be >= 0 and < 0.5, got 0.5"),
    ]:
        with pytest.raises(SweepConfigError) as error:
            validate_config({**micro_config, "methods": methods}, "my.yaml")
        assert expected in str(error.value)
