"""The method registry: every preference-optimization method posweep can train, without importing torch.

In: nothing. Out: ``METHODS`` (name → ``Method``), ``PAPER_METHODS`` (the paper's nine), ``get_method``
(also builds ad-hoc combinations such as ``dpo+nll``), ``combine``, ``describe_methods``. A ``Method``
(``posweep.losses.method``) names the pure function of ``posweep.losses.functions`` that computes its loss
(by name, so this module stays torch-free: the sweep validates configs and the analyses read grids without
loading torch), its method-specific hyperparameters with defaults and bounds, the study grid and where it
comes from (docs/DESIGN.md sections 2 and 8), a plain-text formula, whether it needs reference log-probs,
and its TRL counterpart.

Hyperparameters are named as the loss function's keyword arguments, so ``loss_kwargs`` only fills in
defaults and checks names, types and bounds; SimPO's loss takes γ/β itself (``gamma_beta_ratio``), the way
the SimPO authors and the study grid it.

Combinations (docs/DESIGN.md section 8): ``a+b+c`` is the weighted sum of registry methods a, b, c. Its
hyperparameters are its components' — a name two components share (``beta``) is one hyperparameter for
both, as TRL's single ``beta`` serves every entry of ``loss_type`` — followed by one weight per component,
``<component>_weight`` (default 1). ``rpo`` and ``mpo`` are such combinations with their papers' weights.
Its rewards are its first component's.
"""

from __future__ import annotations

import functools

from posweep.losses.method import (
    EXTRA_INPUTS,
    LOG_SUM_SQ_INPUTS,
    NON_NEGATIVE,
    POSITIVE,
    TAIL_INPUTS,
    UNIT_INTERVAL,
    Method,
    MethodError,
    weight_name,
)

__all__ = ["EXTRA_INPUTS", "METHODS", "PAPER_METHODS", "Method", "MethodError", "combine", "describe_methods",
           "get_method", "hyperparameter_names", "weight_name"]

DPO_BETAS = [0.01, 0.05, 0.1, 0.3, 0.5]
PAPER = "the paper's study grid (docs/DESIGN.md section 2)"
# TRL's docs/source/paper_index.md (the "paper index") gives, per DPOTrainer loss type, the values of its paper.
TRL_INDEX = "TRL paper index"


def _dpo_trainer(loss_type: str, extra: str = "") -> str:
    return f"DPOTrainer loss_type='{loss_type}'{extra}"


