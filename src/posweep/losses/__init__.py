"""Preference-optimization losses (docs/DESIGN.md sections 2 and 8).

In: per-pair summed log-probs and lengths (and, for LD-DPO and WPO, the extra per-pair sums
``EXTRA_INPUTS`` names). Out: per-pair losses and rewards.
``posweep.losses`` itself (the registry: names, hyperparameters, grids, formulas, reference need, TRL names,
combinations) imports no torch; the pure loss functions and ``compute_loss`` live in
``posweep.losses.functions``.
"""

from posweep.losses.registry import (
    EXTRA_INPUTS,
    METHODS,
    PAPER_METHODS,
    Method,
    MethodError,
    combine,
    describe_methods,
    get_method,
    hyperparameter_names,
    weight_name,
)

__all__ = ["EXTRA_INPUTS", "METHODS", "PAPER_METHODS", "Method", "MethodError", "combine", "describe_methods",
           "get_method", "hyperparameter_names", "weight_name"]
