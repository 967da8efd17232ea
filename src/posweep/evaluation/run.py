"""Evaluate one run: sample, score, measure KL against the SFT model, aggregate with bootstrap intervals.

In: the run's model (a spec or an already loaded ``(model, tokenizer)``), the SFT model, test prompts, a
judge (``posweep.judges`` protocol) and a ``SamplingSpec``. Out: ``samples.parquet`` (one row per prompt,
columns ``SAMPLE_COLUMNS``) and ``metrics.json`` (keys of ``summarize``) in the run's folder, both written
atomically; the metrics dict is returned.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from posweep.config import SamplingSpec
from posweep.data import PromptItem
from posweep.evaluation.baseline import Baseline, check_prompt_ids, get_baseline
from posweep.evaluation.kl import sampled_logps
from posweep.evaluation.scoring import score_checked
from posweep.generation import sample_responses
from posweep.io import write_atomic_json, write_atomic_parquet
from posweep.metrics import METRICS, bootstrap_ci, json_safe, nanmean, win_rate
from posweep.models import load_policy

SAMPLE_COLUMNS = ["prompt_id", "response", "length", "truncated", "score", "chosen_score", "sft_score",
                  "policy_logp", "sft_logp", "kl", "ln_kl", "win_vs_chosen", "win_vs_sft"]


def summarize(samples: pd.DataFrame) -> dict[str, Any]:
    """The metrics.json of a per-sample table: ``n``; for each of ``posweep.metrics.METRICS`` the mean (NaNs
    ignored) and ``<name>_ci`` = [low, high] (95% bootstrap); ``truncated_share``, ``empty_share``
    (responses that are empty or whitespace only). Undefined values are NaN."""
    metrics: dict[str, Any] = {"n": len(samples)}
    for name, column in METRICS.items():
        values = samples[column].to_numpy(dtype=float)
        metrics[name] = nanmean(values)
        metrics[f"{name}_ci"] = list(bootstrap_ci(values))
    metrics["truncated_share"] = float(samples["truncated"].mean()) if len(samples) else math.nan
    metrics["empty_share"] = float((samples["response"].str.strip() == "").mean()) if len(samples) else math.nan
    return metrics


def evaluate_run(model: str | tuple, sft_spec: str, prompts: list[PromptItem], judge, sampling: SamplingSpec,
                 out_dir: str | Path, baseline: Baseline | None = None, sft_model: tuple | None = None,
                 logp_batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """Sample the run's responses, score them, compare with the baseline, write the per-sample table and
    the metrics to ``out_dir``; return the metrics.

    ``model``: a model spec or a loaded ``(model, tokenizer)``. ``sft_model``: the SFT model already
    loaded (else it is loaded from ``sft_spec`` onto the run model's device, in its dtype)."""
    check_prompt_ids(prompts)
    policy, tokenizer = load_policy(model) if isinstance(model, str) else model
    if sft_model is None and model == sft_spec:
        sft_model = (policy, tokenizer)  # evaluating the SFT model itself: one copy is enough
    if sft_model is None:
        sft_model = load_policy(sft_spec, dtype=policy.dtype, device=policy.device)
    sft, sft_tokenizer = sft_model
    if sft_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"the run's tokenizer differs from the SFT model's ({sft_spec}): KL needs shared token ids")
    baseline = baseline or get_baseline(sft_spec, prompts, judge, sampling, sft_model=sft_model, progress=progress)
    reference = baseline.aligned(prompts)

    samples = sample_responses(policy, tokenizer, prompts, sampling, progress=progress)
    responses, truncated = [s.text for s in samples], [s.truncated for s in samples]
    token_ids = [s.token_ids for s in samples]
    scores = score_checked(judge, prompts, responses, truncated, "sample")
    policy_logp = sampled_logps(policy, tokenizer, prompts, token_ids, truncated, logp_batch_size)
    sft_logp = sampled_logps(sft, tokenizer, prompts, token_ids, truncated, logp_batch_size)

    lengths = np.array([s.length for s in samples])
    kl = policy_logp - sft_logp
    chosen_score = reference["chosen_score"].to_numpy(dtype=float)
    sft_score = reference["sft_score"].to_numpy(dtype=float)
    table = pd.DataFrame({
        "prompt_id": [item.prompt_id for item in prompts],
        "response": responses,
        "length": lengths,
        "truncated": truncated,
        "score": scores,
        "chosen_score": chosen_score,
        "sft_score": sft_score,
        "policy_logp": policy_logp,
        "sft_logp": sft_logp,
        "kl": kl,
        "ln_kl": kl / np.maximum(lengths, 1),
        "win_vs_chosen": win_rate(scores, chosen_score),
        "win_vs_sft": win_rate(scores, sft_score),
    })[SAMPLE_COLUMNS]
    metrics = summarize(table)
    out_dir = Path(out_dir)
    write_atomic_parquet(pa.Table.from_pandas(table, preserve_index=False), out_dir / "samples.parquet")
    write_atomic_json(json_safe(metrics), out_dir / "metrics.json")
    return metrics