# Defaults are values inside each study grid (the SimPO authors' β≈2.5, γ/β≈0.5; ORPO's λ=0.1).
_PAPER_METHODS = [
    Method("dpo", "dpo_loss", True, {"beta": 0.1}, {"beta": DPO_BETAS},
           "-log sigmoid(beta * (rw - rl))", _dpo_trainer("sigmoid"), PAPER, {"beta": POSITIVE},
           trl_loss_type="sigmoid"),
    Method("ln_dpo", "ln_dpo_loss", True, {"beta": 2.0}, {"beta": [1.0, 2.0, 5.0, 10.0]},
           "-log sigmoid(beta * (rw/|yw| - rl/|yl|))", _dpo_trainer("sigmoid_norm"), PAPER, {"beta": POSITIVE},
           trl_loss_type="sigmoid_norm"),
    Method("simpo", "simpo_loss", False, {"beta": 2.5, "gamma_beta_ratio": 0.5},
           {"beta": [2.0, 2.5, 5.0, 10.0], "gamma_beta_ratio": [0.3, 0.5, 0.8, 1.0]},
           "-log sigmoid(beta * (lw/|yw| - ll/|yl|) - gamma), gamma = gamma_beta_ratio * beta",
           "CPOTrainer loss_type='simpo', cpo_alpha=0", PAPER, {"beta": POSITIVE}),
    Method("r_dpo", "r_dpo_loss", True, {"beta": 0.1, "alpha": 0.1},
           {"beta": [0.01, 0.05, 0.1], "alpha": [0.05, 0.1, 0.5]},
           "-log sigmoid(beta * (rw - rl) + alpha * (|yw| - |yl|))", None, PAPER, {"beta": POSITIVE}),
    Method("ipo", "ipo_loss", True, {"tau": 0.1}, {"tau": [0.01, 0.1, 0.5, 1.0]},
           "(rw/|yw| - rl/|yl| - 1/(2 tau))^2", _dpo_trainer("ipo", " (beta = tau)"), PAPER, {"tau": POSITIVE},
           trl_loss_type="ipo"),
    Method("cdpo", "cdpo_loss", True, {"beta": 0.1, "epsilon": 0.1}, {"beta": DPO_BETAS, "epsilon": [0.1, 0.2]},
           "-(1-epsilon) log sigmoid(beta h) - epsilon log sigmoid(-beta h), h = rw - rl", None, PAPER,
           {"beta": POSITIVE, "epsilon": UNIT_INTERVAL}),
    Method("hinge", "hinge_loss", True, {"beta": 0.5}, {"beta": [0.1, 0.5, 1.0]},
           "max(0, 1 - beta * (rw - rl))", _dpo_trainer("hinge"), PAPER, {"beta": POSITIVE},
           trl_loss_type="hinge"),
    Method("cpo", "cpo_loss", False, {"beta": 0.1, "nll_weight": 1.0},
           {"beta": [0.01, 0.05, 0.1], "nll_weight": [1.0]},
           "-log sigmoid(beta * (lw - ll)) - nll_weight * lw/|yw|",
           "CPOTrainer loss_type='sigmoid', cpo_alpha=nll_weight", PAPER, {"beta": POSITIVE}),
    Method("orpo", "orpo_loss", False, {"odds_ratio_weight": 0.1}, {"odds_ratio_weight": [0.1, 0.5, 1.0, 2.0]},
           "-lw/|yw| - odds_ratio_weight * log sigmoid(log odds(yw) - log odds(yl)), "
           "odds from p = exp(l/|y|)",
           "ORPOTrainer (beta = odds_ratio_weight)", PAPER),
]

