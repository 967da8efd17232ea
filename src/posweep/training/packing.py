"""Padding-free packed rows with each prompt computed once (prefix sharing), and their attention masks.

In: prompts, each with the responses that follow it (a preference pair: chosen and rejected; SFT: one
response), and the index of the output sequence each response's log-prob goes to. Out: ``PackedRows`` —
a few rows of token ids laid end to end, ``[prompt₁ chosen₁ rejected₁ prompt₂ chosen₂ rejected₂ ...]``,
padded only at the end of a row, with per-token ``segment`` / ``branch`` / ``position`` ids that define the
attention, and the (row, source, target, sequence) positions of every response token the log-prob pass
gathers. ``dense_mask`` materialises the mask for SDPA / eager attention, ``mask_mod`` is the same rule as
a FlexAttention ``mask_mod``.

The attention rule. A token q may attend to a token k of the same row iff

    segment[q] = segment[k] ≥ 0                     (same prompt: nothing crosses pairs)
    ∧ k ≤ q                                         (causal in the row)
    ∧ (branch[k] = 0 ∨ branch[k] = branch[q])       (the prompt, or its own response: chosen and
                                                      rejected both see their prompt, not each other)
    ∧ position[q] − position[k] < window            (sliding-window layers only)

or q = k (so that padding, which sees nothing else, never softmaxes an empty row into NaN). Position ids
restart after the prompt for every response: both the chosen and the rejected response's first token
have position len(prompt), exactly as in its own padded row ``prompt + response``. With positions, the
mask and the rotary embeddings equal to the padded row's, every response token's hidden state equals
the padded path's, up to float summation order.

The gather. A response token at row column t is predicted by the hidden state at t − 1, except the first
token of every response, which is predicted by the *last prompt token*: for the chosen response that is
the column just before it, for the rejected one it is len(chosen) columns further back (``source`` holds
the column explicitly). As in the padded path, a response after an empty prompt has no position that
predicts its first token, so that token is not counted.

Rows: prompt groups (a prompt and its responses, never split) are placed first-fit by decreasing length
into rows of at most max(``max_row_tokens``, longest group) tokens (``max_row_tokens=None``: one row), so
rows are as wide as the longest group at least and the padding at their ends stays small. Dense masks cost
rows · T² memory and attention work, hence the bound on that path; a FlexAttention block mask skips the
blocks that are masked out, so one row is best there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packing:
    """How to lay out packed rows: a bound on the tokens of one row, raised to the longest prompt group when
    that is longer (``None``: one row for the whole micro-batch), and a multiple the row width is padded up
    to (FlexAttention works in 128-token blocks)."""

    max_row_tokens: int | None = None
    width_multiple: int = 1


@dataclass
class PackedRows:
    """Packed rows and the response-token positions to gather; all tensors long, padding at row ends only."""

    input_ids: torch.Tensor  # [rows, T]
    position_ids: torch.Tensor  # [rows, T]: 0.. in the prompt, restarting at len(prompt) for every response
    segment_ids: torch.Tensor  # [rows, T]: prompt group within the row, -1 for padding
    branch_ids: torch.Tensor  # [rows, T]: 0 prompt, k ≥ 1 its k-th response, -1 padding
    gather_row: torch.Tensor  # [M] row of each counted response token
    gather_source: torch.Tensor  # [M] column of the hidden state that predicts it
    gather_target: torch.Tensor  # [M] column of the token itself
    gather_sequence: torch.Tensor  # [M] output sequence it is summed into
    num_sequences: int

    @property
    def real_tokens(self) -> int:
        """Tokens computed, padding excluded (each prompt once)."""
        return int((self.segment_ids >= 0).sum())

    def to(self, device) -> PackedRows:
        tensors = (self.input_ids, self.position_ids, self.segment_ids, self.branch_ids, self.gather_row,
                   self.gather_source, self.gather_target, self.gather_sequence)
        return PackedRows(*(t.to(device) for t in tensors), self.num_sequences)


def _rows_first_fit(lengths: Sequence[int], max_row_tokens: int | None) -> list[list[int]]:
    """Group indices per row: first fit by decreasing length (ties by index, so the layout is deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if max_row_tokens is None or not order:
        return [order] if order else []
    max_row_tokens = max(max_row_tokens, lengths[order[0]])
    rows: list[list[int]] = []
    used: list[int] = []
    for i in order:
        for r, tokens in enumerate(used):
            if tokens + lengths[i] <= max_row_tokens:
                rows[r].append(i)
                used[r] += lengths[i]
                break
        else:
            rows.append([i])
            used.append(lengths[i])
    return rows


def pack_shared_prompts(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[Sequence[int]]],
                        sequences: Sequence[Sequence[int]], num_sequences: int, pad_id: int,
                        packing: Packing = Packing()) -> PackedRows:
    """Lay out ``prompts[g]`` followed by each of ``responses[g]`` (all seeing the prompt, not each other);
    the log-prob of ``responses[g][k]`` is summed into output sequence ``sequences[g][k]``."""
    if not (len(prompts) == len(responses) == len(sequences)):
        raise ValueError(f"{len(prompts)} prompts, {len(responses)} response lists, {len(sequences)} sequence lists")
    lengths = [len(p) + sum(len(r) for r in rs) for p, rs in zip(prompts, responses)]
    rows = _rows_first_fit(lengths, packing.max_row_tokens)
    width = max((sum(lengths[g] for g in row) for row in rows), default=1)
    multiple = max(1, packing.width_multiple)
    width = -(-max(width, 1) // multiple) * multiple
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.full(shape, -1, dtype=torch.long)
    branch_ids = torch.full(shape, -1, dtype=torch.long)
    gather: list[torch.Tensor] = []  # [4, n] per response: row, source, target, sequence
    for r, row in enumerate(rows):
        column = 0
        for segment, g in enumerate(row):
            prompt = list(prompts[g])
            p = len(prompt)
            input_ids[r, column : column + p] = torch.tensor(prompt, dtype=torch.long)
            position_ids[r, column : column + p] = torch.arange(p)
            segment_ids[r, column : column + p] = segment
            branch_ids[r, column : column + p] = 0
            last_prompt = column + p - 1
            column += p
            for k, (response, sequence) in enumerate(zip(responses[g], sequences[g]), start=1):
                n = len(response)
                if n:
                    input_ids[r, column : column + n] = torch.tensor(list(response), dtype=torch.long)
                position_ids[r, column : column + n] = torch.arange(p, p + n)
                segment_ids[r, column : column + n] = segment
                branch_ids[r, column : column + n] = k
                targets = torch.arange(column, column + n)
                sources = targets - 1
                if n:
                    sources[0] = last_prompt  # the first response token is predicted from the prompt's end
                first = 0 if p > 0 else 1
                gather.append(torch.stack([torch.full((n,), r), sources, targets, torch.full((n,), sequence)])[:, first:])
                column += n
    index = torch.cat(gather, dim=1) if gather else torch.zeros(4, 0, dtype=torch.long)
    return PackedRows(input_ids, position_ids, segment_ids, branch_ids, index[0].contiguous(),
                      index[1].contiguous(), index[2].contiguous(), index[3].contiguous(), num_sequences)


def pack_pairs(prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]],
               pad_id: int, packing: Packing = Packing()) -> PackedRows:
    """Pairs as ``[prompt chosen rejected]`` groups; sequences: chosen of every pair first, then rejected
    (the order of today's ``[chosen rows; rejected rows]``)."""
    n = len(prompts)
    if not (len(chosen) == len(rejected) == n):
        raise ValueError(f"{n} prompts but {len(chosen)} chosen and {len(rejected)} rejected responses")
    return pack_shared_prompts(prompts, [[c, r] for c, r in zip(chosen, rejected)],
                               [[i, n + i] for i in range(n)], 2 * n, pad_id, packing)


