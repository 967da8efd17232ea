"""Hand-computed losses with plain floats, the pairs they are computed on, and the matching tensor inputs.

Shared by test_functions.py and test_registry.py. Every formula here is written from the paper / TRL
expression independently of posweep.losses (only the registry's metadata is read: a combination's
components and weight names).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from posweep.losses import get_method, weight_name

# (lw, ll, log πref(y_w), log πref(y_l), |y_w|, |y_l|), LD-DPO's tail sums (beyond min(|y_w|, |y_l|): only the
# longer response has one) and WPO's Σ_t log Σ_v π(v)². The last pair has lw/|y_w| > −log 2, which sends
# ORPO's log(1 − p) through its other numerical branch.
PAIRS = [
    SimpleNamespace(lw=-12.0, ll=-15.0, ref_w=-13.0, ref_l=-14.0, len_w=4, len_l=6,
                    tail_w=0.0, tail_l=-4.0, ref_tail_w=0.0, ref_tail_l=-3.5, lss_w=-6.0, lss_l=-8.0),
    SimpleNamespace(lw=-30.0, ll=-8.0, ref_w=-28.5, ref_l=-9.5, len_w=10, len_l=2,
                    tail_w=-22.0, tail_l=0.0, ref_tail_w=-21.0, ref_tail_l=0.0, lss_w=-20.0, lss_l=-3.0),
    SimpleNamespace(lw=-1.2, ll=-2.5, ref_w=-1.0, ref_l=-3.0, len_w=3, len_l=5,
                    tail_w=0.0, tail_l=-0.9, ref_tail_w=0.0, ref_tail_l=-1.1, lss_w=-1.5, lss_l=-4.0),
]

# Non-default values, so the tests also check that hparams reach the loss.
HAND_HPARAMS = {
    "dpo": {"beta": 0.3}, "ln_dpo": {"beta": 5.0}, "simpo": {"beta": 2.0, "gamma_beta_ratio": 0.8},
    "r_dpo": {"beta": 0.05, "alpha": 0.5}, "ipo": {"tau": 0.5}, "cdpo": {"beta": 0.5, "epsilon": 0.2},
    "hinge": {"beta": 1.0}, "cpo": {"beta": 0.05, "nll_weight": 1.0}, "orpo": {"odds_ratio_weight": 2.0},
    "exo_pair": {"beta": 0.3, "epsilon": 0.01}, "nca_pair": {"beta": 0.5}, "robust": {"beta": 0.3, "epsilon": 0.2},
    "bco_pair": {"beta": 0.3}, "sppo_hard": {"beta": 0.5}, "aot": {"beta": 0.3, "epsilon": 0.1},
    "aot_unpaired": {"beta": 0.3, "epsilon": 0.1}, "apo_zero": {"beta": 0.5}, "apo_down": {"beta": 0.5},
    "discopop": {"beta": 0.3, "tau": 0.5}, "nll": {}, "f_dpo": {"beta": 0.3, "f_alpha": 0.25},
    "f_dpo_js": {"beta": 0.5}, "wpo": {"beta": 0.3}, "ld_dpo": {"beta": 0.3, "ld_alpha": 0.25},
    "rpo": {"beta": 0.3, "nll_weight": 0.5},
    "mpo": {"beta": 0.05, "dpo_weight": 0.7, "bco_pair_weight": 0.3, "nll_weight": 0.5},
}
BATCH_LEVEL = {"aot", "aot_unpaired"}  # their loss of one pair depends on the others: see aot_batch


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


def log_odds(average_logp: float) -> float:
    return average_logp - math.log(1 - math.exp(average_logp))


def expected(method: str, p, hp: dict) -> tuple[float, float, float]:
    """(loss, chosen reward, rejected reward) of one pair, with plain floats; ``hp`` complete."""
    components = get_method(method).components
    if components:
        parts = [(hp[weight_name(c)], expected(c, p, {k: hp[k] for k in get_method(c).hyperparameters}))
                 for c in components]
        return sum(w * part[0] for w, part in parts), parts[0][1][1], parts[0][1][2]
    rw, rl = p.lw - p.ref_w, p.ll - p.ref_l
    aw, al = p.lw / p.len_w, p.ll / p.len_l
    b = hp.get("beta")
    if method == "dpo":
        return -log_sigmoid(b * (rw - rl)), b * rw, b * rl
    if method == "ln_dpo":
        return -log_sigmoid(b * (rw / p.len_w - rl / p.len_l)), b * rw / p.len_w, b * rl / p.len_l
    if method == "simpo":
        gamma = hp["gamma_beta_ratio"] * b
        return -log_sigmoid(b * (aw - al) - gamma), b * aw, b * al
    if method == "r_dpo":
        return -log_sigmoid(b * (rw - rl) + hp["alpha"] * (p.len_w - p.len_l)), b * rw, b * rl
    if method == "ipo":
        t = hp["tau"]
        return (rw / p.len_w - rl / p.len_l - 1 / (2 * t)) ** 2, t * rw / p.len_w, t * rl / p.len_l
    if method == "cdpo":
        e, h = hp["epsilon"], rw - rl
        return -(1 - e) * log_sigmoid(b * h) - e * log_sigmoid(-b * h), b * rw, b * rl
    if method == "hinge":
        return max(0.0, 1 - b * (rw - rl)), b * rw, b * rl
    if method == "cpo":
        return -log_sigmoid(b * (p.lw - p.ll)) - hp["nll_weight"] * aw, b * p.lw, b * p.ll
    if method == "orpo":
        lam = hp["odds_ratio_weight"]
        return -aw - lam * log_sigmoid(log_odds(aw) - log_odds(al)), lam * aw, lam * al
    if method == "exo_pair":
        e, q = hp["epsilon"], sigmoid(b * (rw - rl))
        return q * (math.log(q) - math.log(1 - e)) + (1 - q) * (math.log(1 - q) - math.log(e)), b * rw, b * rl
    if method == "nca_pair":
        return (-log_sigmoid(b * rw) - 0.5 * log_sigmoid(-b * rw) - 0.5 * log_sigmoid(-b * rl)), b * rw, b * rl
    if method == "robust":
        e, h = hp["epsilon"], rw - rl
        return ((1 - e) * -log_sigmoid(b * h) + e * log_sigmoid(-b * h)) / (1 - 2 * e), b * rw, b * rl
    if method == "bco_pair":
        return -log_sigmoid(b * rw) - log_sigmoid(-b * rl), b * rw, b * rl
    if method == "sppo_hard":
        return (rw - 1 / (2 * b)) ** 2 + (rl + 1 / (2 * b)) ** 2, b * rw, b * rl
    if method == "apo_zero":
        return 1 - sigmoid(b * rw) + sigmoid(b * rl), b * rw, b * rl
    if method == "apo_down":
        return sigmoid(b * rw) + 1 - sigmoid(b * (rw - rl)), b * rw, b * rl
    if method == "discopop":
        x = b * (rw - rl)
        m = sigmoid(x / hp["tau"])
        return (1 - m) * -log_sigmoid(x) + m * math.exp(-x), b * rw, b * rl
    if method == "nll":
        return -aw, aw, al
    if method in ("f_dpo", "f_dpo_js"):
        if method == "f_dpo":
            a = hp["f_alpha"]
            score = (lambda r: r) if a == 1 else (lambda r: (math.exp((a - 1) * r) - 1) / (a - 1))
        else:
            def score(r):
                return math.log(2 * math.exp(r) / (math.exp(r) + 1))  # log(2t / (t + 1)), t = π/πref
        sw, sl = score(rw), score(rl)
        return -log_sigmoid(b * (sw - sl)), b * sw, b * sl
    if method == "wpo":
        weight = math.exp((p.lw - p.lss_w) / p.len_w) * math.exp((p.ll - p.lss_l) / p.len_l)
        return -log_sigmoid(b * (rw - rl)) * weight, b * rw, b * rl
    if method == "ld_dpo":
        a = hp["ld_alpha"]

        def weighted(full, tail):  # shared part + α · tail
            return (full - tail) + a * tail

        cw = weighted(p.lw, p.tail_w) - weighted(p.ref_w, p.ref_tail_w)
        cl = weighted(p.ll, p.tail_l) - weighted(p.ref_l, p.ref_tail_l)
        return -log_sigmoid(b * (cw - cl)), b * cw, b * cl
    raise AssertionError(method)


def aot_batch(method: str, pairs, hp: dict) -> float:
    """The batch loss of AOT: the cDPO-shaped loss on quantile-matched (sorted) margins, averaged."""
    b, e = hp["beta"], hp["epsilon"]
    if method == "aot":
        first = sorted(p.lw - p.ll for p in pairs)
        second = sorted(p.ref_w - p.ref_l for p in pairs)
    else:
        first = sorted(p.lw - p.ref_w for p in pairs)
        second = sorted(p.ll - p.ref_l for p in pairs)
    return sum(-(1 - e) * log_sigmoid(b * (x - y)) - e * log_sigmoid(-b * (x - y))
               for x, y in zip(first, second)) / len(pairs)


def tensor_inputs(pairs, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """compute_loss's keyword inputs for ``pairs``, the extra ones (tails, log Σ π²) included."""
    def column(name: str, column_dtype: torch.dtype = dtype) -> torch.Tensor:
        # pairs without the extra sums get 0 (no tail; log Σ π² = 0)
        return torch.tensor([getattr(p, name, 0.0) for p in pairs], dtype=column_dtype)

    return {"policy_chosen_logps": column("lw"), "policy_rejected_logps": column("ll"),
            "reference_chosen_logps": column("ref_w"), "reference_rejected_logps": column("ref_l"),
            "chosen_lengths": column("len_w", torch.long), "rejected_lengths": column("len_l", torch.long),
            "policy_chosen_tail_logps": column("tail_w"), "policy_rejected_tail_logps": column("tail_l"),
            "reference_chosen_tail_logps": column("ref_tail_w"),
            "reference_rejected_tail_logps": column("ref_tail_l"),
            "policy_chosen_log_sum_sq_probs": column("lss_w"), "policy_rejected_log_sum_sq_probs": column("lss_l")}
