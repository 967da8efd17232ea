"""DPO with TRL 1.16's options: f-divergences, WPO weighting, LD-DPO (docs/DESIGN.md section 8).

In: the signature of every posweep loss (``posweep.losses.functions``); WPO and LD-DPO also take, as
keyword arguments, the extra per-pair sums ``posweep.losses.method.EXTRA_INPUTS`` describes. Out: a
``LossOutput``. Notation as docs/DESIGN.md: ``rw = lw − log πref(y_w)``, σ = sigmoid.

- f-DPO (Wang et al. 2024): DPO's reverse-KL regulariser replaced by another f-divergence. The log-ratio
  r enters through f′(e^r) instead of r itself: ``−log σ(β (s(rw) − s(rl)))``, s = f′ ∘ exp (TRL
  ``f_divergence_type``).
- WPO (Zhou et al. 2024): each pair's DPO loss weighted by how likely its two responses are under the
  current policy (TRL ``use_weighting``), so off-policy pairs count less.
- LD-DPO (Liu et al. 2024): the log-probs of the tokens beyond the pair's shorter response weighted by α
  in every sequence log-prob (TRL ``ld_alpha``), which takes the pull of sheer length out of DPO.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from posweep.losses.common import LossOutput, Tensor, per_token, scaled_rewards


def alpha_divergence_scores(log_ratios: Tensor, f_alpha: float) -> Tensor:
    """s(r) = f′(e^r) of TRL's α-divergence: ``(exp((α−1)·r) − 1)/(α−1)``.

    α = 1 is the limit log t, reverse KL (DPO); α = 0 gives 1 − e^(−r), forward KL (TRL ``forward_kl``).
    α follows TRL's ``f_alpha_divergence_coef``. As TRL, the exponent is clamped at 80 (11 in float16) so
    exp stays finite, and α within 1e-6 of 1 falls back to r.
    """
    if abs(f_alpha - 1.0) < 1e-6:
        return log_ratios
    exponent = (f_alpha - 1.0) * log_ratios
    clamp_max = 11.0 if exponent.dtype == torch.float16 else 80.0
    wide = exponent.to(torch.promote_types(exponent.dtype, torch.float32)).clamp(max=clamp_max)
    return (torch.exp(wide) - 1.0).to(exponent.dtype) / (f_alpha - 1.0)


def js_divergence_scores(log_ratios: Tensor) -> Tensor:
    """s(r) = f′(e^r) of the Jensen–Shannon divergence: ``log(2t/(t+1)) = log 2 + log σ(r)``."""
    return math.log(2) + F.logsigmoid(log_ratios)


def _sigmoid_on_scores(chosen_scores: Tensor, rejected_scores: Tensor, beta: float) -> LossOutput:
    losses = -F.logsigmoid(beta * (chosen_scores - rejected_scores))
    return LossOutput(losses, *scaled_rewards(chosen_scores, rejected_scores, beta))


def f_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
               reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
               chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float, f_alpha: float) -> LossOutput:
    """f-DPO with the α-divergence: ``−log σ(β (s(rw) − s(rl)))``, s = ``alpha_divergence_scores``.

    f_alpha = 1 is dpo, f_alpha = 0 TRL's ``forward_kl``. Rewards β·s(rw), β·s(rl): the f-DPO implicit
    reward, the quantity the loss compares (TRL logs β·rw).
    """
    return _sigmoid_on_scores(alpha_divergence_scores(policy_chosen_logps - reference_chosen_logps, f_alpha),
                              alpha_divergence_scores(policy_rejected_logps - reference_rejected_logps, f_alpha),
                              beta)


def f_dpo_js_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                  reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                  chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float) -> LossOutput:
    """f-DPO with the Jensen–Shannon divergence: s(r) = log 2 + log σ(r). Rewards β·s(rw), β·s(rl)."""
    return _sigmoid_on_scores(js_divergence_scores(policy_chosen_logps - reference_chosen_logps),
                              js_divergence_scores(policy_rejected_logps - reference_rejected_logps), beta)


def wpo_weights(logps: Tensor, log_sum_sq_probs: Tensor, lengths: Tensor) -> Tensor:
    """WPO eq. 2 as TRL: ``exp((l − Σ_t log Σ_v π(v|·)²) / |y|)``, detached.

    The geometric-mean token probability of the response, each token's probability divided by what the
    policy's own sampling would give on average (Σ_v π(v)²), so an on-policy response weighs about 1.
    """
    return torch.exp(per_token((logps - log_sum_sq_probs).detach(), lengths))


def wpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
             chosen_lengths: Tensor, rejected_lengths: Tensor, *, policy_chosen_log_sum_sq_probs: Tensor,
             policy_rejected_log_sum_sq_probs: Tensor, beta: float) -> LossOutput:
    """WPO (Zhou et al. 2024): ``w(y_w)·w(y_l)·(−log σ(β h))``, w = ``wpo_weights`` from the policy.

    The weights need, per response, Σ over its tokens of log Σ_v π(v | x, y_<t)², which a pass that only
    sums the target tokens' log-probs does not have (docs/DESIGN.md section 8). Rewards β·rw, β·rl.
    """
    chosen_ratios = policy_chosen_logps - reference_chosen_logps
    rejected_ratios = policy_rejected_logps - reference_rejected_logps
    weights = (wpo_weights(policy_chosen_logps, policy_chosen_log_sum_sq_probs, chosen_lengths)
               * wpo_weights(policy_rejected_logps, policy_rejected_log_sum_sq_probs, rejected_lengths))
    losses = -F.logsigmoid(beta * (chosen_ratios - rejected_ratios)) * weights
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))


def ld_weighted(logps: Tensor, tail_logps: Tensor, ld_alpha: float) -> Tensor:
    """LD-DPO's sequence log-prob: shared part + α·tail = ``l − (1 − α)·tail``."""
    return logps - (1.0 - ld_alpha) * tail_logps


def ld_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                chosen_lengths: Tensor, rejected_lengths: Tensor, *, policy_chosen_tail_logps: Tensor,
                policy_rejected_tail_logps: Tensor, reference_chosen_tail_logps: Tensor,
                reference_rejected_tail_logps: Tensor, beta: float, ld_alpha: float) -> LossOutput:
    """LD-DPO (Liu et al. 2024): DPO on ``l_α = l_shared + α·l_tail`` for policy and reference alike.

    ``l_tail`` sums the log-probs of the response tokens beyond min(|y_w|, |y_l|) (so only the longer
    response of a pair has one); the full sums stay the standard inputs and the shared part is
    ``l − l_tail``, which is why a reference cache that stores the full and tail sums serves every α.
    α = 1 is dpo; α = 0 drops the tail. Rewards β·(l_α − ref_α), as TRL.
    """
    chosen_ratios = (ld_weighted(policy_chosen_logps, policy_chosen_tail_logps, ld_alpha)
                     - ld_weighted(reference_chosen_logps, reference_chosen_tail_logps, ld_alpha))
    rejected_ratios = (ld_weighted(policy_rejected_logps, policy_rejected_tail_logps, ld_alpha)
                       - ld_weighted(reference_rejected_logps, reference_rejected_tail_logps, ld_alpha))
    losses = -F.logsigmoid(beta * (chosen_ratios - rejected_ratios))
    return LossOutput(losses, *scaled_rewards(chosen_ratios, rejected_ratios, beta))