def pack_examples(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
                  packing: Packing = Packing()) -> PackedRows:
    """Plain packing of ``prompt + response`` examples (SFT); sequence i is example i."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return pack_shared_prompts(prompts, [[r] for r in responses], [[i] for i in range(len(prompts))],
                               len(prompts), pad_id, packing)


def dense_mask(rows: PackedRows, window: int | None = None) -> torch.Tensor:
    """[rows, 1, T, T] bool: True where a query (dim 2) may attend to a key (dim 3); the rule above."""
    segment, branch, position = rows.segment_ids, rows.branch_ids, rows.position_ids
    width = segment.shape[1]
    column = torch.arange(width, device=segment.device)
    allowed = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)
    allowed &= column[None, None, :] <= column[None, :, None]
    allowed &= (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    if window is not None:
        allowed &= (position[:, :, None] - position[:, None, :]) < window
    allowed |= torch.eye(width, dtype=torch.bool, device=segment.device)[None]
    return allowed[:, None]


def mask_mod(rows: PackedRows, window: int | None = None):
    """The same rule as ``dense_mask``, as a FlexAttention ``mask_mod(batch, head, q, kv) -> bool``."""
    segment, branch, position = rows.segment_ids, rows.branch_ids, rows.position_ids

    def allowed(b, h, q, kv):
        same = (segment[b, q] == segment[b, kv]) & (segment[b, q] >= 0)
        visible = (branch[b, kv] == 0) | (branch[b, kv] == branch[b, q])
        keep = same & (kv <= q) & visible
        if window is not None:
            keep = keep & (position[b, q] - position[b, kv] < window)
        return keep | (q == kv)

    return allowed
