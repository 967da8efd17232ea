"""The ``vllm`` sampling backend (optional extra; CUDA only), behind the same interface as the ``hf`` one.

In: a loaded model (its weights in a local folder, on CUDA), prompt token rows, a ``SamplingSpec`` and the
stop token ids (``generation.stops``). Out: per prompt, (token ids without the stop token, the stop token or
None when cut at ``max_new_tokens``), exactly what the ``hf`` backend returns.

The same stop rule as ``hf``: vLLM is given every stop id (``stop_token_ids``) and its outputs are cut with
``split_at_stop``. Each prompt gets its own seed (``prompt_seed``: the spec's seed and the prompt's position),
so a run and its SFT baseline draw the same random numbers for the same prompt here too. The weights are
loaded once per call (vLLM cannot share the torch module, so it reads the model's folder).
"""

from __future__ import annotations

from pathlib import Path

import torch

from posweep.config import SamplingSpec
from posweep.generation.stops import split_at_stop


def prompt_seed(seed: int, index: int) -> int:
    """The vLLM seed of the prompt at ``index``: depends only on the spec's seed and the position."""
    return seed * 1_000_003 + index


def sampling_params(spec: SamplingSpec, stop_ids: list[int], index: int) -> dict:
    """The ``vllm.SamplingParams`` keyword arguments of one prompt: the spec's settings (vLLM's default top-k
    is off, as in the hf backend), every stop id, and the prompt's own seed."""
    return {"temperature": spec.temperature, "top_p": spec.top_p, "max_tokens": spec.max_new_tokens,
            "stop_token_ids": list(stop_ids), "seed": prompt_seed(spec.seed, index)}


def completion_result(token_ids, finish_reason: str | None, stop_reason, stop_ids: list[int]) -> tuple[list[int], int | None]:
    """(token ids before the stop token, the stop token or None) from one vLLM completion. vLLM keeps the
    stop token in ``token_ids``; should a version drop it, ``stop_reason`` (the matched id) still says."""
    tokens, stop = split_at_stop(token_ids, stop_ids)
    if stop is None and finish_reason == "stop" and isinstance(stop_reason, int) and stop_reason in stop_ids:
        stop = stop_reason
    return tokens, stop


def model_folder(model) -> str:
    """The local folder vLLM loads the weights from; an error when the model is not on CUDA or not saved."""
    folder = Path(getattr(model.config, "_name_or_path", "") or "")
    if model.device.type != "cuda":
        raise ValueError(f"the vllm sampling backend needs the model on CUDA, not {model.device}; use backend hf")
    if not folder.is_dir():
        raise ValueError(f"the vllm sampling backend loads the weights from a local folder; {folder} is not one "
                         "(save the model with save_pretrained, or use backend hf)")
    return str(folder)


def sample_vllm(model, prompt_ids: list[list[int]], spec: SamplingSpec, stop_ids: list[int],
                gpu_memory_utilization: float = 0.5) -> list[tuple[list[int], int | None]]:
    """(token ids, stop token or None) per prompt, with vLLM; the folder must hold the weights of ``model``."""
    from vllm import LLM, SamplingParams

    folder = model_folder(model)
    engine = LLM(model=folder, tokenizer=folder, dtype=str(model.dtype).removeprefix("torch."), seed=spec.seed,
                 gpu_memory_utilization=gpu_memory_utilization)
    params = [SamplingParams(**sampling_params(spec, stop_ids, i)) for i in range(len(prompt_ids))]
    outputs = engine.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params)
    results = []
    for output in outputs:
        completion = output.outputs[0]
        results.append(completion_result(completion.token_ids, completion.finish_reason,
                                         getattr(completion, "stop_reason", None), stop_ids))
    del engine
    torch.cuda.empty_cache()
    return results