# TRL 1.16 DPOTrainer loss types beyond the paper's (docs/DESIGN.md section 8). β defaults are the papers'
# values as TRL's paper index records them; the β grid is the dpo grid, which contains every one of them.
_TRL_METHODS = [
    Method("exo_pair", "exo_pair_loss", True, {"beta": 0.1, "epsilon": 1e-3}, {"beta": DPO_BETAS, "epsilon": [1e-3]},
           "q (log q - log(1-epsilon)) + (1-q)(log(1-q) - log epsilon), q = sigmoid(beta h)",
           _dpo_trainer("exo_pair", " (label_smoothing = epsilon)"),
           f"Ji et al. 2024 (EXO): beta_r = 0.1 ({TRL_INDEX}), epsilon = 1e-3 (TRL's recommended value)",
           {"beta": POSITIVE, "epsilon": ((">", 0.0), ("<", 1.0))}, trl_loss_type="exo_pair"),
    Method("nca_pair", "nca_pair_loss", True, {"beta": 0.01}, {"beta": DPO_BETAS},
           "-log sigmoid(beta rw) - 1/2 log sigmoid(-beta rw) - 1/2 log sigmoid(-beta rl)",
           _dpo_trainer("nca_pair"), f"Chen et al. 2024 (NCA): alpha = 0.01 ({TRL_INDEX})", {"beta": POSITIVE},
           trl_loss_type="nca_pair"),
    Method("robust", "robust_loss", True, {"beta": 0.01, "epsilon": 0.1}, {"beta": DPO_BETAS, "epsilon": [0.1, 0.2]},
           "((1-epsilon)(-log sigmoid(beta h)) + epsilon log sigmoid(-beta h)) / (1 - 2 epsilon)",
           _dpo_trainer("robust", " (label_smoothing = epsilon)"),
           f"Chowdhury et al. 2024 (robust DPO): beta = 0.01, epsilon = 0.1 ({TRL_INDEX})",
           {"beta": POSITIVE, "epsilon": ((">=", 0.0), ("<", 0.5))}, trl_loss_type="robust"),
    Method("bco_pair", "bco_pair_loss", True, {"beta": 0.01}, {"beta": DPO_BETAS},
           "-log sigmoid(beta rw) - log sigmoid(-beta rl)", _dpo_trainer("bco_pair"),
           f"Jung et al. 2024 (BCO): beta = 0.01 ({TRL_INDEX}); TRL 1.16 has no running reward shift delta",
           {"beta": POSITIVE}, trl_loss_type="bco_pair"),
    Method("sppo_hard", "sppo_hard_loss", True, {"beta": 0.1}, {"beta": DPO_BETAS},
           "(rw - 1/(2 beta))^2 + (rl + 1/(2 beta))^2", _dpo_trainer("sppo_hard"),
           f"Wu et al. 2024 (SPPO, hard labels): TRL's default beta = 0.1 ({TRL_INDEX} gives none)",
           {"beta": POSITIVE}, trl_loss_type="sppo_hard"),
    Method("aot", "aot_loss", True, {"beta": 0.1, "epsilon": 0.0}, {"beta": DPO_BETAS, "epsilon": [0.0]},
           "d = sort(lw - ll) - sort(ref_w - ref_l) over the micro-batch; "
           "-(1-epsilon) log sigmoid(beta d) - epsilon log sigmoid(-beta d)",
           _dpo_trainer("aot", " (label_smoothing = epsilon)"),
           f"Melnyk et al. 2024 (AOT): no hyperparameter beyond beta ({TRL_INDEX}); TRL's defaults",
           {"beta": POSITIVE, "epsilon": UNIT_INTERVAL}, batch_level=True, trl_loss_type="aot"),
    Method("aot_unpaired", "aot_unpaired_loss", True, {"beta": 0.1, "epsilon": 0.0},
           {"beta": DPO_BETAS, "epsilon": [0.0]},
           "d = sort(rw) - sort(rl) over the micro-batch; -(1-epsilon) log sigmoid(beta d) - epsilon log sigmoid(-beta d)",
           _dpo_trainer("aot_unpaired", " (label_smoothing = epsilon)"),
           f"Melnyk et al. 2024 (AOT, unpaired): TRL's defaults ({TRL_INDEX})",
           {"beta": POSITIVE, "epsilon": UNIT_INTERVAL}, batch_level=True, trl_loss_type="aot_unpaired"),
    Method("apo_zero", "apo_zero_loss", True, {"beta": 0.1}, {"beta": DPO_BETAS},
           "1 - sigmoid(beta rw) + sigmoid(beta rl)", _dpo_trainer("apo_zero"),
           f"D'Oosterlinck et al. 2024 (APO), eq. 7: beta = 0.1 ({TRL_INDEX})", {"beta": POSITIVE},
           trl_loss_type="apo_zero"),
    Method("apo_down", "apo_down_loss", True, {"beta": 0.1}, {"beta": DPO_BETAS},
           "sigmoid(beta rw) + 1 - sigmoid(beta (rw - rl))", _dpo_trainer("apo_down"),
           f"D'Oosterlinck et al. 2024 (APO), eq. 8: beta = 0.1 ({TRL_INDEX})", {"beta": POSITIVE},
           trl_loss_type="apo_down"),
    Method("discopop", "discopop_loss", True, {"beta": 0.05, "tau": 0.05}, {"beta": DPO_BETAS, "tau": [0.05]},
           "(1 - m)(-log sigmoid(beta h)) + m exp(-beta h), m = sigmoid(beta h / tau)",
           _dpo_trainer("discopop", " (discopop_tau = tau)"),
           f"Lu et al. 2024 (DiscoPOP): beta = 0.05, tau = 0.05 ({TRL_INDEX})",
           {"beta": POSITIVE, "tau": POSITIVE}, trl_loss_type="discopop"),
    Method("nll", "nll_loss", False, {}, {}, "-lw/|yw|",
           _dpo_trainer("sft", " (TRL averages over the batch's chosen tokens)"),
           "the chosen response's NLL per token; no hyperparameters", trl_loss_type="sft"),
]

