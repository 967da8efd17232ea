"""Summed log-probabilities of response tokens, without full-vocabulary logits in memory.

In: a causal LM and rows of (prompt ids, response ids), or tokenized pairs by index (``pair_logps``,
``chosen_logps``: how the trainer and the reference cache turn pairs into rows). Out: per row, the sum over *response tokens
only* of ``log π(y_t | x, y_<t)`` and the number of response tokens.

Why not ``model(input_ids).logits``: that materialises a [rows, length, vocab] tensor (for 16 rows of 512
tokens and a 49k vocabulary, 1.6 GB in float32) and spends most of it on prompt and padding positions.
Here the backbone runs once, the hidden states of the positions that predict a response token are
gathered, and the LM head + log-softmax run over them in chunks of ``chunk_size`` positions. With
gradients on, each chunk is checkpointed, so its logits are recomputed in the backward pass instead of
being kept alive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from posweep.data import TokenizedPairs


@dataclass
class PackedBatch:
    """Right-padded rows ``prompt + response``; masks come from lengths, never from the pad id."""

    input_ids: torch.Tensor  # [rows, T]
    attention_mask: torch.Tensor  # [rows, T]
    prompt_lengths: torch.Tensor  # [rows]
    sequence_lengths: torch.Tensor  # [rows] prompt + response

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.sequence_lengths - self.prompt_lengths

    def to(self, device) -> PackedBatch:
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                     self.prompt_lengths, self.sequence_lengths)))


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> PackedBatch:
    """Concatenate each prompt with its response and right-pad to the longest row."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    sequence_lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    attention_mask = (torch.arange(width)[None, :] < sequence_lengths[:, None]).long()
    prompt_lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    return PackedBatch(input_ids, attention_mask, prompt_lengths, sequence_lengths)


def response_target_mask(batch: PackedBatch) -> torch.Tensor:
    """[rows, T-1] bool: position t predicts token t+1, and token t+1 belongs to the response."""
    width = batch.input_ids.shape[1]
    next_position = torch.arange(1, width, device=batch.input_ids.device)[None, :]
    return (next_position >= batch.prompt_lengths[:, None]) & (next_position < batch.sequence_lengths[:, None])


def _chunk_logps(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None):
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return -F.cross_entropy(logits, targets, reduction="none")


def backbone_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (returns hidden states) and the LM head of a ``*ForCausalLM`` model."""
    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or head is None:
        raise TypeError(f"{type(model).__name__}: cannot split into backbone and LM head")
    return body, head


def response_logps(model, batch: PackedBatch, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (sum of response-token log-probs [float32], number of response tokens)."""
    for name in ("logit_scale", "logits_scaling"):
        # Cohere / Granite-style heads rescale logits after the LM head, each its own way; rather than
        # return silently wrong log-probs, refuse.
        if getattr(model.config, name, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"{type(model).__name__}: config.{name} rescales logits after the LM head; "
                                      "response_logps does not reproduce that")
    body, head = backbone_and_head(model)
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    mask = response_target_mask(batch)  # [rows, T-1]
    row_index, position = mask.nonzero(as_tuple=True)
    selected = hidden[row_index, position]  # [M, H]: only positions that predict a response token
    targets = batch.input_ids[row_index, position + 1]
    softcap = getattr(model.config, "final_logit_softcapping", None)
    pieces = []
    for start in range(0, selected.shape[0], chunk_size):
        h, t = selected[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logps, h, t, head, softcap, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(h, t, head, softcap))
    token_logps = torch.cat(pieces) if pieces else selected.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(mask.shape[0], dtype=torch.float32, device=token_logps.device)
    sums = sums.index_add(0, row_index, token_logps)
    return sums, mask.sum(dim=1)


def naive_response_logps(model, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook computation (full logits, full log-softmax); used by tests as the ground truth."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logps = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = response_target_mask(batch)
    return (logps * mask).sum(dim=1), mask.sum(dim=1)


class ResponseLogps(torch.nn.Module):
    """``response_logps`` as a module: ``forward(batch) -> (sums, counts)``.

    The trainer hands this module, not the bare causal LM, to ``accelerator.prepare``: the whole log-prob
    pass (backbone and chunked LM head) then runs inside the wrapper's forward, where DDP's and FSDP's
    hooks see it, while the causal LM inside keeps its own config and ``save_pretrained``."""

    def __init__(self, model, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return response_logps(self.model, batch, self.chunk_size)


def pair_logps(scorer, pairs: TokenizedPairs, index: list[int], pad_id: int, device):
    """One forward pass of ``scorer`` (a ``ResponseLogps``, possibly wrapped by accelerate) over
    ``[chosen rows; rejected rows]`` of the pairs at ``index``: (sums, counts) of length 2·len(index),
    chosen first."""
    prompts = [pairs.prompt_ids[i] for i in index]
    responses = [pairs.chosen_ids[i] for i in index] + [pairs.rejected_ids[i] for i in index]
    return scorer(pack(prompts + prompts, responses, pad_id).to(device))


def chosen_logps(scorer, pairs: TokenizedPairs, index: list[int], pad_id: int, device):
    """One forward pass of ``scorer`` over ``prompt + chosen`` rows of the pairs at ``index`` (SFT)."""
    return scorer(pack([pairs.prompt_ids[i] for i in index], [pairs.chosen_ids[i] for i in index], pad_id).to(device))
