"""The method registry: every preference-optimization method posweep can train, without importing torch.

In: nothing. Out: ``METHODS`` (name → ``Method``), ``get_method``, ``describe_methods``. A ``Method`` says
which pure function of ``posweep.losses.functions`` computes its loss (by name, so this module stays
torch-free: the sweep validates configs and the analyses read grids without loading torch), its
method-specific hyperparameters with defaults, the study grid (docs/DESIGN.md section 2), a plain-text
formula, whether it needs reference log-probs, and its TRL counterpart.

Hyperparameters are named as the loss function's keyword arguments, so ``loss_kwargs`` only fills in
defaults and checks names and types; SimPO's loss takes γ/β itself (``gamma_beta_ratio``), the way the
SimPO authors and the study grid it.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

from posweep.config import UserError


class MethodError(UserError, ValueError):
    """An unknown method, or a hyperparameter it does not have or of the wrong type."""


@dataclass(frozen=True)
class Method:
    """A preference-optimization method: its loss and its method-specific hyperparameters.

    ``hyperparameters`` holds the defaults of the method-specific ones only (learning rate and epochs are
    shared, in ``OptimConfig``); ``study_grid`` the values the study preset sweeps.
    """

    name: str
    loss: str  # a function of posweep.losses.functions
    needs_reference: bool
    hyperparameters: dict[str, float]
    study_grid: dict[str, list[float]]
    formula: str
    trl_name: str | None

    def loss_kwargs(self, hparams: Mapping[str, float] | None = None) -> dict[str, float]:
        """Keyword arguments for the loss: defaults overridden by ``hparams``; unknown names rejected."""
        hparams = dict(hparams or {})
        for key, value in hparams.items():
            if key not in self.hyperparameters:
                raise MethodError(f"method {self.name!r}: unknown hyperparameter {key!r}; "
                                 f"allowed: {', '.join(self.hyperparameters)}")
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                # Not a TypeError: it is a bad configuration value, which callers report as such.
                raise MethodError(
                    f"method {self.name!r}: hyperparameter {key!r} must be a number, got {value!r}")
        return {key: float(value) for key, value in {**self.hyperparameters, **hparams}.items()}

    def describe(self) -> dict:
        """A JSON-serialisable summary (what ``posweep methods --json`` prints)."""
        return {"name": self.name, "formula": self.formula, "hyperparameters": dict(self.hyperparameters),
                "study_grid": {key: list(values) for key, values in self.study_grid.items()},
                "needs_reference": self.needs_reference, "trl_name": self.trl_name}


DPO_BETAS = [0.01, 0.05, 0.1, 0.3, 0.5]

# Defaults are values inside each study grid (the SimPO authors' β≈2.5, γ/β≈0.5; ORPO's λ=0.1).
METHODS: dict[str, Method] = {method.name: method for method in [
    Method("dpo", "dpo_loss", True, {"beta": 0.1}, {"beta": DPO_BETAS},
           "-log sigmoid(beta * (rw - rl))", "DPOTrainer loss_type='sigmoid'"),
    Method("ln_dpo", "ln_dpo_loss", True, {"beta": 2.0}, {"beta": [1.0, 2.0, 5.0, 10.0]},
           "-log sigmoid(beta * (rw/|yw| - rl/|yl|))", "DPOTrainer loss_type='sigmoid_norm'"),
    Method("simpo", "simpo_loss", False, {"beta": 2.5, "gamma_beta_ratio": 0.5},
           {"beta": [2.0, 2.5, 5.0, 10.0], "gamma_beta_ratio": [0.3, 0.5, 0.8, 1.0]},
           "-log sigmoid(beta * (lw/|yw| - ll/|yl|) - gamma), gamma = gamma_beta_ratio * beta",
           "CPOTrainer loss_type='simpo', cpo_alpha=0"),
    Method("r_dpo", "r_dpo_loss", True, {"beta": 0.1, "alpha": 0.1},
           {"beta": [0.01, 0.05, 0.1], "alpha": [0.05, 0.1, 0.5]},
           "-log sigmoid(beta * (rw - rl) + alpha * (|yw| - |yl|))", None),
    Method("ipo", "ipo_loss", True, {"tau": 0.1}, {"tau": [0.01, 0.1, 0.5, 1.0]},
           "(rw/|yw| - rl/|yl| - 1/(2 tau))^2", "DPOTrainer loss_type='ipo' (beta = tau)"),
    Method("cdpo", "cdpo_loss", True, {"beta": 0.1, "epsilon": 0.1}, {"beta": DPO_BETAS, "epsilon": [0.1, 0.2]},
           "-(1-epsilon) log sigmoid(beta h) - epsilon log sigmoid(-beta h), h = rw - rl", None),
    Method("hinge", "hinge_loss", True, {"beta": 0.5}, {"beta": [0.1, 0.5, 1.0]},
           "max(0, 1 - beta * (rw - rl))", "DPOTrainer loss_type='hinge'"),
    Method("cpo", "cpo_loss", False, {"beta": 0.1, "nll_weight": 1.0},
           {"beta": [0.01, 0.05, 0.1], "nll_weight": [1.0]},
           "-log sigmoid(beta * (lw - ll)) - nll_weight * lw/|yw|",
           "CPOTrainer loss_type='sigmoid', cpo_alpha=nll_weight"),
    Method("orpo", "orpo_loss", False, {"odds_ratio_weight": 0.1}, {"odds_ratio_weight": [0.1, 0.5, 1.0, 2.0]},
           "-lw/|yw| - odds_ratio_weight * log sigmoid(log odds(yw) - log odds(yl)), "
           "odds from p = exp(l/|y|)",
           "ORPOTrainer (beta = odds_ratio_weight)"),
]}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def describe_methods() -> list[dict]:
    """Every method's name, formula, default hyperparameters, study grid, reference need and TRL name."""
    return [method.describe() for method in METHODS.values()]


def hyperparameter_names() -> list[str]:
    """Every method-specific hyperparameter name of the registry, in first-seen order."""
    return list(dict.fromkeys(name for method in METHODS.values() for name in method.hyperparameters))
