"""The baseline every run of a sweep is compared with, computed once.

The SFT model's samples and their scores, and the scores of the dataset's chosen responses, are the same
for every run, so they are computed once per (SFT weights, prompts, judge, sampling incl. the resolved
backend) and cached under ``$POSWEEP_CACHE/baselines/<key>/`` (docs/DESIGN.md section 5). Columns:
``BASELINE_COLUMNS``. A sweep's chosen SFT run has already sampled and scored exactly this during its own
evaluation, so ``baseline_from_run`` turns that run's per-sample table into the baseline instead of
sampling the SFT model a second time. The chosen responses' scores come from their own cache
(``scoring.cached_chosen_scores``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from posweep.config import SamplingSpec, cache_root, stable_hash
from posweep.data import PromptItem
from posweep.data.layouts import check_unique_ids
from posweep.evaluation.scoring import cached_chosen_scores, prompts_fingerprint, score_checked
from posweep.generation import resolved, sample_responses
from posweep.io import compute_once, write_atomic_json, write_atomic_parquet
from posweep.models import load_policy, model_fingerprint

__all__ = ["BASELINE_COLUMNS", "Baseline", "baseline_from_run", "baseline_key", "check_prompt_ids",
           "compute_baseline", "get_baseline", "prompts_fingerprint", "stop_ids_of", "token_lists"]


def check_prompt_ids(prompts: list[PromptItem]) -> None:
    """Per-prompt results are keyed by prompt id: a repeated one is an error."""
    check_unique_ids([item.prompt_id for item in prompts], "test prompts", "prompt id")


BASELINE_COLUMNS = ["prompt_id", "response", "token_ids", "length", "truncated", "stop_token_id", "sft_score",
                    "chosen_score"]


def token_lists(values) -> list[list[int]]:
    """A parquet list column (numpy arrays) as plain lists of ints."""
    return [[int(t) for t in ids] for ids in values]


def stop_ids_of(values) -> list[int | None]:
    """A nullable stop-token column as ints, None where the sample was truncated."""
    return [None if pd.isna(v) else int(v) for v in values]


@dataclass
class Baseline:
    """The SFT model's samples with their scores, and the chosen responses' scores, one row per prompt
    (``BASELINE_COLUMNS``)."""

    key: str
    samples: pd.DataFrame

    def aligned(self, prompts: list[PromptItem]) -> pd.DataFrame:
        """Rows in the order of ``prompts``; an error names a prompt the baseline does not have."""
        by_id = self.samples.set_index("prompt_id", drop=False)
        missing = [item.prompt_id for item in prompts if item.prompt_id not in by_id.index]
        if missing:
            raise KeyError(f"baseline {self.key} has no sample for prompt {missing[0]!r} ({len(missing)} missing)")
        return by_id.loc[[item.prompt_id for item in prompts]].reset_index(drop=True)


def baseline_key(sft_fingerprint: str, prompts: list[PromptItem], judge, sampling: SamplingSpec) -> str:
    """The cache key: SFT weights, prompts, judge, and the sampling spec with its backend resolved."""
    return stable_hash({"sft": sft_fingerprint, "prompts": prompts_fingerprint(prompts),
                        "judge": judge.fingerprint, "sampling": resolved(sampling).key()})


def _table(prompts: list[PromptItem], responses, token_ids, stops, sft_scores, chosen_scores) -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": [item.prompt_id for item in prompts],
        "response": list(responses),
        "token_ids": list(token_ids),
        "length": [len(ids) for ids in token_ids],
        "truncated": [stop is None for stop in stops],
        "stop_token_id": pd.array(list(stops), dtype="Int64"),
        "sft_score": sft_scores,
        "chosen_score": chosen_scores,
    })[BASELINE_COLUMNS]


def compute_baseline(sft_model, sft_tokenizer, prompts: list[PromptItem], judge, sampling: SamplingSpec,
                     key: str = "", progress: bool = True) -> Baseline:
    """Sample the SFT model once per prompt and score the samples; chosen scores from their cache."""
    samples = sample_responses(sft_model, sft_tokenizer, prompts, sampling, progress=progress)
    responses, truncated = [s.text for s in samples], [s.truncated for s in samples]
    return Baseline(key, _table(prompts, responses, [s.token_ids for s in samples],
                                [s.stop_token_id for s in samples],
                                score_checked(judge, prompts, responses, truncated, "SFT sample"),
                                cached_chosen_scores(judge, prompts)))


def _path(key: str) -> Path:
    return cache_root() / "baselines" / key / "samples.parquet"


def _read(key: str) -> Baseline | None:
    path = _path(key)
    if not path.exists():
        return None
    table = pd.read_parquet(path)
    if not set(BASELINE_COLUMNS) <= set(table.columns):  # written by an older posweep: recompute
        return None
    table["token_ids"] = token_lists(table["token_ids"])
    return Baseline(key, table[BASELINE_COLUMNS])


def _store(baseline: Baseline, info: dict) -> None:
    path = _path(baseline.key)
    write_atomic_parquet(pa.Table.from_pandas(baseline.samples, preserve_index=False), path)
    write_atomic_json(info, path.parent / "info.json")


def _info(sft_spec: str, judge, sampling: SamplingSpec, n: int, source: str) -> dict:
    return {"sft": sft_spec, "judge": judge.name, "judge_fingerprint": judge.fingerprint,
            "judge_is_stand_in": judge.is_stand_in, "sampling": resolved(sampling).model_dump(), "n_prompts": n,
            "source": source}


def get_baseline(sft_model_spec: str, prompts: list[PromptItem], judge, sampling: SamplingSpec,
                 sft_model: tuple | Callable[[], tuple] | None = None, progress: bool = True) -> Baseline:
    """The cached baseline for (SFT weights, prompts, judge, sampling), computed on first use (by one
    process: another that misses it meanwhile waits, then reads it).

    ``sft_model``: the SFT model already loaded, as ``(model, tokenizer)`` or a function returning it (called
    only on a cache miss), to avoid loading it again. It must hold the weights the spec names: the cache is
    keyed by the spec's fingerprint."""
    check_prompt_ids(prompts)
    key = baseline_key(model_fingerprint(sft_model_spec), prompts, judge, sampling)

    def compute() -> Baseline:
        loaded = sft_model() if callable(sft_model) else sft_model
        model, tokenizer = loaded if loaded is not None else load_policy(sft_model_spec)
        baseline = compute_baseline(model, tokenizer, prompts, judge, resolved(sampling), key=key, progress=progress)
        _store(baseline, _info(sft_model_spec, judge, sampling, len(prompts), "sampled"))
        return baseline

    # The sweep's driver may be sampling it while a worker's run reaches its evaluation: that run waits.
    return compute_once(_path(key), lambda: _read(key), compute)