# DPO with TRL's options (f_divergence_type, use_weighting, ld_alpha).
_DPO_OPTIONS = [
    Method("f_dpo", "f_dpo_loss", True, {"beta": 0.1, "f_alpha": 0.5},
           {"beta": DPO_BETAS, "f_alpha": [0.0, 0.25, 0.5, 0.75]},
           "-log sigmoid(beta (s(rw) - s(rl))), s(r) = (exp((f_alpha-1) r) - 1)/(f_alpha-1); "
           "f_alpha = 0 forward KL, 1 reverse KL (= dpo)",
           _dpo_trainer("sigmoid", ", f_divergence_type='alpha_divergence', f_alpha_divergence_coef = f_alpha "
                        "(f_alpha = 0: 'forward_kl')"),
           "Wang et al. 2024 (f-DPO): TRL's default f_alpha = 0.5; the grid spans TRL's forward-KL end (0) "
           "towards DPO (1), posweep's choice", {"beta": POSITIVE, "f_alpha": UNIT_INTERVAL}),
    Method("f_dpo_js", "f_dpo_js_loss", True, {"beta": 0.1}, {"beta": DPO_BETAS},
           "-log sigmoid(beta (s(rw) - s(rl))), s(r) = log 2 + log sigmoid(r) (Jensen-Shannon)",
           _dpo_trainer("sigmoid", ", f_divergence_type='js_divergence'"),
           "Wang et al. 2024 (f-DPO); beta grid as dpo", {"beta": POSITIVE}),
    Method("wpo", "wpo_loss", True, {"beta": 0.1}, {"beta": DPO_BETAS},
           "w_w w_l (-log sigmoid(beta h)), w = exp((l - sum_t log sum_v pi(v)^2) / |y|), detached",
           _dpo_trainer("sigmoid", ", use_weighting=True"), "Zhou et al. 2024 (WPO), eq. 2; beta grid as dpo",
           {"beta": POSITIVE}, inputs=LOG_SUM_SQ_INPUTS),
    Method("ld_dpo", "ld_dpo_loss", True, {"beta": 0.1, "ld_alpha": 0.5},
           {"beta": DPO_BETAS, "ld_alpha": [0.25, 0.5, 0.75]},
           "dpo on l_alpha = l - (1 - ld_alpha) * tail, tail = log-probs of the tokens beyond the pair's "
           "shorter response",
           _dpo_trainer("sigmoid", ", ld_alpha = ld_alpha"),
           "Liu et al. 2024 (LD-DPO): ld_alpha in [0, 1] (1 = dpo); the grid spans it, posweep's choice",
           {"beta": POSITIVE, "ld_alpha": UNIT_INTERVAL}, inputs=TAIL_INPUTS),
]


