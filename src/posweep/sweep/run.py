"""One run of a sweep: train, then evaluate, into ``runs/<run_id>/``; a failure is an outcome, not an error.

In: a ``RunJob`` (the planned run, the config, the sweep folder, the base policy) and the sweep's
``SharedInputs``. Out: a ``RunOutcome``. Workers of every executor call ``run_one``.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from posweep.losses import get_method
from posweep.sweep.inputs import SharedInputs, process_inputs
from posweep.sweep.plan import RunJob, RunOutcome


def is_finished(run_dir: Path) -> bool:
    """A run's done marker: evaluation wrote both of its files (each atomically)."""
    return (run_dir / "metrics.json").exists() and (run_dir / "samples.parquet").exists()


def quiet_libraries() -> None:
    """The sweep shows its own progress; transformers' per-load bars would interleave with it."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def warm_up(config) -> None:
    """Load in this (worker) process what its runs will need first: the stages' imports and the sweep's
    judge. Anything that fails here is left for the run to report."""
    try:
        quiet_libraries()
        import posweep.evaluation
        import posweep.training  # noqa: F401

        process_inputs(config).judge  # noqa: B018
    except Exception:
        pass


def run_one(job: RunJob, inputs: SharedInputs | None = None,
            before_phase: Callable[[str], None] | None = None) -> RunOutcome:
    """Train then evaluate one run into ``runs/<run_id>/``. Never raises: a failure is an outcome.

    ``inputs``: the sweep's shared inputs (default: this process's, ``process_inputs``). ``before_phase``:
    called with "train", then "evaluate" (a CPU worker takes its share of the cores then). Idempotent: a
    run whose evaluation already finished is not redone (a retried Ray task, or a kill between evaluation
    and the status update); any other leftover folder is a partial attempt, cleared.
    """
    before_phase = before_phase or (lambda phase: None)
    from posweep.evaluation import evaluate_run
    from posweep.training import train_preference, train_sft

    quiet_libraries()
    run, config = job.run, job.config
    run_dir = Path(job.out_dir) / "runs" / run.run_id
    started = time.perf_counter()
    if is_finished(run_dir):
        if run.stage == "po" and not config.keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
        return RunOutcome(run.run_id, "done", metrics=json.loads((run_dir / "metrics.json").read_text()), skipped=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        inputs = inputs or process_inputs(config)
        before_phase("train")
        if run.stage == "sft":
            result = train_sft(job.base_spec, inputs.pairs, run.optim, run_dir, progress=False)
        else:
            reference = inputs.reference_logps(job.base_spec) if get_method(run.method).needs_reference else None
            result = train_preference(job.base_spec, inputs.pairs, run.method, run.hparams, run.optim, run_dir,
                                      reference_logps=reference, progress=False)
        if result.status != "done":
            return RunOutcome(run.run_id, "failed", error=result.error or "training failed",
                              duration_s=time.perf_counter() - started)
        # The base policy is loaded once per process (inputs.sft_model) and parked between runs; an SFT
        # run keeps its token ids, so that the chosen one's samples become the preference stage's baseline.
        try:
            baseline = inputs.baseline(job.base_spec)  # an SFT run may wait here for the driver sampling it
            before_phase("evaluate")
            metrics = evaluate_run(str(result.checkpoint_dir), job.base_spec, inputs.prompts, inputs.judge,
                                   config.sampling, run_dir, baseline=baseline,
                                   sft_model=lambda: inputs.sft_model(job.base_spec), selection=inputs.selection,
                                   keep_token_ids=run.stage == "sft", progress=False)
        finally:
            inputs.park()
        if run.stage == "po" and not config.keep_checkpoints:
            shutil.rmtree(result.checkpoint_dir, ignore_errors=True)
        return RunOutcome(run.run_id, "done", duration_s=time.perf_counter() - started, metrics=metrics)
    except Exception as error:
        return RunOutcome(run.run_id, "failed", error=f"{type(error).__name__}: {error}",
                          traceback_tail=_tail(traceback.format_exc()), duration_s=time.perf_counter() - started)
