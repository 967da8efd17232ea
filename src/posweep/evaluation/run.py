"""Evaluate one run: sample, score, measure KL against the SFT model, aggregate with bootstrap intervals.

In: the run's model (a spec or an already loaded ``(model, tokenizer)``), the SFT model, test prompts, a
judge (``posweep.judges`` protocol), a ``SamplingSpec`` and, optionally, the selection split's prompt ids.
Out: ``samples.parquet`` (one row per prompt, columns ``SAMPLE_COLUMNS``, plus ``TOKEN_COLUMNS`` when asked:
what a baseline is made of) and ``metrics.json`` (keys of ``summarize``, over the held-out prompts when
there is a split, plus ``selection_*``) in the run's folder, both written atomically; the metrics dict is
returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from posweep.config import SamplingSpec
from posweep.data import PromptItem
from posweep.evaluation.baseline import Baseline, check_prompt_ids, get_baseline
from posweep.evaluation.kl import kl_temperature, sampled_logps
from posweep.evaluation.scoring import score_checked
from posweep.evaluation.selection import split_labels, split_metrics
from posweep.generation import resolved, sample_responses
from posweep.io import write_atomic_json, write_atomic_parquet
from posweep.metrics import METRICS, bootstrap_ci, json_safe, nanmean, win_rate
from posweep.models import load_policy

SAMPLE_COLUMNS = ["prompt_id", "split", "response", "length", "truncated", "score", "chosen_score", "sft_score",
                  "policy_logp", "sft_logp", "kl", "ln_kl", "win_vs_chosen", "win_vs_sft"]
TOKEN_COLUMNS = ["token_ids", "stop_token_id"]  # kept for runs whose samples may become a baseline (SFT runs)


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
                 out_dir: str | Path, baseline: Baseline | None = None,
                 sft_model: tuple | Callable[[], tuple] | None = None, selection: set[str] | None = None,
                 keep_token_ids: bool = False, logp_batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """Sample the run's responses, score them, compare with the baseline, write the per-sample table and
    the metrics to ``out_dir``; return the metrics.

    ``model``: a model spec or a loaded ``(model, tokenizer)``. ``sft_model``: the SFT model already loaded
    (``(model, tokenizer)`` or a function returning it, on the run model's device), else it is loaded from
    ``sft_spec`` onto the run model's device, in its dtype. ``selection``: prompt ids choices are made on
    (``evaluation.selection``); the reported metrics then come from the others. ``keep_token_ids``: also
    write ``TOKEN_COLUMNS``, so that this run's samples can serve as a baseline (``baseline_from_run``)."""
    check_prompt_ids(prompts)
    sampling = resolved(sampling)
    policy, tokenizer = load_policy(model) if isinstance(model, str) else model
    if sft_model is None and model == sft_spec:
        sft_model = (policy, tokenizer)  # evaluating the SFT model itself: one copy is enough
    if callable(sft_model):
        sft_model = sft_model()
    if sft_model is None:
        sft_model = load_policy(sft_spec, dtype=policy.dtype, device=policy.device)
    sft, sft_tokenizer = sft_model
    if sft_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"the run's tokenizer differs from the SFT model's ({sft_spec}): KL needs shared token ids")
    baseline = baseline or get_baseline(sft_spec, prompts, judge, sampling, sft_model=sft_model, progress=progress)
    reference = baseline.aligned(prompts)

    samples = sample_responses(policy, tokenizer, prompts, sampling, progress=progress)
    responses, truncated = [s.text for s in samples], [s.truncated for s in samples]
    token_ids, stops = [s.token_ids for s in samples], [s.stop_token_id for s in samples]
    scores = score_checked(judge, prompts, responses, truncated, "sample")
    # The distributions the samples came from: temperature T, and the policy's own top-p nucleus
    # (docs/DESIGN.md section 3, evaluation.kl); greedy sampling falls back to temperature 1, no nucleus.
    temperature = kl_temperature(sampling)
    top_p = sampling.top_p if sampling.temperature > 0 else 1.0
    if all(s.logp is not None for s in samples):  # the sampler's own log-probs: no second pass over the policy
        policy_logp = np.array([s.logp for s in samples], dtype=float)
    else:
        policy_logp = sampled_logps(policy, tokenizer, prompts, token_ids, stops, temperature, top_p, logp_batch_size)
    if sft is policy and top_p >= 1.0:  # evaluating the SFT model itself: the same numbers, KL exactly 0
        sft_logp = policy_logp.copy()
    else:
        sft_logp = sampled_logps(sft, tokenizer, prompts, token_ids, stops, temperature, 1.0, logp_batch_size)

    lengths = np.array([s.length for s in samples])
    kl = policy_logp - sft_logp
    chosen_score = reference["chosen_score"].to_numpy(dtype=float)
    sft_score = reference["sft_score"].to_numpy(dtype=float)
    prompt_ids = [item.prompt_id for item in prompts]
    table = pd.DataFrame({
        "prompt_id": prompt_ids,
        "split": split_labels(prompt_ids, selection),
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
    if keep_token_ids:
        table["token_ids"] = token_ids
        table["stop_token_id"] = pd.array(stops, dtype="Int64")
    metrics = split_metrics(table, summarize)
    metrics["kl_temperature"] = temperature
    out_dir = Path(out_dir)
    write_atomic_parquet(pa.Table.from_pandas(table, preserve_index=False), out_dir / "samples.parquet")
    write_atomic_json(json_safe(metrics), out_dir / "metrics.json")
    return metrics