def combine(components: tuple[str, ...] | list[str], name: str | None = None,
            weights: dict[str, float] | None = None, study_grid: dict[str, list[float]] | None = None,
            source: str = "", defaults: dict[str, float] | None = None) -> Method:
    """The weighted sum of registry methods ``components`` (the naming rule is the module docstring's).

    ``weights`` and ``defaults`` override default weights (by component name) and shared hyperparameters;
    ``study_grid`` overrides the grid, which otherwise is the components' grids with each weight at its
    default.
    """
    components = tuple(components)
    label = name or "+".join(components)
    if len(components) < 2 or len(set(components)) != len(components):
        raise MethodError(f"combination {label!r}: needs two or more different components")
    parts = []
    for component in components:
        if component not in METHODS or METHODS[component].components:
            raise MethodError(f"combination {label!r}: {component!r} is not a single registry method "
                              f"(known: {', '.join(n for n, m in METHODS.items() if not m.components)})")
        parts.append(METHODS[component])
    hyperparameters, grid, bounds = {}, {}, {}
    for part in parts:  # a shared name keeps the first component's default, grid and bounds
        for key, value in part.hyperparameters.items():
            hyperparameters.setdefault(key, value)
            grid.setdefault(key, list(part.study_grid[key]))
            if key in part.bounds:
                bounds.setdefault(key, part.bounds[key])
    hyperparameters.update(defaults or {})
    unknown = sorted(set(weights or {}) - set(components))
    if unknown:
        raise MethodError(f"combination {label!r}: weights for {unknown}, which are not its components")
    weights = dict.fromkeys(components, 1.0) | dict(weights or {})
    for component in components:
        key = weight_name(component)
        if key in hyperparameters:
            raise MethodError(f"combination {label!r}: the weight {key!r} of {component!r} collides with a "
                              "hyperparameter of the same name")
        hyperparameters[key], grid[key], bounds[key] = weights[component], [weights[component]], NON_NEGATIVE
    trl_types = [part.trl_loss_type for part in parts]
    trl_name = None if None in trl_types else (
        f"DPOTrainer loss_type={trl_types}, loss_weights=[{', '.join(map(weight_name, components))}]")
    return Method(label, "", any(p.needs_reference for p in parts), hyperparameters, study_grid or grid,
                  " + ".join(f"{weight_name(p.name)} * [{p.formula}]" for p in parts), trl_name,
                  source or "the components' grids, each weight at its default", bounds,
                  tuple(dict.fromkeys(i for p in parts for i in p.inputs)), any(p.batch_level for p in parts),
                  components)


METHODS: dict[str, Method] = {method.name: method for method in [*_PAPER_METHODS, *_TRL_METHODS, *_DPO_OPTIONS]}
PAPER_METHODS = tuple(method.name for method in _PAPER_METHODS)
METHODS["rpo"] = combine(
    ("dpo", "nll"), name="rpo", weights={"nll": 1.0},
    study_grid={"beta": DPO_BETAS, "dpo_weight": [1.0], "nll_weight": [0.5, 1.0]},
    source="Pang et al. 2024 (RPO): NLL weight alpha = 1 (TRL's rpo_alpha, which its docs recommend at 1.0); "
           "beta grid as dpo")
METHODS["mpo"] = combine(
    ("dpo", "bco_pair", "nll"), name="mpo", weights={"dpo": 0.8, "bco_pair": 0.2, "nll": 1.0},
    study_grid={"beta": [0.05, 0.1, 0.3], "dpo_weight": [0.8], "bco_pair_weight": [0.2], "nll_weight": [1.0]},
    source="Wang et al. 2024 (MPO): weights 0.8, 0.2, 1.0 (TRL 1.16 docs, 'as used in the MPO paper'); "
           "one beta for all three, as TRL")


@functools.lru_cache(maxsize=256)
def _combination(name: str) -> Method:
    return combine(name.split("+"))


def get_method(name: str) -> Method:
    """A registry method, or the ad-hoc combination ``a+b+...`` of registry methods."""
    if name in METHODS:
        return METHODS[name]
    if "+" in name:
        return _combination(name)
    raise MethodError(f"unknown method {name!r}; known: {', '.join(METHODS)} "
                      "(or a combination of them such as dpo+nll)")


def describe_methods() -> list[dict]:
    """Every method's name, formula, defaults, study grid, bounds, reference need, TRL name, components."""
    return [method.describe() for method in METHODS.values()]


def hyperparameter_names() -> list[str]:
    """Every method-specific hyperparameter name of the registry, in first-seen order."""
    return list(dict.fromkeys(name for method in METHODS.values() for name in method.hyperparameters))
