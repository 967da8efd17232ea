"""Log-probs of sampled responses under a model, for the KL of a run against the SFT model.

KL is estimated on the run's own sample y: Σ_t log πθ(y_t|x, y_<t) − log π_SFT(y_t|x, y_<t), over the
exact sampled token ids (never re-tokenized text), docs/DESIGN.md section 3. The eos that ended a sample is
one of those tokens — the decision to stop is part of the sample — so it is counted in both log-probs;
``length`` excludes it. A truncated sample has no eos.
"""

from __future__ import annotations

import numpy as np
import torch

from posweep.data import PromptItem, encode_prompt
from posweep.training.logprobs import pack, response_logps


def sampled_logps(model, tokenizer, prompts: list[PromptItem], token_ids: list[list[int]], truncated: list[bool],
                  batch_size: int = 8) -> np.ndarray:
    """Σ log π(y_t | x, y_<t) of each sampled response under ``model``, its eos included when it has one.

    Rows are batched by total length (less padding); prompts are encoded exactly as the sampler did."""
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    prompt_ids = [encode_prompt(tokenizer, item.prompt) for item in prompts]
    response_ids = [list(ids) + ([] if cut else [eos_id]) for ids, cut in zip(token_ids, truncated)]
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    logps = np.zeros(len(prompts))
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = pack([prompt_ids[i] for i in rows], [response_ids[i] for i in rows], pad_id).to(model.device)
            sums, _ = response_logps(model, batch)
            logps[rows] = sums.double().cpu().numpy()
    return logps
