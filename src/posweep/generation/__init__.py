"""Generation: sample one response per prompt for evaluation (docs/DESIGN.md section 3).

In: a loaded causal LM and tokenizer, ``list[PromptItem]``, a ``SamplingSpec``. Out: ``list[Sample]`` (text,
sampled token ids, length, the stop token that ended it, truncated) in the order of the prompts.

- ``stops``: where a response ends (the model's end-of-turn tokens), one rule for every backend.
- ``decode``: the decode loop of the ``hf`` backends (dynamic cache; static cache + compiled step), the
  top-p nucleus and the per-row draw.
- ``sampler``: ``sample_responses``, batching and seeds, the backend choice.
- ``vllm_backend``: the optional ``vllm`` backend.
"""

from posweep.generation.decode import (
    DynamicEngine,
    StaticEngine,
    decode_batch,
    left_pad,
    next_tokens,
    nucleus_logits,
)
from posweep.generation.sampler import (
    BACKENDS,
    Sample,
    batch_seed,
    length_sorted_batches,
    resolve_backend,
    resolved,
    sample_responses,
)
from posweep.generation.stops import model_stop_token_ids, split_at_stop, stop_token_ids

__all__ = ["BACKENDS", "DynamicEngine", "Sample", "StaticEngine", "batch_seed", "decode_batch", "left_pad",
           "length_sorted_batches", "model_stop_token_ids", "next_tokens", "nucleus_logits", "resolve_backend",
           "resolved", "sample_responses", "split_at_stop", "stop_token_ids"]
