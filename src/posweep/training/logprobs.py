"""Summed log-probabilities of response tokens, without full-vocabulary logits in memory.

In: a causal LM and a batch — right-padded rows of (prompt ids, response ids) (``pack``) or packed rows
with each prompt computed once (``posweep.training.packing``) — or tokenized pairs by index
(``pair_logps``, ``chosen_logps``: how the trainer and the reference cache turn pairs into a batch). Out: per
response, the sum over *response tokens only* of ``log π(y_t | x, y_<t)`` and the number of response
tokens; for pairs, chosen responses first, then rejected, whatever the layout.

Why not ``model(input_ids).logits``: that materialises a [rows, length, vocab] tensor (for 16 rows of 512
tokens and a 49k vocabulary, 1.6 GB in float32) and spends most of it on prompt and padding positions.
Here the backbone runs once, the hidden states of the positions that predict a response token are
gathered (for packed rows: explicit (row, source, target) columns, since a rejected response's first token
is predicted from the end of the prompt, not from the column before it), and the LM head + log-softmax
run over them in chunks of ``chunk_size`` positions. With gradients on, each chunk is checkpointed, so its
logits are recomputed in the backward pass instead of being kept alive.

Packed and padded batches give the same sums (float32: to ~1e-6; tests/training/test_packing.py), so the
layout is a speed choice, not a result: ``ResponseLogps(model, packing=True)`` packs where the model's
attention can take the packed mask (``posweep.training.attention``) and otherwise keeps padded rows, with
the reason logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from posweep.data import TokenizedPairs
from posweep.training.attention import PackedAttention, attention_inputs, packed_attention
from posweep.training.packing import PackedRows, Packing, pack_examples, pack_pairs

log = logging.getLogger(__name__)


@dataclass
class PaddedBatch:
    """Right-padded rows ``prompt + response``; masks come from lengths, never from the pad id."""

    input_ids: torch.Tensor  # [rows, T]
    attention_mask: torch.Tensor  # [rows, T]
    prompt_lengths: torch.Tensor  # [rows]
    sequence_lengths: torch.Tensor  # [rows] prompt + response

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.sequence_lengths - self.prompt_lengths

    def to(self, device) -> PaddedBatch:
        return PaddedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                     self.prompt_lengths, self.sequence_lengths)))


PackedBatch = PaddedBatch  # its name before packed rows existed


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> PaddedBatch:
    """Concatenate each prompt with its response and right-pad to the longest row (one row per response)."""
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
    return PaddedBatch(input_ids, attention_mask, prompt_lengths, sequence_lengths)


def response_target_mask(batch: PaddedBatch) -> torch.Tensor:
    """[rows, T-1] bool: position t predicts token t+1, and token t+1 belongs to the response."""
    width = batch.input_ids.shape[1]
    next_position = torch.arange(1, width, device=batch.input_ids.device)[None, :]
    return (next_position >= batch.prompt_lengths[:, None]) & (next_position < batch.sequence_lengths[:, None])


def _chunk_logps(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None,
                 log_sum_sq: bool = False):
    """log π(target) per position; with ``log_sum_sq`` also log Σ_v π(v)² (WPO's weight; no gradient)."""
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logps = -F.cross_entropy(logits, targets, reduction="none")
    if not log_sum_sq:
        return logps
    with torch.no_grad():
        return logps, torch.logsumexp(2 * logits, dim=-1) - 2 * torch.logsumexp(logits, dim=-1)


def backbone_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (returns hidden states) and the LM head of a ``*ForCausalLM`` model."""
    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or head is None:
        raise TypeError(f"{type(model).__name__}: cannot split into backbone and LM head")
    return body, head


def _hidden_and_gather(body, batch: PaddedBatch | PackedRows, attention: PackedAttention | None, dtype: torch.dtype):
    """Backbone hidden states [rows, T, H] and, per counted response token: (row, source column, target
    column, output sequence), plus the number of output sequences."""
    if isinstance(batch, PackedRows):
        if attention is None:
            raise ValueError("packed rows need a PackedAttention plan (see posweep.training.attention)")
        hidden = body(input_ids=batch.input_ids, **attention_inputs(attention, batch, dtype)).last_hidden_state
        return hidden, (batch.gather_row, batch.gather_source, batch.gather_target, batch.gather_sequence), batch.num_sequences
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    row, position = response_target_mask(batch).nonzero(as_tuple=True)
    return hidden, (row, position, position + 1, row), batch.input_ids.shape[0]


def ranks_in_sequence(sequence: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """0-based index of each gathered token within its response (tokens of a response are gathered in
    order in both layouts; a stable sort by sequence keeps that order)."""
    order = torch.argsort(sequence, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    ranks = torch.empty_like(sequence)
    ranks[order] = torch.arange(len(sequence), device=sequence.device) - starts[sequence[order]]
    return ranks


def response_logps(model, batch: PaddedBatch | PackedRows, chunk_size: int = 1024,
                   attention: PackedAttention | None = None, pairs_of: int | None = None,
                   log_sum_sq: bool = False):
    """Per response: (sum of response-token log-probs [float32], number of response tokens).

    ``attention``: how packed rows reach ``model`` (``packed_attention(model)``; computed here if not given).
    Extras, from the same chunked pass, returned as a third element ``{name: [sequences] tensor}`` when asked:
    ``pairs_of=n`` (sequences i and n + i are the chosen and rejected response of pair i): ``"tail"``, the sum
    over the tokens of each response beyond the shorter response of its pair (LD-DPO; 0 for the shorter
    one); ``log_sum_sq``: ``"log_sum_sq"``, Σ_t log Σ_v π(v | x, y_<t)² (WPO's weights; no gradient)."""
    for name in ("logit_scale", "logits_scaling"):
        # Cohere / Granite-style heads rescale logits after the LM head, each its own way; rather than
        # return silently wrong log-probs, refuse.
        if getattr(model.config, name, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"{type(model).__name__}: config.{name} rescales logits after the LM head; "
                                      "response_logps does not reproduce that")
    if isinstance(batch, PackedRows) and attention is None:
        plan = packed_attention(model, allow_flex=False)
        if isinstance(plan, str):
            raise ValueError(f"{type(model).__name__} cannot take packed rows: {plan}")
        attention = plan
    body, head = backbone_and_head(model)
    dtype = head.weight.dtype if hasattr(head, "weight") else torch.float32
    hidden, (row, source, target, sequence), num_sequences = _hidden_and_gather(body, batch, attention, dtype)
    selected = hidden[row, source]  # [M, H]: only positions that predict a response token
    targets = batch.input_ids[row, target]
    softcap = getattr(model.config, "final_logit_softcapping", None)
    pieces = []
    for start in range(0, selected.shape[0], chunk_size):
        h, t = selected[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logps, h, t, head, softcap, log_sum_sq, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(h, t, head, softcap, log_sum_sq))
    if log_sum_sq:
        pieces, sq_pieces = [p[0] for p in pieces], [p[1] for p in pieces]
    token_logps = torch.cat(pieces) if pieces else selected.new_zeros(0, dtype=torch.float32)
    zeros = torch.zeros(num_sequences, dtype=torch.float32, device=token_logps.device)
    sums = zeros.index_add(0, sequence, token_logps)
    counts = torch.bincount(sequence, minlength=num_sequences)
    if pairs_of is None and not log_sum_sq:
        return sums, counts
    extras = {}
    if pairs_of is not None:
        shared = torch.minimum(counts[:pairs_of], counts[pairs_of:]).repeat(2)
        tail = ranks_in_sequence(sequence, counts) >= shared[sequence]
        extras["tail"] = zeros.index_add(0, sequence[tail], token_logps[tail])
    if log_sum_sq:
        token_sq = torch.cat(sq_pieces) if sq_pieces else token_logps.detach()
        extras["log_sum_sq"] = zeros.index_add(0, sequence, token_sq)
    return sums, counts, extras


def naive_response_logps(model, batch: PaddedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook computation (full logits, full log-softmax); used by tests as the ground truth."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logps = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = response_target_mask(batch)
    return (logps * mask).sum(dim=1), mask.sum(dim=1)


def _probe_pairs(vocab: int) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Two small pairs of deterministic token ids below ``vocab`` (prompts of 3 and 2, responses of 1-4)."""
    ids = [(7 + 37 * i) % max(1, vocab - 3) + 3 for i in range(15)]
    pieces = [ids[a:b] for a, b in ((0, 3), (3, 5), (5, 7), (7, 10), (10, 14), (14, 15))]
    return pieces[0:2], [pieces[2], pieces[3]], [pieces[4], pieces[5]]


@torch.no_grad()
def packing_mismatch(model, attention: PackedAttention) -> str | None:
    """Score two small pairs packed and padded; ``None`` when they agree, else what differed (one line).

    Catches a model that silently ignores a custom mask or the position ids, which no config flag shows."""
    vocab = model.get_input_embeddings().num_embeddings
    prompts, chosen, rejected = _probe_pairs(vocab)
    pad_id = model.config.pad_token_id if isinstance(getattr(model.config, "pad_token_id", None), int) else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            padded, _ = response_logps(model, pack(prompts + prompts, chosen + rejected, pad_id).to(device))
            packed, _ = response_logps(model, pack_pairs(prompts, chosen, rejected, pad_id, attention.packing).to(device),
                                       attention=attention)
    finally:
        model.train(was_training)
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    gap = (packed - padded).abs().max().item()
    if not gap <= tolerance * max(1.0, padded.abs().max().item()):
        return f"packed and padded log-probs differ by {gap:.3g} on a probe"
    return None


class ResponseLogps(torch.nn.Module):
    """``response_logps`` as a module: ``forward(batch) -> (sums, counts)``, ``batch`` padded or packed.

    The trainer hands this module, not the bare causal LM, to ``accelerator.prepare``: the whole log-prob
    pass (backbone, packed attention masks, chunked LM head) then runs inside the wrapper's forward, where
    DDP's and FSDP's hooks see it, while the causal LM inside keeps its own config and ``save_pretrained``.

    ``packing=True``: decide once whether ``model`` can take packed rows (``packed_attention`` and a probe
    against padded rows); ``self.packing`` is then the row layout to build batches with (``pair_logps``,
    ``chosen_logps``), or ``None`` — padded rows — with the reason logged."""

    def __init__(self, model, chunk_size: int = 1024, packing: bool = False):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.attention: PackedAttention | None = None
        if packing:
            before = model.config._attn_implementation
            plan = packed_attention(model)
            reason = plan if isinstance(plan, str) else packing_mismatch(model, plan)
            if reason is None:
                self.attention = plan
                log.info("%s: packed rows with shared prompts (%s attention, rows of %s tokens)", type(model).__name__,
                         plan.implementation, plan.packing.max_row_tokens or "any number of")
            else:
                if model.config._attn_implementation != before:
                    model.set_attn_implementation(before)
                log.warning("%s: padded rows, not packed: %s", type(model).__name__, reason)

    @property
    def packing(self) -> Packing | None:
        """The packed row layout this module takes, or ``None`` (padded rows)."""
        return self.attention.packing if self.attention is not None else None

    def forward(self, batch: PaddedBatch | PackedRows, pairs_of: int | None = None, log_sum_sq: bool = False):
        return response_logps(self.model, batch, self.chunk_size, self.attention, pairs_of, log_sum_sq)


def pair_logps(scorer, pairs: TokenizedPairs, index: list[int], pad_id: int, device, packing: Packing | None = None,
               tails: bool = False, log_sum_sq: bool = False):
    """One forward pass of ``scorer`` (a ``ResponseLogps``, possibly wrapped by accelerate) over the pairs at
    ``index``: (sums, counts) of length 2·len(index), chosen first. ``packing=None``: rows
    ``[chosen rows; rejected rows]``, each ``prompt + response``, right-padded; a ``Packing``: packed rows
    ``[prompt chosen rejected ...]`` (the scorer's ``packing``). ``tails`` / ``log_sum_sq``: also the extras
    of ``response_logps`` (a third element)."""
    prompts = [pairs.prompt_ids[i] for i in index]
    chosen, rejected = [pairs.chosen_ids[i] for i in index], [pairs.rejected_ids[i] for i in index]
    if packing is not None:
        batch = pack_pairs(prompts, chosen, rejected, pad_id, packing)
    else:
        batch = pack(prompts + prompts, chosen + rejected, pad_id)
    if not tails and not log_sum_sq:
        return scorer(batch.to(device))
    return scorer(batch.to(device), pairs_of=len(index) if tails else None, log_sum_sq=log_sum_sq)


def chosen_logps(scorer, pairs: TokenizedPairs, index: list[int], pad_id: int, device, packing: Packing | None = None):
    """One forward pass of ``scorer`` over ``prompt + chosen`` of the pairs at ``index`` (SFT): padded rows,
    or plain packed rows with ``packing``."""
    prompts, chosen = [pairs.prompt_ids[i] for i in index], [pairs.chosen_ids[i] for i in index]
    if packing is not None:
        return scorer(pack_examples(prompts, chosen, pad_id, packing).to(device))
    return scorer(pack(prompts, chosen, pad_id).to(device))
