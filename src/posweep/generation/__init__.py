"""Generation: sample one response per prompt for evaluation (docs/DESIGN.md section 3).

In: a loaded causal LM and tokenizer, ``list[PromptItem]``, a ``SamplingSpec``. Out: ``list[Sample]`` (text,
sampled token ids, length, truncated) in the order of the prompts.

- ``sampler``: the ``hf`` backend (batched KV-cache decoding that drops finished rows) and ``sample_responses``.
- ``vllm_backend``: the optional ``vllm`` backend.
"""

from posweep.generation.sampler import (
    Sample,
    batch_seed,
    cut_at_eos,
    decode_batch,
    left_pad,
    length_sorted_batches,
    next_tokens,
    sample_responses,
)

__all__ = ["Sample", "batch_seed", "cut_at_eos", "decode_batch", "left_pad", "length_sorted_batches",
           "next_tokens", "sample_responses"]
