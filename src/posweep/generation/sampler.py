"""The sampler: one response per prompt from a policy, for evaluation (the ``hf`` backend).

In: a loaded causal LM and its tokenizer, ``list[PromptItem]``, a ``SamplingSpec`` (max new tokens,
temperature, top-p, seed, batch size). Out: ``list[Sample]`` in the order of the prompts, each with the
decoded text, the sampled token ids (eos and padding excluded), the length in tokens and whether it was
cut at ``max_new_tokens`` (no eos).

Batches are built from prompts sorted by token length (less left padding); each batch is sampled with a
seed derived from ``spec.seed`` and the batch index, so the same prompts and spec give the same samples
whatever ran before. Masks come from prompt lengths, never from the pad id (SmolLM2's pad is its eos).
Sampling stops at the tokenizer's eos only, the token every training response ends with
(``data.encode_response``).

Backends: ``hf`` and ``vllm`` (when installed, on CUDA, for a model saved in a local folder); ``auto``
picks vllm when it can. The two draw different random numbers: a sweep should use one backend throughout.
``hf`` is the loop of transformers ``generate`` (KV cache; greedy output identical to ``generate``'s,
which a test checks) written out, for two things ``generate`` cannot do: a row that has finished leaves
the batch, and each row draws from its own uniform numbers, so its sample does not depend on when the
other rows finish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from posweep.config import SamplingSpec
from posweep.data import PromptItem, encode_prompt
from posweep.generation.vllm_backend import vllm_usable
from posweep.progress import progress_bar


@dataclass
class Sample:
    prompt_id: str
    text: str
    token_ids: list[int]  # the sampled tokens, eos and padding excluded
    length: int  # len(token_ids)
    truncated: bool  # no eos within max_new_tokens


def batch_seed(seed: int, batch_index: int) -> int:
    """The RNG seed of one batch: depends only on the spec's seed and the batch's position."""
    return seed * 1_000_003 + batch_index


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: an out-of-memory shows early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows; the attention mask comes from each row's length, not from the pad id."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def cut_at_eos(generated: list[int], eos_id: int) -> tuple[list[int], bool]:
    """(tokens before the first eos, truncated): a row without eos was cut at max_new_tokens."""
    if eos_id in generated:
        return generated[: generated.index(eos_id)], False
    return generated, True


def next_tokens(logits: torch.Tensor, spec: SamplingSpec, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row from last-position logits [rows, vocab]: argmax at temperature 0, else a draw
    from softmax(logits / temperature) restricted to the top-p nucleus.

    The draw inverts each row's CDF at that row's own uniform number, so a row's tokens depend on its
    seed and step only, not on which other rows are still in the batch."""
    if spec.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / spec.temperature
    if spec.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays)
        outside = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= spec.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)
    # right=True never lands on a zero-probability token; scaling by cdf[:, -1] absorbs rounding
    return torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(-1)


def decode_batch(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, spec: SamplingSpec, eos_id: int,
                 generator: torch.Generator) -> list[tuple[list[int], bool]]:
    """(token ids before eos, truncated) per row of a left-padded batch, with a KV cache.

    What ``generate`` does, plus one thing it does not: a row that has produced its eos leaves the batch
    (its cache rows are dropped), so the remaining steps cost only the rows still being sampled. With
    256 new tokens and responses of very different lengths this is most of the work on CPU. Each step
    draws one uniform number per original row, so dropping rows changes no other row's sample."""
    cache = DynamicCache(config=model.config)
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)  # left padding: count real tokens only
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # original row of each active row
    next_position = position_ids[:, -1] + 1
    generated: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    finished = [False] * input_ids.shape[0]
    for step in range(spec.max_new_tokens):
        uniforms = torch.rand(input_ids.shape[0], generator=generator, device=input_ids.device)
        tokens = next_tokens(logits, spec, uniforms[rows])
        for row, token in zip(rows.tolist(), tokens.tolist()):
            if token == eos_id:
                finished[row] = True
            else:
                generated[row].append(token)
        active = tokens != eos_id
        if step == spec.max_new_tokens - 1 or not active.any():
            break
        if not active.all():
            keep = active.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, tokens, attention_mask, next_position = rows[keep], tokens[keep], attention_mask[keep], next_position[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=-1)
        logits = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=next_position[:, None],
                       past_key_values=cache, use_cache=True).logits[:, -1]
        next_position = next_position + 1
    return [(token_ids, not done) for token_ids, done in zip(generated, finished)]


def _sample_hf(model, tokenizer, prompt_ids: list[list[int]], spec: SamplingSpec,
               progress: bool) -> list[tuple[list[int], bool]]:
    """(token ids, truncated) per prompt, batch by batch with ``decode_batch``."""
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    device = model.device
    results: list[tuple[list[int], bool] | None] = [None] * len(prompt_ids)
    generated_tokens, started = 0, time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("sampling", total=len(prompt_ids), info="")
        for batch_index, indices in enumerate(length_sorted_batches([len(p) for p in prompt_ids], spec.batch_size)):
            input_ids, attention_mask = left_pad([prompt_ids[i] for i in indices], pad_id)
            # A generator of its own: the batch's draws depend on its seed only, and the caller's RNG is untouched.
            generator = torch.Generator(device=device).manual_seed(batch_seed(spec.seed, batch_index))
            with torch.inference_mode():
                batch_results = decode_batch(model, input_ids.to(device), attention_mask.to(device), spec, eos_id,
                                             generator)
            for i, (token_ids, truncated) in zip(indices, batch_results):
                results[i] = (token_ids, truncated)
                generated_tokens += len(token_ids) + (0 if truncated else 1)  # the eos was generated too
            tokens_per_s = generated_tokens / (time.perf_counter() - started)
            bar.update(task, advance=len(indices), info=f"{tokens_per_s:.0f} tok/s")
    return results


def sample_responses(model, tokenizer, prompts: list[PromptItem], spec: SamplingSpec, progress: bool = True,
                     backend: str = "auto") -> list[Sample]:
    """One sampled response per prompt, in the order of ``prompts``. Puts ``model`` in eval mode."""
    if backend not in {"auto", "hf", "vllm"}:
        raise ValueError(f"unknown sampling backend {backend!r}; use auto, hf or vllm")
    if not prompts:
        return []
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos token: sampling could not stop")
    prompt_ids = [encode_prompt(tokenizer, item.prompt) for item in prompts]
    model.eval()
    if backend == "vllm" or (backend == "auto" and vllm_usable(model)):
        from posweep.generation.vllm_backend import sample_vllm

        results = sample_vllm(model, tokenizer, prompt_ids, spec)
    else:
        results = _sample_hf(model, tokenizer, prompt_ids, spec, progress)
    texts = tokenizer.batch_decode([token_ids for token_ids, _ in results], skip_special_tokens=True)
    return [Sample(item.prompt_id, text, token_ids, len(token_ids), truncated)
            for item, text, (token_ids, truncated) in zip(prompts, texts, results)]
