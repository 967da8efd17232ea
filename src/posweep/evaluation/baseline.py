"""The baseline every run of a sweep is compared with, computed once.

The SFT model's samples and their scores, and the scores of the dataset's chosen responses, are the same
for every run, so they are computed once per (SFT weights, prompts, judge, sampling) and cached under
``$POSWEEP_CACHE/baselines/<key>/`` (docs/DESIGN.md section 5). Columns: ``BASELINE_COLUMNS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from posweep.config import SamplingSpec, cache_root, stable_hash
from posweep.data import PromptItem
from posweep.data.layouts import check_unique_ids
from posweep.evaluation.scoring import score_checked, score_chosen
from posweep.generation import sample_responses
from posweep.io import write_atomic_json, write_atomic_parquet
from posweep.models import load_policy, model_fingerprint


def check_prompt_ids(prompts: list[PromptItem]) -> None:
    """Per-prompt results are keyed by prompt id: a repeated one is an error."""
    check_unique_ids([item.prompt_id for item in prompts], "test prompts", "prompt id")


BASELINE_COLUMNS = ["prompt_id", "response", "token_ids", "length", "truncated", "sft_score", "chosen_score"]


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


def prompts_fingerprint(prompts: list[PromptItem]) -> str:
    return stable_hash([[item.prompt_id, item.prompt, item.chosen, item.meta] for item in prompts])


def baseline_key(sft_fingerprint: str, prompts: list[PromptItem], judge, sampling: SamplingSpec) -> str:
    return stable_hash({"sft": sft_fingerprint, "prompts": prompts_fingerprint(prompts),
                        "judge": judge.fingerprint, "sampling": sampling.key()})


def compute_baseline(sft_model, sft_tokenizer, prompts: list[PromptItem], judge, sampling: SamplingSpec,
                     key: str = "", progress: bool = True) -> Baseline:
    samples = sample_responses(sft_model, sft_tokenizer, prompts, sampling, progress=progress)
    responses, truncated = [s.text for s in samples], [s.truncated for s in samples]
    table = pd.DataFrame({
        "prompt_id": [item.prompt_id for item in prompts],
        "response": responses,
        "token_ids": [s.token_ids for s in samples],
        "length": [s.length for s in samples],
        "truncated": truncated,
        "sft_score": score_checked(judge, prompts, responses, truncated, "SFT sample"),
        "chosen_score": score_chosen(judge, prompts),
    })
    return Baseline(key, table[BASELINE_COLUMNS])


def get_baseline(sft_model_spec: str, prompts: list[PromptItem], judge, sampling: SamplingSpec,
                 sft_model: tuple | None = None, progress: bool = True) -> Baseline:
    """The cached baseline for (SFT weights, prompts, judge, sampling), computed on first use.

    ``sft_model``: an already loaded ``(model, tokenizer)`` of ``sft_model_spec``, to avoid loading it
    again (it must hold the weights the spec names: the cache is keyed by the spec's fingerprint)."""
    check_prompt_ids(prompts)
    key = baseline_key(model_fingerprint(sft_model_spec), prompts, judge, sampling)
    path = cache_root() / "baselines" / key / "samples.parquet"
    if path.exists():
        table = pd.read_parquet(path)
        table["token_ids"] = table["token_ids"].map(lambda ids: [int(t) for t in ids])
        return Baseline(key, table)
    model, tokenizer = sft_model if sft_model is not None else load_policy(sft_model_spec)
    baseline = compute_baseline(model, tokenizer, prompts, judge, sampling, key=key, progress=progress)
    write_atomic_parquet(pa.Table.from_pandas(baseline.samples, preserve_index=False), path)
    write_atomic_json({"sft": sft_model_spec, "judge": judge.name, "judge_fingerprint": judge.fingerprint,
                       "judge_is_stand_in": judge.is_stand_in, "sampling": sampling.model_dump(),
                       "n_prompts": len(prompts)}, path.parent / "info.json")
    return baseline