def baseline_from_run(sft_spec: str, run_dir: str | Path, prompts: list[PromptItem], judge,
                      sampling: SamplingSpec) -> Baseline | None:
    """The baseline of ``sft_spec`` taken from the evaluation of the run that produced it (its
    ``samples.parquet``, written with the token ids), and stored in the cache under the key ``get_baseline``
    uses, so every later lookup of the same weights finds it without sampling. None when that table cannot
    serve: written without token ids (an older posweep) or missing a prompt."""
    check_prompt_ids(prompts)
    key = baseline_key(model_fingerprint(sft_spec), prompts, judge, sampling)
    cached = _read(key)
    if cached is not None:
        return cached
    path = Path(run_dir) / "samples.parquet"
    if not path.exists():
        return None
    table = pd.read_parquet(path)
    needed = {"prompt_id", "response", "token_ids", "stop_token_id", "score", "chosen_score"}
    if not needed <= set(table.columns):
        return None
    table = table.set_index("prompt_id", drop=False)
    if any(item.prompt_id not in table.index for item in prompts):
        return None
    table = table.loc[[item.prompt_id for item in prompts]]
    baseline = Baseline(key, _table(prompts, table["response"], token_lists(table["token_ids"]),
                                    stop_ids_of(table["stop_token_id"]), table["score"].to_numpy(float),
                                    table["chosen_score"].to_numpy(float)))
    _store(baseline, _info(sft_spec, judge, sampling, len(prompts), f"evaluation of {path.parent}"))
    return baseline
