"""The decode loop of the ``hf`` backend: prefill a batch of prompts, then draw token by token from a KV cache.

In: a causal LM, prompt token rows, a ``SamplingSpec``, the stop token ids, a torch generator. Out: per row,
(sampled token ids without the stop token, the stop token or None when cut at ``max_new_tokens``).

Two engines hold the cache; the loop (``decode_batch``) is the same for both:

- ``DynamicEngine`` (backend ``hf``, eager): transformers' ``DynamicCache``. A row that has stopped leaves
  the batch at once (its cache rows are dropped), so later steps cost only the rows still sampling. The
  tokens every prompt of the batch starts with (a template's system prompt) are prefilled once; the rest,
  on CPU, where the matrix products are the whole cost, in groups of similar length, so almost no padding
  is computed; on GPU, where each call's launch overhead dominates, in one padded call.
- ``StaticEngine`` (backend ``hf-compiled``): transformers' ``StaticCache`` and a ``torch.compile``d decode
  step (CUDA graphs on GPU: ``mode="reduce-overhead"``). Shapes must stay fixed for the compiled step, so a
  batch shrinks only through power-of-two buckets: when the active rows fit the next smaller bucket they are
  copied into that bucket's cache; stopped rows inside a bucket keep computing and are ignored. One cache per
  bucket size is allocated once per ``sample_responses`` call and reset between batches, so the compiled
  step is reused across batches.

Each step draws one uniform number per original row (``next_tokens`` inverts that row's CDF at it), so a
row's sample never depends on which other rows are still in the batch or on the engine.
"""

from __future__ import annotations

import math

import torch
from transformers import DynamicCache, StaticCache

from posweep.config import SamplingSpec


def nucleus_logits(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with every token outside the top-p nucleus set to -inf (``top_p`` = 1: unchanged).

    A token is dropped when the tokens ranked above it already hold ``top_p`` of the probability (the most
    likely token always stays). Shared by sampling and by the KL's log-probs (``evaluation.kl``)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    outside = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
    return logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))


def next_tokens(logits: torch.Tensor, spec: SamplingSpec, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(one token per row, its log-prob) from last-position logits [rows, vocab]: argmax at temperature 0,
    else a draw from softmax(logits / temperature) restricted to the top-p nucleus.

    The log-prob is the one the KL uses (``evaluation.kl``): under the distribution drawn from (temperature
    T, the nucleus), or at temperature 1 without a nucleus for greedy decoding. The draw inverts each row's
    CDF at that row's own uniform number, so a row's tokens depend on its seed and step only, not on which
    other rows are still in the batch."""
    if spec.temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, logits.float().log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    logits = nucleus_logits(logits.float() / spec.temperature, spec.top_p)
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)
    # right=True never lands on a zero-probability token; scaling by cdf[:, -1] absorbs rounding
    tokens = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return tokens, logits.log_softmax(dim=-1).gather(-1, tokens[:, None]).squeeze(-1)


def left_pad(rows: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows to ``width`` (default: the longest); the attention mask comes from each row's
    length, not from the pad id."""
    width = width or max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)  # left padding: count real tokens only


def padding_groups(lengths: list[int], tolerance: float) -> list[list[int]]:
    """Row indices in groups of similar length, longest first: a row joins the current group while padding
    it to the group's longest row adds at most ``tolerance`` of that length (0: equal lengths only)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[groups[-1][0]] - lengths[i] <= tolerance * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def shared_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens every row shares (a chat template's system prompt, say), leaving every row at
    least one token of its own (the prefill must return each row's last-position logits)."""
    shortest = min(len(row) for row in rows)
    length = 0
    while length < shortest - 1 and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length


