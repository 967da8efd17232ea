"""TRL 1.16 DPOTrainer loss types beyond the paper's nine, as pure functions (docs/DESIGN.md section 8).

In: the signature of every posweep loss (``posweep.losses.functions``): policy and reference summed
response log-probs and the response lengths, shape [batch], then keyword-only hyperparameters. Out: a
``LossOutput``. Notation: ``rw = lw − log πref(y_w)``, ``h = rw − rl``, σ = sigmoid. Each function is the
expression of TRL's ``DPOTrainer._compute_loss`` for its ``loss_type`` (TRL calls ε ``label_smoothing``);
the rewards are β·rw, β·rl, TRL's logging, unless a docstring says otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from posweep.losses.common import LossOutput, Tensor, per_token, scaled_rewards


def _log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    return policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps


def exo_pair_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                  reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                  chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float, epsilon: float) -> LossOutput:
    """EXO-pref (Ji et al. 2024, eq. 16): KL(q ‖ p) between the model's pairwise preference and smoothed labels.

    ``q = σ(βh)``, ``p = (1 − ε, ε)``: ``q (log q − log(1−ε)) + (1−q)(log(1−q) − log ε)``; ε ∈ (0, 1)
    (log ε), the paper recommends 1e-3.
    """
    chosen_ratios, rejected_ratios = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps)
    logits = beta * (chosen_ratios - rejected_ratios)
    epsilon_t = torch.tensor(epsilon, dtype=logits.dtype, device=logits.device)
    losses = (torch.sigmoid(logits) * (F.logsigmoid(logits) - torch.log1p(-epsilon_t))
              + torch.sigmoid(-logits) * (F.logsigmoid(-logits) - torch.log(epsilon_t)))
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def nca_pair_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                  reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                  chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float) -> LossOutput:
    """NCA (Chen et al. 2024): ``−log σ(β rw) − ½ log σ(−β rw) − ½ log σ(−β rl)``.

    Acts on each response's own reward rather than on the difference, so the chosen likelihood is not
    pushed down along with the rejected one.
    """
    chosen_ratios, rejected_ratios = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps)
    chosen, rejected = beta * chosen_ratios, beta * rejected_ratios
    losses = -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def robust_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float, epsilon: float) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024): ``((1−ε)(−log σ(βh)) + ε log σ(−βh)) / (1 − 2ε)``, ε ∈ [0, 0.5).

    The unbiased DPO loss under labels flipped at rate ε. Not cdpo (which adds ε·(−log σ(−βh)) and does
    not divide): docs/DESIGN.md section 2.
    """
    chosen_ratios, rejected_ratios = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps)
    logits = beta * (chosen_ratios - rejected_ratios)
    losses = (-(1 - epsilon) * F.logsigmoid(logits) + epsilon * F.logsigmoid(-logits)) / (1 - 2 * epsilon)
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def bco_pair_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                  reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                  chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float) -> LossOutput:
    """BCO on pairs (Jung et al. 2024), as TRL 1.16: ``−log σ(β rw) − log σ(−β rl)``.

    A binary classifier whose logit is the implicit reward: chosen → 1, rejected → 0. The BCO paper (and
    TRL before 1.0) shifts both rewards by δ, a running mean of the rewards across steps; TRL 1.16's
    ``bco_pair`` has no δ, and neither has this function, which keeps it a pure function of its batch
    (a test checks that TRL returns the same value on the same batch twice).
    """
    chosen_ratios, rejected_ratios = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps)
    losses = -F.logsigmoid(beta * chosen_ratios) - F.logsigmoid(-beta * rejected_ratios)
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def sppo_hard_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                   reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                   chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float) -> LossOutput:
    """SPPO with hard labels (Wu et al. 2024, eq. 4.7 with P = 1 / 0): ``(rw − 1/(2β))² + (rl + 1/(2β))²``."""
    chosen_ratios, rejected_ratios = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps)
    losses = (chosen_ratios - 0.5 / beta) ** 2 + (rejected_ratios + 0.5 / beta) ** 2
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def _smoothed_logistic(delta: Tensor, beta: float, epsilon: float) -> Tensor:
    return -F.logsigmoid(beta * delta) * (1 - epsilon) - F.logsigmoid(-beta * delta) * epsilon


