"""Preference-optimization losses (docs/DESIGN.md section 2).

In: per-pair summed log-probs and lengths. Out: per-pair losses and rewards.
``posweep.losses`` itself (the registry: names, hyperparameters, grids, formulas, reference need, TRL names)
imports no torch; the pure loss functions and ``compute_loss`` live in ``posweep.losses.functions``.
"""

from posweep.losses.registry import (
    METHODS,
    Method,
    MethodError,
    describe_methods,
    get_method,
    hyperparameter_names,
)

__all__ = ["METHODS", "Method", "MethodError", "describe_methods", "get_method", "hyperparameter_names"]
