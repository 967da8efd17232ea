"""Weighted sums of registry losses: RPO, MPO and ad-hoc ``a+b`` combinations (docs/DESIGN.md section 8).

In: (weight, ``LossOutput``) for each component, in the combination's order. Out: one ``LossOutput``:
per-pair losses ``Σ_c w_c·losses_c`` (so the batch mean is ``Σ_c w_c·mean(losses_c)``, TRL's
``loss += per_sequence_loss.mean() * loss_weight``) and the first component's rewards, so a combination
led by dpo logs DPO's β·rw, β·rl (the rewards TRL logs for every loss type).
"""

from __future__ import annotations

from collections.abc import Sequence

from posweep.losses.common import LossOutput


def weighted_sum(parts: Sequence[tuple[float, LossOutput]]) -> LossOutput:
    if not parts:
        raise ValueError("a combination needs at least one component")
    losses = sum(weight * output.losses for weight, output in parts)
    first = parts[0][1]
    return LossOutput(losses, first.chosen_rewards, first.rejected_rewards)
