"""What every judge shares: the protocol, loading a judge from its spec, batching and truncation.

A judge ("gold reward model") gives one number per (prompt, response), higher is better. In: a judge spec,
then ``PromptItem`` prompts, response strings and, optionally, whether each response was cut at
``max_new_tokens``. Out: ``list[float]``, one score per response, in the order given.

Specs (``load_judge``; ``JUDGE_KINDS``): ``demo``, ``hf:PATH_OR_ID``, ``oasst:PATH_OR_ID``. Every judge
has a ``fingerprint`` (spec + weights or version) that keys cached scores. Inputs longer than the model's
context are cut from the left: the end of the prompt and the whole response survive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch

from posweep.config import UserError, stable_hash
from posweep.data import PromptItem

JUDGE_KINDS = ("demo", "hf:PATH_OR_ID", "oasst:PATH_OR_ID")


class JudgeError(UserError, ValueError):
    """An unknown judge spec, or a judge model that cannot be found or used."""


def check_judge_spec(spec: str) -> None:
    """Raise ``JudgeError`` naming the spec unless it is ``demo``, ``hf:...`` or ``oasst:...``."""
    kind, _, target = spec.partition(":")
    if spec != "demo" and not (kind in {"hf", "oasst"} and target):
        raise JudgeError(f"unknown judge spec {spec!r}; use {', '.join(JUDGE_KINDS)}")


class Judge(Protocol):
    name: str
    fingerprint: str  # changes whenever the scores could change (spec, weights, judge version)
    is_stand_in: bool  # True for the demo judge: reports must say the "gold" reward is a stand-in

    def score(self, prompts: list[PromptItem], responses: list[str],
              truncated: list[bool] | None = None) -> list[float]: ...


def load_judge(spec: str, device: str | torch.device | None = None, batch_size: int = 8) -> Judge:
    """A judge from its spec: ``demo``, ``hf:PATH_OR_ID`` or ``oasst:PATH_OR_ID``."""
    check_judge_spec(spec)
    if spec == "demo":
        from posweep.judges.demo import DemoJudge

        return DemoJudge(device=device)
    kind, _, target = spec.partition(":")
    if kind == "hf":
        from posweep.judges.hf import load_sequence_classifier_judge

        return load_sequence_classifier_judge(target, device, batch_size)
    from posweep.judges.oasst import load_oasst_judge

    return load_oasst_judge(target, device, batch_size)


def check_inputs(prompts: Sequence[PromptItem], responses: Sequence[str],
                 truncated: Sequence[bool] | None) -> list[bool]:
    """Same lengths everywhere; ``truncated`` defaults to all False."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if truncated is None:
        return [False] * len(responses)
    if len(truncated) != len(responses):
        raise ValueError(f"{len(responses)} responses but {len(truncated)} truncated flags")
    return [bool(t) for t in truncated]


def local_model_dir(path_or_id: str) -> Path:
    """A local folder for a model: the folder itself, or the hub snapshot (cached; offline if it is)."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: not a model folder")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt",
                                                                  "*.model", "*.jinja"]))
    except Exception as error:  # the hub raises many types; the user needs the id and the cause
        raise FileNotFoundError(f"judge model {path_or_id!r}: not a local folder and not downloadable "
                                f"({type(error).__name__}: {error})") from error


def judge_fingerprint(kind: str, folder: Path) -> str:
    """Kind + weights: the same weights give the same fingerprint wherever they are stored."""
    from posweep.models import model_fingerprint

    return stable_hash({"judge": kind, "weights": model_fingerprint(str(folder))})


def context_length(config, tokenizer, fallback: int = 2048) -> int:
    """The longest input the judge can read: its position limit, or the tokenizer's if smaller."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else fallback


def left_truncate(ids: list[int], max_length: int) -> list[int]:
    """Keep the last ``max_length`` tokens: the end of the prompt and the response."""
    return ids[-max_length:] if len(ids) > max_length else ids


def scores_in_batches(rows: list[list[int]], forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      pad_id: int, batch_size: int, device: torch.device) -> list[float]:
    """Run ``forward(input_ids, attention_mask) -> [rows]`` over length-sorted, right-padded batches."""
    scores = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        width = max(len(rows[i]) for i in indices)
        input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            input_ids[row, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
            attention_mask[row, : len(rows[i])] = 1
        with torch.no_grad():
            values = forward(input_ids.to(device), attention_mask.to(device)).float().cpu().tolist()
        for i, value in zip(indices, values):
            scores[i] = value
    return scores
