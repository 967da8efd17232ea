"""Log-probs of sampled responses under a model, at the sampling temperature, for the KL against SFT.

The KL of a run is estimated on its own samples y ~ π_θ,T (docs/DESIGN.md section 3):

    kl(y) = Σ_t [log π_θ,T,p(y_t | x, y_<t) − log π_SFT,T(y_t | x, y_<t)],   π_T = softmax(logits / T)

over the exact sampled token ids (never re-tokenized text), the stop token that ended the sample included
(stopping is part of the sample; a truncated sample has none). The policy side is the distribution the
sample was drawn from: temperature T and, when top-p < 1, renormalised over the policy's nucleus
(``generation.nucleus_logits``, the sampler's own rule). The SFT side is temperature-scaled but not
nucleus-restricted, since a sampled token outside the SFT's nucleus would make the KL infinite. So the mean
over prompts is an unbiased estimate of KL(π_θ,T,p ‖ π_SFT,T) per prompt, a true KL (≥ 0 in expectation);
with top-p = 1 it is KL(π_θ,T ‖ π_SFT,T), the divergence between the distributions actually sampled.

Temperature 0 (greedy) samples a point mass, whose KL against any smoothed distribution is not a useful
number; there both log-probs are taken at temperature 1 and the value is the log-likelihood ratio of the
greedy response (``kl_temperature`` says which temperature a spec uses).

The log-probs are computed the way ``training.logprobs`` does (one backbone pass, the LM head only on the
positions that predict a response token, in chunks), with logits / T.
"""

from __future__ import annotations

import numpy as np
import torch

from posweep.config import SamplingSpec
from posweep.data import PromptItem, encode_prompt
from posweep.generation import nucleus_logits
from posweep.training.logprobs import backbone_and_head, pack, response_target_mask


def kl_temperature(spec: SamplingSpec) -> float:
    """The temperature the KL's log-probs use: the sampling temperature, or 1 for greedy sampling."""
    return spec.temperature if spec.temperature > 0 else 1.0


def _check_logits_head(model) -> None:
    for name in ("logit_scale", "logits_scaling"):
        # Cohere / Granite-style heads rescale logits after the LM head, each its own way; rather than
        # return silently wrong log-probs, refuse.
        if getattr(model.config, name, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"{type(model).__name__}: config.{name} rescales logits after the LM head; "
                                      "sampled_logps does not reproduce that")


def tempered_response_logps(model, batch, temperature: float, top_p: float = 1.0,
                            chunk_size: int = 256) -> torch.Tensor:
    """Per row of a ``training.logprobs.PackedBatch``: Σ over response tokens of log softmax(logits / T),
    restricted to the top-p nucleus when ``top_p`` < 1 (float32, [rows])."""
    _check_logits_head(model)
    body, head = backbone_and_head(model)
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    row_index, position = response_target_mask(batch).nonzero(as_tuple=True)
    selected, targets = hidden[row_index, position], batch.input_ids[row_index, position + 1]
    softcap = getattr(model.config, "final_logit_softcapping", None)
    pieces = []
    for start in range(0, selected.shape[0], chunk_size):
        logits = head(selected[start : start + chunk_size]).float()
        if softcap:  # Gemma-style capping comes before sampling's temperature
            logits = torch.tanh(logits / softcap) * softcap
        logits = nucleus_logits(logits / temperature, top_p)
        pieces.append(logits.log_softmax(-1).gather(-1, targets[start : start + chunk_size, None]).squeeze(-1))
    token_logps = torch.cat(pieces) if pieces else selected.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(batch.input_ids.shape[0], dtype=torch.float32, device=token_logps.device)
    return sums.index_add(0, row_index, token_logps)


def sampled_logps(model, tokenizer, prompts: list[PromptItem], token_ids: list[list[int]],
                  stop_token_ids: list[int | None], temperature: float = 1.0, top_p: float = 1.0,
                  batch_size: int = 8) -> np.ndarray:
    """Σ log π_T(y_t | x, y_<t) of each sampled response under ``model``, its stop token included when it has
    one (``stop_token_ids[i]``; None for a truncated sample). ``top_p`` < 1 renormalises over ``model``'s
    own nucleus (pass it for the policy that sampled, not for SFT; see the module docstring).

    Rows are batched by total length (less padding); prompts are encoded exactly as the sampler did."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids = [encode_prompt(tokenizer, item.prompt) for item in prompts]
    response_ids = [list(ids) + ([] if stop is None else [int(stop)]) for ids, stop in zip(token_ids, stop_token_ids)]
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    logps = np.zeros(len(prompts))
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = pack([prompt_ids[i] for i in rows], [response_ids[i] for i in rows], pad_id).to(model.device)
            logps[rows] = tempered_response_logps(model, batch, temperature, top_p).double().cpu().numpy()
    return logps
