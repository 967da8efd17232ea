"""Preference-optimization losses as pure functions on per-pair summed log-probs (docs/DESIGN.md sections 2, 8).

In: for a batch of pairs (x, y_w, y_l), tensors of shape [batch]: the policy's summed response log-probs
``policy_chosen_logps`` (lw) and ``policy_rejected_logps`` (ll), the reference model's (None for
reference-free methods), and the response lengths |y_w|, |y_l| in policy tokens (``posweep.training.logprobs``
returns both). Out: a ``LossOutput`` with the per-pair loss (the trainer takes the mean) and the detached
implicit rewards the trainer logs.

Every loss has the same signature, so a trainer calls any of them alike; ``posweep.losses.registry``
names, for each method, its function (here for the paper's nine, in ``trl_losses`` for TRL's other
DPOTrainer loss types, in ``options`` for DPO with TRL's options), its hyperparameters and its study grid.
``compute_loss`` is the one entry point: it also sums combinations (``combinations``). Notation as
docs/DESIGN.md: ``rw = lw − log πref(y_w|x)``, ``h = rw − rl``, σ = sigmoid. Lengths are clamped to at
least 1 before dividing (as TRL does), so an empty response contributes a log-prob of 0 instead of NaN.

Rewards are the per-response quantity whose chosen − rejected difference the loss acts on, scaled by the
method's β (τ for IPO, λ for ORPO): DPO β·rw, SimPO β·lw/|y_w|, ... so ``margins > 0`` means the pair is
ordered correctly by the method's own criterion. That is TRL's logging, except for LN-DPO and IPO, where
TRL logs the unnormalized β·rw and here the rewards are length-normalized like the loss, and f-DPO
(``options``), whose rewards are β·f′(e^r). A combination logs its first component's rewards.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from posweep.losses import combinations, options, trl_losses
from posweep.losses.common import LossOutput, Tensor, per_token, scaled_rewards
from posweep.losses.registry import get_method, weight_name

__all__ = ["LossOutput", "compute_loss", "loss_function"]


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
             chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float) -> LossOutput:
    """DPO (Rafailov et al. 2023): ``−log σ(β (rw − rl))``. Rewards β·rw, β·rl (TRL ``sigmoid``)."""
    chosen_ratios = policy_chosen_logps - reference_chosen_logps
    rejected_ratios = policy_rejected_logps - reference_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_ratios - rejected_ratios))
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def ln_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float) -> LossOutput:
    """Length-normalized DPO (Ahrabian et al. 2024, eq. 1): ``−log σ(β (rw/|y_w| − rl/|y_l|))``.

    Equals TRL ``sigmoid_norm``. Rewards β·rw/|y_w|, β·rl/|y_l| (the normalized terms the loss compares;
    TRL logs the unnormalized β·rw for every DPOTrainer loss type).
    """
    chosen_ratios = per_token(policy_chosen_logps - reference_chosen_logps, chosen_lengths)
    rejected_ratios = per_token(policy_rejected_logps - reference_rejected_logps, rejected_lengths)
    losses = -F.logsigmoid(beta * (chosen_ratios - rejected_ratios))
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def simpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
               reference_chosen_logps: Tensor | None, reference_rejected_logps: Tensor | None,
               chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float,
               gamma_beta_ratio: float | Tensor) -> LossOutput:
    """SimPO (Meng et al. 2024): ``−log σ(β (lw/|y_w| − ll/|y_l|) − γ)``, γ = ``gamma_beta_ratio`` · β; no reference.

    The margin is given as γ/β, the way the SimPO authors and the study grid it. It may be a [batch]
    tensor: LN-DPO is SimPO with the per-pair margin γ = β(log πref(y_w)/|y_w| − log πref(y_l)/|y_l|)
    (paper eq. 1). Equals TRL CPOTrainer ``loss_type="simpo"`` with ``cpo_alpha=0`` and
    ``simpo_gamma`` = γ. Rewards β·lw/|y_w|, β·ll/|y_l| (as TRL); the margin excludes γ.
    """
    chosen_average = per_token(policy_chosen_logps, chosen_lengths)
    rejected_average = per_token(policy_rejected_logps, rejected_lengths)
    losses = -F.logsigmoid(beta * (chosen_average - rejected_average) - gamma_beta_ratio * beta)
    return LossOutput(losses, *scaled_rewards(chosen_average, rejected_average, beta))


def r_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
               reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
               chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float, alpha: float) -> LossOutput:
    """R-DPO (Park et al. 2024): ``−log σ(β (rw − rl) + α (|y_w| − |y_l|))``.

    The length term raises the margin of pairs whose chosen response is longer, so they get less push and
    the policy gains less by growing longer. Not in TRL. Rewards β·rw, β·rl as DPO (the length term is
    not a reward of the policy).
    """
    chosen_ratios = policy_chosen_logps - reference_chosen_logps
    rejected_ratios = policy_rejected_logps - reference_rejected_logps
    length_difference = (chosen_lengths - rejected_lengths).to(chosen_ratios.dtype)
    losses = -F.logsigmoid(beta * (chosen_ratios - rejected_ratios) + alpha * length_difference)
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
             chosen_lengths: Tensor, rejected_lengths: Tensor, *, tau: float) -> LossOutput:
    """IPO (Azar et al. 2023, eq. 17), length-normalized: ``(rw/|y_w| − rl/|y_l| − 1/(2τ))²``.

    Equals TRL ``ipo`` (TRL calls τ ``beta`` and averages the log-ratios per token, as here). Rewards
    τ·rw/|y_w|, τ·rl/|y_l| (the normalized terms the loss compares; TRL logs the unnormalized τ·rw).
    """
    chosen_ratios = per_token(policy_chosen_logps - reference_chosen_logps, chosen_lengths)
    rejected_ratios = per_token(policy_rejected_logps - reference_rejected_logps, rejected_lengths)
    losses = (chosen_ratios - rejected_ratios - 1 / (2 * tau)) ** 2
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, tau))


def cdpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
              reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
              chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float, epsilon: float) -> LossOutput:
    """Conservative DPO (Mitchell 2023): ``−(1−ε) log σ(βh) − ε log σ(−βh)``, h = rw − rl.

    DPO with labels flipped with probability ε. Older TRL ran it as ``sigmoid`` with
    ``label_smoothing=ε``; TRL 1.16's ``sigmoid`` ignores label smoothing and its ``robust`` loss is a
    different one (Chowdhury et al. 2024: ``((1−ε)(−log σ(βh)) + ε log σ(−βh)) / (1−2ε)``), so the same
    expression is left in TRL 1.16 only in ``aot`` (which sorts over the batch first) and CPOTrainer's
    reference-free ``sigmoid``. Rewards β·rw, β·rl as DPO.
    """
    chosen_ratios = policy_chosen_logps - reference_chosen_logps
    rejected_ratios = policy_rejected_logps - reference_rejected_logps
    logits = beta * (chosen_ratios - rejected_ratios)
    losses = -(1 - epsilon) * F.logsigmoid(logits) - epsilon * F.logsigmoid(-logits)
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def hinge_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
               reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
               chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float) -> LossOutput:
    """SLiC-style hinge (Zhao et al. 2023, as in TRL ``hinge``): ``max(0, 1 − β h)``. Rewards β·rw, β·rl."""
    chosen_ratios = policy_chosen_logps - reference_chosen_logps
    rejected_ratios = policy_rejected_logps - reference_rejected_logps
    losses = torch.relu(1 - beta * (chosen_ratios - rejected_ratios))
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def cpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             reference_chosen_logps: Tensor | None, reference_rejected_logps: Tensor | None,
             chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float,
             nll_weight: float) -> LossOutput:
    """CPO (Xu et al. 2024): ``−log σ(β (lw − ll)) − λ lw/|y_w|``, λ = ``nll_weight``; no reference.

    TRL CPOTrainer ``loss_type="sigmoid"`` with ``cpo_alpha=λ`` adds λ times the chosen responses' NLL
    averaged over all chosen tokens of the batch; here it is averaged per pair (then the trainer averages
    pairs), so the two agree exactly when the chosen responses of a batch have equal length. Rewards
    β·lw, β·ll (as TRL).
    """
    logits = beta * (policy_chosen_logps - policy_rejected_logps)
    chosen_nll = -per_token(policy_chosen_logps, chosen_lengths)
    losses = -F.logsigmoid(logits) + nll_weight * chosen_nll
    return LossOutput(losses, *scaled_rewards(policy_chosen_logps, policy_rejected_logps, beta))


def _log_odds(average_logps: Tensor) -> Tensor:
    """log(p / (1 − p)) for p = exp(a), a <= 0, without cancellation: a − log(1 − exp(a)).

    a is capped at −1e-6 (p ≤ 1 − 1e-6, log odds ≤ 13.8): at a = 0 (an empty response, or every token
    certain in float32) the odds are infinite and the loss would be inf; TRL does not guard this.
    """
    average_logps = average_logps.clamp(max=-1e-6)
    # log1p(−exp(a)) loses precision for a near 0, log(−expm1(a)) for very negative a: branch at −log 2.
    log_one_minus_p = torch.where(average_logps < -math.log(2), torch.log1p(-torch.exp(average_logps)),
                                  torch.log(-torch.expm1(average_logps)))
    return average_logps - log_one_minus_p


def orpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
              reference_chosen_logps: Tensor | None, reference_rejected_logps: Tensor | None,
              chosen_lengths: Tensor, rejected_lengths: Tensor, *, odds_ratio_weight: float) -> LossOutput:
    """ORPO (Hong et al. 2024): ``−lw/|y_w| − λ log σ(log odds(y_w) − log odds(y_l))``.

    λ = ``odds_ratio_weight``; odds(y) = p / (1 − p) with p = exp(l/|y|). TRL ORPOTrainer computes the
    same odds-ratio term (its ``beta`` is λ) but its NLL term averages over the prompt *and* response
    tokens of all chosen rows of the batch; here the NLL is over response tokens, per pair, as docs/DESIGN.md.
    Rewards λ·lw/|y_w|, λ·ll/|y_l| (as TRL).
    """
    chosen_average = per_token(policy_chosen_logps, chosen_lengths)
    rejected_average = per_token(policy_rejected_logps, rejected_lengths)
    log_odds_ratio = _log_odds(chosen_average) - _log_odds(rejected_average)
    losses = -chosen_average - odds_ratio_weight * F.logsigmoid(log_odds_ratio)
    return LossOutput(losses, *scaled_rewards(chosen_average, rejected_average, odds_ratio_weight))


def loss_function(method_name: str):
    """The pure loss function of a single registry method (a combination has none: see ``compute_loss``)."""
    method = get_method(method_name)
    if method.components:
        raise ValueError(f"method {method_name!r} is a combination of {', '.join(method.components)}; "
                         "compute_loss sums their loss functions")
    for module in _LOSS_MODULES:
        if hasattr(module, method.loss):
            return getattr(module, method.loss)
    raise LookupError(f"method {method_name!r}: no loss function {method.loss!r}")


def _single_loss(method, kwargs: dict, standard: tuple, extra: dict) -> LossOutput:
    own = {key: kwargs[key] for key in method.hyperparameters}
    return loss_function(method.name)(*standard, **{name: extra[name] for name in method.inputs}, **own)


def compute_loss(method_name: str, *, hparams: Mapping[str, float] | None = None,
                 policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                 chosen_lengths: Tensor, rejected_lengths: Tensor,
                 reference_chosen_logps: Tensor | None = None,
                 reference_rejected_logps: Tensor | None = None,
                 policy_chosen_tail_logps: Tensor | None = None,
                 policy_rejected_tail_logps: Tensor | None = None,
                 reference_chosen_tail_logps: Tensor | None = None,
                 reference_rejected_tail_logps: Tensor | None = None,
                 policy_chosen_log_sum_sq_probs: Tensor | None = None,
                 policy_rejected_log_sum_sq_probs: Tensor | None = None) -> LossOutput:
    """The loss of ``method_name``, its defaults overridden by ``hparams`` (method-specific names only).

    The last six inputs are the extra per-pair sums of ``posweep.losses.method.EXTRA_INPUTS``; a method
    uses those its ``inputs`` name (LD-DPO the tails, WPO the log Σ π² sums) and ignores the others. A
    combination (``Method.components``) is the weighted sum of its components' losses, each called with
    its own hyperparameters (``posweep.losses.combinations``).
    """
    method = get_method(method_name)
    kwargs = method.loss_kwargs(hparams)
    if method.needs_reference and (reference_chosen_logps is None or reference_rejected_logps is None):
        raise ValueError(f"method {method_name!r} needs reference log-probs (reference_chosen_logps, "
                         "reference_rejected_logps); got None")
    extra = {"policy_chosen_tail_logps": policy_chosen_tail_logps,
             "policy_rejected_tail_logps": policy_rejected_tail_logps,
             "reference_chosen_tail_logps": reference_chosen_tail_logps,
             "reference_rejected_tail_logps": reference_rejected_tail_logps,
             "policy_chosen_log_sum_sq_probs": policy_chosen_log_sum_sq_probs,
             "policy_rejected_log_sum_sq_probs": policy_rejected_log_sum_sq_probs}
    missing = [name for name in method.inputs if extra[name] is None]
    if missing:
        raise ValueError(f"method {method_name!r} needs the per-pair inputs {', '.join(missing)}; got None")
    standard = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                chosen_lengths, rejected_lengths)
    if not method.components:
        return _single_loss(method, kwargs, standard, extra)
    return combinations.weighted_sum([
        (kwargs[weight_name(name)], _single_loss(get_method(name), kwargs, standard, extra))
        for name in method.components])


_LOSS_MODULES = (sys.modules[__name__], trl_losses, options)
