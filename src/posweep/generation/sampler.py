"""The sampler: one response per prompt from a policy, for evaluation.

In: a loaded causal LM and its tokenizer, ``list[PromptItem]``, a ``SamplingSpec`` (max new tokens,
temperature, top-p, seed, batch size, backend). Out: ``list[Sample]`` in the order of the prompts, each with
the decoded text, the sampled token ids (the stop token and padding excluded), the length in tokens, the
token that ended it (``stop_token_id``) and whether it was cut at ``max_new_tokens`` instead.

A response ends at the model's own end-of-turn tokens (``generation.stops``: the chat template's
end-of-turn token, the tokenizer's eos and the generation config's eos list), the same rule in every
backend. Batches are built from prompts sorted by token length (less padding); each batch is sampled with a
seed derived from ``spec.seed`` and the batch index, so the same prompts and spec give the same samples
whatever ran before, and a run and its SFT baseline use the same random numbers for the same prompt.

Backends (``SamplingSpec.backend``, resolved once by ``resolve_backend``):
- ``hf``: posweep's decoder (``generation.decode.DynamicEngine``): transformers' model calls and KV cache,
  the loop of ``generate`` written out for what ``generate`` cannot do: a row that has stopped leaves the
  batch, each row draws from its own uniform numbers, prompts are prefilled without padding on CPU. Greedy
  output is identical to ``generate``'s (a test checks).
- ``hf-compiled``: the same loop with a static cache and a ``torch.compile``d decode step
  (``generation.decode.StaticEngine``), meant for GPUs.
- ``vllm``: vLLM (optional extra, CUDA only), ``generation.vllm_backend``.
``auto`` is ``vllm`` when vLLM is installed and CUDA is present, else ``hf``. The backends draw different
random numbers, so a sweep uses one backend throughout (the sweep records which).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass

import torch

from posweep.config import SamplingSpec
from posweep.data import PromptItem, encode_prompt
from posweep.generation.decode import DynamicEngine, StaticEngine, decode_batch
from posweep.generation.stops import model_stop_token_ids
from posweep.progress import progress_bar

BACKENDS = ("auto", "hf", "hf-compiled", "vllm")


@dataclass
class Sample:
    prompt_id: str
    text: str
    token_ids: list[int]  # the sampled tokens, the stop token and padding excluded
    length: int  # len(token_ids)
    truncated: bool  # no stop token within max_new_tokens
    stop_token_id: int | None = None  # the token that ended the response; None when truncated
    # Σ log π(token) over token_ids and the stop token, under the distribution sampled from (temperature,
    # nucleus; evaluation.kl's rule), as the sampler computed it; None where the backend does not give it.
    logp: float | None = None


def resolve_backend(backend: str) -> str:
    """A concrete backend for ``backend``: ``auto`` becomes ``vllm`` when vLLM is installed and CUDA is
    present, else ``hf``; the others stay as they are."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampling backend {backend!r}; use {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "hf"


def resolved(spec: SamplingSpec) -> SamplingSpec:
    """``spec`` with its backend resolved (``resolve_backend``): what a baseline key is computed from."""
    backend = resolve_backend(spec.backend)
    return spec if backend == spec.backend else spec.model_copy(update={"backend": backend})


def batch_seed(seed: int, batch_index: int) -> int:
    """The RNG seed of one batch: depends only on the spec's seed and the batch's position."""
    return seed * 1_000_003 + batch_index


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: an out-of-memory shows early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _sample_hf(model, prompt_ids: list[list[int]], spec: SamplingSpec, stop_ids: list[int], pad_id: int,
               compiled: bool, progress: bool) -> list[tuple[list[int], int | None, float]]:
    """(token ids, stop token or None, log-prob) per prompt, batch by batch with ``decode_batch``."""
    device = model.device
    engine = (StaticEngine(model, max(len(p) for p in prompt_ids), spec.max_new_tokens) if compiled
              else DynamicEngine(model))
    results: list[tuple[list[int], int | None, float] | None] = [None] * len(prompt_ids)
    generated_tokens, started = 0, time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("sampling", total=len(prompt_ids), info="")
        for batch_index, indices in enumerate(length_sorted_batches([len(p) for p in prompt_ids], spec.batch_size)):
            # A generator of its own: the batch's draws depend on its seed only, and the caller's RNG is untouched.
            generator = torch.Generator(device=device).manual_seed(batch_seed(spec.seed, batch_index))
            with torch.inference_mode():
                batch_results = decode_batch(engine, [prompt_ids[i] for i in indices], spec, stop_ids, generator,
                                             pad_id)
            for i, (token_ids, stop, logp) in zip(indices, batch_results):
                results[i] = (token_ids, stop, logp)
                generated_tokens += len(token_ids) + (stop is not None)  # the stop token was generated too
            tokens_per_s = generated_tokens / (time.perf_counter() - started)
            bar.update(task, advance=len(indices), info=f"{tokens_per_s:.0f} tok/s")
    return results


def sample_responses(model, tokenizer, prompts: list[PromptItem], spec: SamplingSpec, progress: bool = True,
                     backend: str | None = None) -> list[Sample]:
    """One sampled response per prompt, in the order of ``prompts``. Puts ``model`` in eval mode.

    ``backend`` overrides ``spec.backend`` (both resolved with ``resolve_backend``)."""
    backend = resolve_backend(backend or spec.backend)
    if not prompts:
        return []
    stop_ids = model_stop_token_ids(model, tokenizer)
    prompt_ids = [encode_prompt(tokenizer, item.prompt) for item in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    model.eval()
    if backend == "vllm":
        from posweep.generation.vllm_backend import sample_vllm

        results = [(token_ids, stop, None) for token_ids, stop in sample_vllm(model, prompt_ids, spec, stop_ids)]
    else:
        results = _sample_hf(model, prompt_ids, spec, stop_ids, pad_id, backend == "hf-compiled", progress)
    texts = tokenizer.batch_decode([token_ids for token_ids, _, _ in results], skip_special_tokens=True)
    return [Sample(item.prompt_id, text, token_ids, len(token_ids), stop is None, stop, logp)
            for item, text, (token_ids, stop, logp) in zip(prompts, texts, results)]