def aot_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
             chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float, epsilon: float) -> LossOutput:
    """AOT, paired (Melnyk et al. 2024): the cDPO-shaped loss on sorted margins.

    ``d_i = sort(lw − ll)_i − sort(ref_w − ref_l)_i`` over the batch, then
    ``−(1−ε) log σ(βd) − ε log σ(−βd)``: stochastic dominance of the policy's margins over the
    reference's, quantile by quantile. A batch-level loss: ``losses[i]`` belongs to the i-th quantile, not
    to pair i, and the value depends on which pairs share the micro-batch (TRL: the per-device batch). With
    one pair per batch it is cdpo. Rewards are per pair, β·rw (TRL's logging).
    """
    chosen_ratios, rejected_ratios = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps)
    policy_margins, _ = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0)
    reference_margins, _ = torch.sort(reference_chosen_logps - reference_rejected_logps, dim=0)
    losses = _smoothed_logistic(policy_margins - reference_margins, beta, epsilon)
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def aot_unpaired_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                      reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                      chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float,
                      epsilon: float) -> LossOutput:
    """AOT, unpaired (Melnyk et al. 2024): ``d_i = sort(rw)_i − sort(rl)_i``, then as ``aot_loss``.

    The chosen and rejected log-ratio distributions are compared quantile by quantile, ignoring the
    pairing; batch-level like ``aot_loss``.
    """
    chosen_ratios, rejected_ratios = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps)
    chosen_sorted, _ = torch.sort(chosen_ratios, dim=0)
    rejected_sorted, _ = torch.sort(rejected_ratios, dim=0)
    losses = _smoothed_logistic(chosen_sorted - rejected_sorted, beta, epsilon)
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def apo_zero_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                  reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                  chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float) -> LossOutput:
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7): ``1 − σ(β rw) + σ(β rl)``.

    Raises the chosen likelihood and lowers the rejected one: for chosen outputs better than the model's.
    """
    chosen_ratios, rejected_ratios = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps)
    losses = 1 - torch.sigmoid(beta * chosen_ratios) + torch.sigmoid(beta * rejected_ratios)
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def apo_down_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                  reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                  chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float) -> LossOutput:
    """APO-down (D'Oosterlinck et al. 2024, eq. 8): ``σ(β rw) + 1 − σ(β (rw − rl))``.

    Lowers both likelihoods, the rejected more: for a model already better than the chosen outputs.
    """
    chosen_ratios, rejected_ratios = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps)
    losses = torch.sigmoid(beta * chosen_ratios) + 1 - torch.sigmoid(beta * (chosen_ratios - rejected_ratios))
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def discopop_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                  reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                  chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float, tau: float) -> LossOutput:
    """DiscoPOP (Lu et al. 2024, eq. 5), the log-ratio modulated loss.

    ``(1 − m)·(−log σ(βh)) + m·exp(−βh)``, ``m = σ(βh/τ)``: logistic where the pair is ordered wrongly,
    exponential where it is ordered well; τ (the paper's 0.05) sets how sharp the switch is. The
    exponential term is computed as ``exp(log σ(βh/τ) − βh)``, the same number, because TRL's
    ``m·exp(−βh)`` is 0·inf = NaN once βh < −88 in float32 (a test pins it).
    """
    chosen_ratios, rejected_ratios = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps)
    logits = beta * (chosen_ratios - rejected_ratios)
    losses = (-F.logsigmoid(logits) * torch.sigmoid(-logits / tau)
              + torch.exp(F.logsigmoid(logits / tau) - logits))
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def nll_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             reference_chosen_logps: Tensor | None, reference_rejected_logps: Tensor | None,
             chosen_lengths: Tensor, rejected_lengths: Tensor) -> LossOutput:
    """The chosen response's NLL per token, ``−lw/|y_w|`` (TRL ``sft``); no reference, no hyperparameters.

    A method of its own and the NLL component of combinations (RPO, MPO). TRL averages the NLL over all
    chosen tokens of the batch, so a long response weighs more; here each pair's per-token NLL is averaged
    over pairs, which is RPO's per-sequence normalisation (Pang et al. 2024) and does not depend on how
    pairs are grouped into micro-batches. The two agree when the batch's chosen responses have equal length
    (a test pins the difference). Rewards are the per-token log-probs lw/|y_w|, ll/|y_l| (unscaled).
    """
    chosen_average = per_token(policy_chosen_logps, chosen_lengths)
    rejected_average = per_token(policy_rejected_logps, rejected_lengths)
    return LossOutput(-chosen_average, *scaled_rewards(chosen_average, rejected_average, 1.0))