class DynamicEngine:
    """A ``DynamicCache``; stopped rows leave the batch every step (see the module docstring).

    The prefill computes the tokens every prompt of the batch starts with once (a template's system prompt),
    then the rest in groups of similar length. ``prefill_padding``: how much padding one group may compute,
    as a share of its longest prompt: on CPU (default 0.1) almost none; on GPU (default: no limit) the rest is
    one padded call, because there a call's fixed cost outweighs the padding."""

    def __init__(self, model, prefill_padding: float | None = None):
        self.model = model
        self.prefill_padding = (0.1 if model.device.type == "cpu" else math.inf) if prefill_padding is None \
            else prefill_padding

    def _forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def prefill(self, rows: list[list[int]], pad_id: int, max_new_tokens: int) -> torch.Tensor:
        """Fill the cache with the prompts; return the logits of each prompt's last position [rows, vocab].

        Cache layout: row i holds its real tokens at the cache positions where ``attention_mask`` is 1 (the
        shared prefix, then its own tokens right-aligned); the positions between hold pad keys that the mask
        hides, and RoPE positions count real tokens only, so every row sees exactly its own prompt."""
        device, config = self.model.device, self.model.config
        shared = shared_prefix_length(rows)
        prefix = None
        if shared:
            prefix = DynamicCache(config=config)
            self._forward(torch.tensor([rows[0][:shared]], device=device), None, None, prefix)
        width = max(len(row) for row in rows)
        batch_mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        logits: list[torch.Tensor | None] = [None] * len(rows)
        groups = padding_groups([len(row) - shared for row in rows], self.prefill_padding)
        layers = None
        for group in groups:
            input_ids, own_mask = left_pad([rows[i][shared:] for i in group], pad_id)
            mask = torch.cat([own_mask.new_ones(len(group), shared), own_mask], dim=-1).to(device)
            cache = DynamicCache(config=config) if prefix is None else DynamicCache(
                ddp_cache_data=[(layer.keys.expand(len(group), -1, -1, -1), layer.values.expand(len(group), -1, -1, -1))
                                for layer in prefix.layers], config=config)
            out = self._forward(input_ids.to(device), mask, _positions(mask)[:, shared:], cache)
            index = torch.tensor(group, device=device)
            batch_mask[index, width - mask.shape[1] :] = mask
            for i, row_logits in zip(group, out):
                logits[i] = row_logits
            if len(groups) == 1:  # the group is the batch (in its own row order)
                self.cache, order = cache, torch.argsort(index)
                self.cache.batch_select_indices(order)
                break
            if layers is None:  # [rows, kv heads, width, head dim] per layer
                layers = [tuple(t.new_zeros((len(rows), t.shape[1], width, t.shape[3])) for t in (layer.keys, layer.values))
                          for layer in cache.layers]
            for (keys, values), layer in zip(layers, cache.layers):
                keys[index, :, width - mask.shape[1] :] = layer.keys
                values[index, :, width - mask.shape[1] :] = layer.values
        if layers is not None:
            self.cache = DynamicCache(ddp_cache_data=layers, config=config)
        self.attention_mask, self.position = batch_mask, batch_mask.sum(dim=-1)
        return torch.stack(logits)

    def keep(self, active: torch.Tensor) -> torch.Tensor | None:
        """Drop the rows that stopped; return the kept rows' indices (None: every row is still active)."""
        if bool(active.all()):
            return None
        keep = active.nonzero().squeeze(-1)
        self.cache.batch_select_indices(keep)
        self.attention_mask, self.position = self.attention_mask[keep], self.position[keep]
        return keep

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; return the next logits [rows, vocab]."""
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(len(tokens), 1)], dim=-1)
        logits = self.model(input_ids=tokens[:, None], attention_mask=self.attention_mask,
                            position_ids=self.position[:, None], past_key_values=self.cache, use_cache=True).logits
        self.position = self.position + 1
        return logits[:, -1]


def _decode_step(model, tokens, position, attention_mask, cache):
    return model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=position[:, None],
                 past_key_values=cache, use_cache=True).logits[:, -1]


class StaticEngine:
    """``StaticCache`` buckets and a compiled decode step (see the module docstring). Create one per
    ``sample_responses`` call with the longest prompt and ``max_new_tokens``: its caches are sized for them."""

    def __init__(self, model, max_prompt_length: int, max_new_tokens: int, compile_step: bool = True):
        self.model = model
        self.length = max_prompt_length + max_new_tokens
        self.caches: dict[int, StaticCache] = {}
        cuda = model.device.type == "cuda"
        self.cuda = cuda
        # Default dynamic-shape policy: the first bucket compiles static, the next one once with a dynamic
        # batch size, after which no bucket recompiles (CUDA graphs still record one graph per size).
        self.step_fn = (torch.compile(_decode_step, mode="reduce-overhead" if cuda else None)
                        if compile_step else _decode_step)

    def _cache(self, rows: int) -> StaticCache:
        cache = self.caches.get(rows)
        if cache is None:
            cache = self.caches[rows] = StaticCache(config=self.model.config, max_cache_len=self.length)
        else:
            cache.reset()
        return cache

    def prefill(self, rows: list[list[int]], pad_id: int, max_new_tokens: int) -> torch.Tensor:
        device = self.model.device
        width = max(len(row) for row in rows)
        if width + max_new_tokens > self.length:
            raise ValueError(f"prompt of {width} tokens + {max_new_tokens} new tokens exceeds the cache ({self.length})")
        input_ids, prompt_mask = left_pad(rows, pad_id)
        self.attention_mask = torch.zeros((len(rows), self.length), dtype=torch.long, device=device)
        self.attention_mask[:, :width] = prompt_mask.to(device)
        self.cursor = width  # the cache index the next token is written at (the same for every row)
        self.position = _positions(self.attention_mask[:, :width])[:, -1] + 1
        self.cache = self._cache(len(rows))
        return self.model(input_ids=input_ids.to(device), attention_mask=self.attention_mask,
                          position_ids=_positions(self.attention_mask[:, :width]), past_key_values=self.cache,
                          use_cache=True, logits_to_keep=1).logits[:, -1]

    def keep(self, active: torch.Tensor) -> torch.Tensor | None:
        """Move to the next smaller power-of-two bucket once the active rows fit it; the kept rows are the
        active ones first, then stopped ones to fill the bucket."""
        rows, n_active = len(active), int(active.sum())
        bucket = 1 << max(n_active - 1, 0).bit_length()  # the smallest power of two >= n_active
        if bucket >= rows:
            return None
        order = torch.cat([active.nonzero().squeeze(-1), (~active).nonzero().squeeze(-1)])[:bucket]
        smaller = self._cache(bucket)
        smaller.early_initialization(bucket, [layer.keys.shape[1] for layer in self.cache.layers],
                                     [layer.keys.shape[3] for layer in self.cache.layers],
                                     self.cache.layers[0].keys.dtype, self.model.device)
        for new, old in zip(smaller.layers, self.cache.layers):
            new.keys.copy_(old.keys[order])
            new.values.copy_(old.values[order])
            new.cumulative_length.copy_(old.cumulative_length)
        self.cache = smaller
        self.attention_mask, self.position = self.attention_mask[order], self.position[order]
        return order

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.attention_mask[:, self.cursor] = 1
        self.cursor += 1
        if self.cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        logits = self.step_fn(self.model, tokens, self.position, self.attention_mask, self.cache).clone()
        self.position = self.position + 1
        return logits


def decode_batch(engine, rows: list[list[int]], spec: SamplingSpec, stop_ids: list[int], generator: torch.Generator,
                 pad_id: int) -> list[tuple[list[int], int | None, float]]:
    """Per prompt row: (sampled token ids before the stop token, the stop token or None when cut at
    ``max_new_tokens``, the summed log-prob of the sampled tokens and the stop token as ``next_tokens``
    gives it), decoding with ``engine`` (``DynamicEngine`` or ``StaticEngine``)."""
    device = engine.model.device
    logits = engine.prefill(rows, pad_id, spec.max_new_tokens)
    stops = torch.tensor(stop_ids, device=device)
    original = torch.arange(len(rows), device=device)  # the original row of each cache row
    active = torch.ones(len(rows), dtype=torch.bool, device=device)  # per cache row: still sampling
    generated: list[list[int]] = [[] for _ in rows]
    stopped_by: list[int | None] = [None] * len(rows)
    logps = [0.0] * len(rows)
    for step in range(spec.max_new_tokens):
        uniforms = torch.rand(len(rows), generator=generator, device=device)
        tokens, token_logps = next_tokens(logits, spec, uniforms[original])
        is_stop = torch.isin(tokens, stops)
        for row, token, stop, live, logp in zip(original.tolist(), tokens.tolist(), is_stop.tolist(), active.tolist(),
                                                token_logps.tolist()):
            if not live:
                continue
            logps[row] += logp
            if stop:
                stopped_by[row] = token
            else:
                generated[row].append(token)
        active = active & ~is_stop
        if step == spec.max_new_tokens - 1 or not bool(active.any()):
            break
        keep = engine.keep(active)
        if keep is not None:
            original, tokens, active = original[keep], tokens[keep], active[keep]
        logits = engine.step(tokens)
    return list(zip(generated, stopped_by, logps))
