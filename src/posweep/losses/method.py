"""What a preference-optimization method is, without importing torch: the ``Method`` record and its checks.

In: nothing. Out: ``Method`` (name, loss function name, hyperparameters with defaults, bounds and study
grid, formula, reference need, extra inputs, TRL name, components of a combination), ``MethodError``,
the names of the extra per-pair inputs some losses need (``EXTRA_INPUTS``) and the naming rule of a
combination's weights (``weight_name``). The catalogue of methods is ``posweep.losses.registry``.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

from posweep.config import UserError


class MethodError(UserError, ValueError):
    """An unknown method, or a hyperparameter it does not have, of the wrong type or out of its bounds."""


# Per-pair inputs beyond the standard six (policy and reference sums, lengths), as compute_loss keywords.
# Each is a [batch] tensor; docs/DESIGN.md section 8 says what the log-prob pass must return for them.
EXTRA_INPUTS = {
    # LD-DPO: the sum of the response-token log-probs beyond the shorter response of the pair (0 for the
    # shorter response and for equal lengths); the shared part is the full sum minus the tail.
    "policy_chosen_tail_logps": "policy: log-probs of chosen tokens beyond the pair's shorter length, summed",
    "policy_rejected_tail_logps": "policy: log-probs of rejected tokens beyond the pair's shorter length, summed",
    "reference_chosen_tail_logps": "reference: the same tail sum of the chosen response",
    "reference_rejected_tail_logps": "reference: the same tail sum of the rejected response",
    # WPO: Σ_t log Σ_v π(v | x, y_<t)² over the response tokens, from the policy (no gradient needed).
    "policy_chosen_log_sum_sq_probs": "policy: Σ over chosen tokens of log Σ_v π(v)², summed",
    "policy_rejected_log_sum_sq_probs": "policy: Σ over rejected tokens of log Σ_v π(v)², summed",
}
TAIL_INPUTS = tuple(name for name in EXTRA_INPUTS if name.endswith("_tail_logps"))
LOG_SUM_SQ_INPUTS = tuple(name for name in EXTRA_INPUTS if name.endswith("_log_sum_sq_probs"))

Bound = tuple[str, float]  # (">", 0.0): the value must be > 0
_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
POSITIVE: tuple[Bound, ...] = ((">", 0.0),)
NON_NEGATIVE: tuple[Bound, ...] = ((">=", 0.0),)
UNIT_INTERVAL: tuple[Bound, ...] = ((">=", 0.0), ("<=", 1.0))


def weight_name(component: str) -> str:
    """The hyperparameter holding a combination component's weight: ``<component>_weight``."""
    return f"{component}_weight"


def bounds_text(bounds: tuple[Bound, ...]) -> str:
    return " and ".join(f"{op} {value:g}" for op, value in bounds)


@dataclass(frozen=True)
class Method:
    """A preference-optimization method: its loss and its method-specific hyperparameters.

    ``hyperparameters`` holds the defaults of the method-specific ones only (learning rate and epochs are
    shared, in ``OptimConfig``); ``study_grid`` the values a study sweeps, from ``source``; ``bounds`` the
    values each may take (a loss is NaN or meaningless outside them). ``inputs`` names the extra per-pair
    tensors the loss needs (``EXTRA_INPUTS``). ``batch_level``: one pair's loss depends on the other pairs
    of its micro-batch (AOT sorts the batch), so only the batch mean is meaningful. ``components``: for a
    combination, the registry methods whose losses it sums, each weighted by ``weight_name(component)``;
    its ``loss`` is then empty.
    """

    name: str
    loss: str  # a function of posweep.losses.functions ("" for a combination)
    needs_reference: bool
    hyperparameters: dict[str, float]
    study_grid: dict[str, list[float]]
    formula: str
    trl_name: str | None
    source: str = ""
    bounds: dict[str, tuple[Bound, ...]] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    batch_level: bool = False
    components: tuple[str, ...] = ()
    trl_loss_type: str | None = None  # the DPOTrainer loss_type this method is, when it is one

    def check_value(self, key: str, value) -> str | None:
        """Why ``value`` cannot be hyperparameter ``key`` of this method, or None when it can."""
        if key not in self.hyperparameters:
            return (f"method {self.name!r}: unknown hyperparameter {key!r}; "
                    f"allowed: {', '.join(self.hyperparameters) or '(none)'}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"method {self.name!r}: hyperparameter {key!r} must be a number, got {value!r}"
        bounds = self.bounds.get(key, ())
        if not all(_COMPARE[op](value, limit) for op, limit in bounds):
            return f"method {self.name!r}: hyperparameter {key!r} must be {bounds_text(bounds)}, got {value!r}"
        return None

    def loss_kwargs(self, hparams: Mapping[str, float] | None = None) -> dict[str, float]:
        """Keyword arguments for the loss: defaults overridden by ``hparams``; bad names or values rejected."""
        hparams = dict(hparams or {})
        for key, value in hparams.items():
            # Not a TypeError: it is a bad configuration value, which callers report as such.
            problem = self.check_value(key, value)
            if problem:
                raise MethodError(problem)
        return {key: float(value) for key, value in {**self.hyperparameters, **hparams}.items()}

    def describe(self) -> dict:
        """A JSON-serialisable summary (what ``posweep methods --json`` prints)."""
        return {"name": self.name, "formula": self.formula, "hyperparameters": dict(self.hyperparameters),
                "study_grid": {key: list(values) for key, values in self.study_grid.items()},
                "bounds": {key: bounds_text(bounds) for key, bounds in self.bounds.items()},
                "needs_reference": self.needs_reference, "trl_name": self.trl_name,
                "components": ({c: self.hyperparameters[weight_name(c)] for c in self.components}
                               if self.components else None),
                "inputs": list(self.inputs), "batch_level": self.batch_level, "source": self.source}
