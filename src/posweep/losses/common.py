"""What every loss function shares: its output record and the few helpers all of them use.

In: [batch] tensors. Out: ``LossOutput`` (per-pair losses and detached rewards), ``per_token`` (a sum
divided by its length, length >= 1 as TRL clamps) and ``scaled_rewards``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class LossOutput:
    """Per-pair results, all shape [batch]. ``losses`` carries gradients; the rewards are detached.

    For a batch-level loss (``Method.batch_level``: AOT sorts the batch) ``losses`` are per position of the
    sorted batch, not per pair; their mean is still the batch loss. The rewards are always per pair.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor

    @property
    def loss(self) -> Tensor:
        """The batch loss the trainer back-propagates: the mean over pairs."""
        return self.losses.mean()

    @property
    def margins(self) -> Tensor:
        return self.chosen_rewards - self.rejected_rewards


def per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    """Summed log-probs divided by response length (length >= 1, as TRL clamps)."""
    return logps / lengths.to(device=logps.device, dtype=logps.dtype).clamp(min=1)


def scaled_rewards(chosen: Tensor, rejected: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return scale * chosen.detach(), scale * rejected.detach()
