"""One training job from the command line or a YAML file: load, tokenize (cached), then train.

In: a ``TrainJob`` (model, data source and layout, method + hyperparameters, optimisation, limits, output
folder). Out: the ``TrainResult`` of ``posweep.training.trainer.train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from posweep.config import DEFAULT_MODEL, DataLimits, OptimConfig, Strict
from posweep.data.layouts import PAIR_LAYOUTS
from posweep.losses import MethodError, get_method
from posweep.training.trainer import TrainResult, train_preference, train_sft


class TrainJob(Strict):
    """Everything ``posweep sft`` / ``posweep train`` need; also loadable from a YAML or JSON file."""

    model: str = DEFAULT_MODEL
    data: str
    layout: Literal[PAIR_LAYOUTS] = "pairs"
    method: str | None = None  # "sft" or a registry method; posweep sft / posweep train set it
    hparams: dict[str, float] = Field(default_factory=dict)
    optim: OptimConfig = OptimConfig()
    limits: DataLimits = DataLimits()
    out: Path
    device: str | None = None

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainJob:
        import yaml

        values = yaml.safe_load(Path(path).read_text()) or {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


def run_train_job(job: TrainJob, progress: bool = True) -> TrainResult:
    """Load and tokenize the data (cached), then SFT or preference-train as the job says."""
    from posweep.data import load_pairs, prepare_pairs
    from posweep.models import load_tokenizer

    if job.method is None:
        raise MethodError("a train job needs a method: sft or one of posweep methods")
    if job.method != "sft":
        get_method(job.method).loss_kwargs(job.hparams)  # fail on a bad name before any work
    pairs_list, summary = load_pairs(job.data, job.layout)
    tokenized = prepare_pairs(job.data, load_tokenizer(job.model), job.limits, pairs=pairs_list, summary=summary)
    if job.method == "sft":
        return train_sft(job.model, tokenized, job.optim, job.out, progress=progress, device=job.device)
    return train_preference(job.model, tokenized, job.method, job.hparams, job.optim, job.out,
                            progress=progress, device=job.device)
