"""The ``vllm`` sampling backend (optional extra; CUDA only), behind the same interface as the sampler.

``vllm_usable(model)`` says whether it can run for a loaded model (vLLM installed, model on CUDA, weights in
a local folder); ``sample_vllm`` returns (token ids without the stop token, truncated) per prompt.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from posweep.config import SamplingSpec


def vllm_usable(model) -> bool:
    folder = Path(getattr(model.config, "_name_or_path", "") or "")
    return importlib.util.find_spec("vllm") is not None and model.device.type == "cuda" and folder.is_dir()


def sample_vllm(model, tokenizer, prompt_ids: list[list[int]], spec: SamplingSpec,
                 gpu_memory_utilization: float = 0.5) -> list[tuple[list[int], bool]]:
    """(token ids, truncated) per prompt, with vLLM. vLLM loads the weights again from the model's folder
    (it cannot share the torch module), so the folder must hold the weights of ``model``."""
    from vllm import LLM, SamplingParams

    folder = str(model.config._name_or_path)
    eos_id = tokenizer.eos_token_id
    engine = LLM(model=folder, tokenizer=folder, dtype=str(model.dtype).removeprefix("torch."), seed=spec.seed,
                 gpu_memory_utilization=gpu_memory_utilization)
    params = SamplingParams(temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens,
                            stop_token_ids=[eos_id], seed=spec.seed)
    outputs = engine.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params)
    results = []
    for output in outputs:
        completion = output.outputs[0]
        token_ids = list(completion.token_ids)
        if token_ids and token_ids[-1] == eos_id:
            token_ids = token_ids[:-1]
        results.append((token_ids, completion.finish_reason == "length"))
    del engine
    torch.cuda.empty_cache()
    return results
