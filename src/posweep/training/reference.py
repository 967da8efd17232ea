"""Reference log-probs of every training pair, computed once and shared by a whole sweep.

In: a reference model spec (the chosen SFT checkpoint in a sweep) and ``TokenizedPairs``. Out:
``ReferenceLogps`` (summed chosen / rejected response log-probs by pair index), cached on disk under
``$POSWEEP_CACHE/reference/`` keyed by (reference weights, tokenized data, mixed precision, weight dtype
when not float32); while the file exists no reference model is loaded at all (docs/DESIGN.md section 5).
The trainer may hand in the policy it has just loaded (it *is* the reference at step 0), so a cache miss
costs no second copy.

The key does not include the row layout (packed rows with shared prompts, or padded rows;
``posweep.training.packing``), nor the batch size, on purpose: both change only how the same function of
(weights, data, precision) is computed. Packed and padded log-probs agree to float rounding (~1e-6 in
float32, which tests/training/test_packing.py checks), the same size of difference that a different batch
composition already makes, so a cache written with either layout is valid for a run using the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from posweep.config import cache_root
from posweep.data import TokenizedPairs
from posweep.io import compute_once, write_atomic_torch
from posweep.models import load_policy, model_fingerprint
from posweep.progress import progress_bar
from posweep.training.logprobs import ResponseLogps, pair_logps


@dataclass
class ReferenceLogps:
    """Summed response log-probs of every training pair under the reference model, by pair index.

    Computed under the same mixed precision as the policy's forward pass, so that at step 0 (policy ==
    reference) every implicit reward is exactly 0 rather than bf16 rounding noise.
    """

    chosen: torch.Tensor  # [pairs] float32
    rejected: torch.Tensor  # [pairs] float32
    chosen_tail: torch.Tensor  # [pairs]: beyond the pair's shorter response (LD-DPO; every α shares them)
    rejected_tail: torch.Tensor  # [pairs]
    reference_fingerprint: str
    data_fingerprint: str
    mixed_precision: str = "no"
    forward_passes: int = 0  # 0 when read from the cache
    model_dtype: str = "float32"  # the weights' dtype the log-probs were computed with


CACHE_FORMAT = 2  # 2: with the LD-DPO tails


def reference_cache_path(reference_fingerprint: str, data_fingerprint: str, mixed_precision: str = "no",
                         model_dtype: str = "float32") -> Path:
    precision = mixed_precision if model_dtype == "float32" else f"{mixed_precision}-{model_dtype}"
    return cache_root() / "reference" / f"{reference_fingerprint}-{data_fingerprint}-{precision}-v{CACHE_FORMAT}.pt"


def _autocast(device: torch.device, mixed_precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def compute_pair_logps(model, pairs: TokenizedPairs, pad_id: int, batch_size: int = 16, progress: bool = True,
                       mixed_precision: str = "no", packing: bool = True) -> tuple[dict[str, torch.Tensor], int]:
    """{"chosen", "rejected", "chosen_tail", "rejected_tail"}: per pair, the summed log-probs under ``model``
    of each response and of its part beyond the pair's shorter response; also the number of forward passes.

    ``packing``: pack each batch's pairs with shared prompts where the model supports it (else padded rows)."""
    model.eval()
    device = next(model.parameters()).device
    passes = 0
    # Longest first so the first batch shows the peak memory, and similar lengths share a batch.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs.prompt_ids[i]) + max(len(pairs.chosen_ids[i]), len(pairs.rejected_ids[i]))))
    values = torch.zeros(len(pairs), 4)
    scorer = ResponseLogps(model, packing=packing)
    with progress_bar(progress) as bar:
        task = bar.add_task("reference log-probs", total=len(pairs), info="")
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            with _autocast(device, mixed_precision):
                sums, _, extras = pair_logps(scorer, pairs, index, pad_id, device, scorer.packing, tails=True)
            n = len(index)
            values[index] = torch.stack([sums[:n], sums[n:], extras["tail"][:n], extras["tail"][n:]], dim=1).cpu()
            passes += 1
            bar.update(task, advance=len(index))
    names = ("chosen", "rejected", "chosen_tail", "rejected_tail")
    return {name: values[:, i].contiguous() for i, name in enumerate(names)}, passes


def get_reference_logps(reference_spec: str, pairs: TokenizedPairs, batch_size: int = 16, device: str | None = None,
                        progress: bool = True, mixed_precision: str = "no", packing: bool = True,
                        model_dtype: str = "float32", model=None) -> ReferenceLogps:
    """Reference log-probs of ``pairs`` under ``reference_spec``: read from the cache, or computed once.

    The cache key is (reference weights, tokenized data, precision, weight dtype), not the layout (module
    docstring); while the file exists, no reference model is loaded at all. ``packing``: as
    ``OptimConfig.packing``. ``model``: ``reference_spec`` already loaded in ``model_dtype`` (the trainer's
    policy before its first step), used instead of loading a copy.
    """
    reference_fingerprint = model_fingerprint(reference_spec)
    path = reference_cache_path(reference_fingerprint, pairs.fingerprint, mixed_precision, model_dtype)
    described = {"reference_fingerprint": reference_fingerprint, "data_fingerprint": pairs.fingerprint,
                 "mixed_precision": mixed_precision, "model_dtype": model_dtype}

    def read() -> ReferenceLogps | None:
        return ReferenceLogps(**torch.load(path, weights_only=True), **described) if path.exists() else None

    def compute() -> ReferenceLogps:
        loaded = model
        if loaded is None:
            loaded, tokenizer = load_policy(reference_spec, dtype=model_dtype, device=device)
            pad_id = tokenizer.pad_token_id
        else:
            pad_id = loaded.config.pad_token_id  # any id: masks come from lengths, never from the pad id
        values, passes = compute_pair_logps(loaded, pairs, pad_id, batch_size, progress, mixed_precision, packing)
        write_atomic_torch(values, path)
        return ReferenceLogps(**values, **described, forward_passes=passes)

    return compute_once(path, read, compute)
