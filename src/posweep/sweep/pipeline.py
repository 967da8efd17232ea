"""The sweep pipeline: a config → a resumable sweep folder (docs/DESIGN.md sections 5 and 10).

In: a ``SweepConfig`` (or its file / preset name) and a folder. Out: the folder's ``sweep.yaml``,
``state.sqlite``, ``summary.csv``, ``sweep_info.json``, ``baseline/samples.parquet`` and ``runs/<run_id>/``
(the report is written by ``posweep.workflow``, a later stage).

The loop, all in ``run_sweep``: resolve the sampling backend (once per sweep, recorded) → prepare data
(tokenized once, cached) → SFT grid (train + evaluate each, against the starting model's baseline) →
choose the SFT with the best mean gold score (on the selection prompts when the sweep has a split) → its
own evaluation becomes the preference stage's baseline (no second sampling pass) → reference log-probs of
every pair (once, if a method needs them) → every preference run (train → evaluate) → summary.csv.

Resumable: ``state.sqlite`` holds each run's status. Rerunning on the same folder skips finished runs
(their files are never touched), reruns runs a killed process left "running", and retries failed runs
only when asked. Changing what finished runs were computed with (model, data, judge, sampling, limits,
optimisation) is refused with the changed keys named; adding grid points, methods or seeds runs only the
new runs, because a run's id is a hash of its settings.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from posweep.config import stable_hash
from posweep.io import write_atomic_json, write_atomic_parquet, write_atomic_text
from posweep.losses import get_method
from posweep.metrics import flatten_intervals
from posweep.progress import progress_bar
from posweep.sweep.config import SweepConfig, SweepConfigError, config_to_yaml, load_config
from posweep.sweep.executors import Executor, InProcessExecutor, cpu_threads_per_worker, make_executor
from posweep.sweep.inputs import SharedInputs, forget_process_inputs, process_inputs
from posweep.sweep.plan import PlannedRun, RunJob, describe_changes, plan_runs, sweep_context
from posweep.sweep.run import quiet_libraries
from posweep.sweep.state import StateDB, SweepError, sweep_lock

# What a run's metrics mean (docs/DESIGN.md section 3), pinned by finished runs like the rest of the context.
# 2: KL at the sampling temperature, responses ended by the model's own end-of-turn tokens, held-out split.
EVALUATION_RULES = 2


def run_context(config: SweepConfig) -> dict:
    """``sweep_context`` plus the evaluation rules: what finished runs pin."""
    return {**sweep_context(config), "evaluation": EVALUATION_RULES}


@dataclass
class SweepResult:
    out_dir: Path
    counts: dict[str, int]  # runs by status
    summary_path: Path


def run_sweep(config: SweepConfig | str | Path, out_dir: str | Path, retry_failed: bool = False,
              executor: str | None = None, address: str | None = None, progress: bool = True) -> SweepResult:
    """Run (or resume, or extend) the sweep of ``config`` in ``out_dir``; see the module docstring."""
    config = config if isinstance(config, SweepConfig) else load_config(config)
    if executor or address:
        config = config.model_copy(update={"executor": config.executor.model_copy(
            update={k: v for k, v in {"kind": executor, "address": address}.items() if v})})
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "state.sqlite").exists():
        raise SweepError(f"{out_dir} exists and is not a sweep folder (no state.sqlite); choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(config)
    with sweep_lock(out_dir):
        db = StateDB(out_dir / "state.sqlite")
        try:
            _start(db, config, runs, out_dir, retry_failed)
            config = resolve_sampling_backend(db, config, out_dir)
            _execute_stages(db, config, runs, out_dir, progress)
            summary_path = write_summary(db, out_dir)
            counts = {status: db.count(status) for status in ("done", "failed", "pending", "running")}
        finally:
            db.close()
    return SweepResult(out_dir, counts, summary_path)


def _start(db: StateDB, config: SweepConfig, runs: list[PlannedRun], out_dir: Path, retry_failed: bool) -> None:
    """Refuse a config that changes finished runs; record the plan; requeue interrupted (and failed) runs."""
    context = run_context(config)
    previous = db.get_meta("context")
    if previous is not None and previous != context and db.count("done", "failed"):
        raise SweepConfigError(
            f"{out_dir}: this config changes what the finished runs of this sweep were computed with:\n  "
            + "\n  ".join(describe_changes(previous, context))
            + "\nStart a new sweep folder (--out) for it, or restore those values "
              "(adding grid points, methods or seeds to an existing sweep is fine).")
    db.set_meta("context", context)
    write_atomic_text(config_to_yaml(config), out_dir / "sweep.yaml")
    db.add_runs(runs, stable_hash(context))
    db.requeue(keep={run.run_id for run in runs}, retry_failed=retry_failed)


def resolve_sampling_backend(db: StateDB, config: SweepConfig, out_dir: Path) -> SweepConfig:
    """The config with ``sampling.backend`` resolved (``auto`` → vllm or hf) once for the whole sweep and
    recorded; a resumed sweep whose ``auto`` would now resolve differently is refused while finished runs
    were sampled with the other backend (the two draw different random numbers)."""
    from posweep.generation import resolve_backend

    backend = resolve_backend(config.sampling.backend)
    previous = db.get_meta("sampling_backend")
    if previous and previous != backend and db.count("done", "failed"):
        raise SweepConfigError(f"{out_dir}: this sweep's runs were sampled with the {previous} backend, but "
                               f"sampling.backend {config.sampling.backend!r} now resolves to {backend}; set "
                               f"sampling.backend: {previous} to continue it, or start a new sweep folder (--out)")
    db.set_meta("sampling_backend", backend)
    return config.model_copy(update={"sampling": config.sampling.model_copy(update={"backend": backend})})


def _check_fingerprints(db: StateDB, config: SweepConfig, pairs, prompts: list, out_dir: Path) -> dict:
    """The same config can point at changed files; compare content fingerprints with the first start."""
    from posweep.models import model_fingerprint

    fingerprints = {"model": model_fingerprint(config.model), "train_data": pairs.fingerprint,
                    "test_prompts": stable_hash([[p.prompt_id, p.prompt, p.chosen] for p in prompts])}
    previous = db.get_meta("fingerprints")
    if previous and previous != fingerprints and db.count("done", "failed"):
        changed = ", ".join(k for k in fingerprints if previous.get(k) != fingerprints[k])
        raise SweepConfigError(f"{out_dir}: the content of {changed} changed since this sweep's runs were computed "
                               "(same config, different files); start a new sweep folder (--out)")
    db.set_meta("fingerprints", fingerprints)
    return fingerprints


def _execute_stages(db: StateDB, config: SweepConfig, runs: list[PlannedRun], out_dir: Path, progress: bool) -> None:
    """SFT stage → choose the SFT → preference stage, with one progress display over all runs."""
    forget_process_inputs()  # a new sweep: load the shared inputs afresh
    quiet_libraries()
    sft_runs = [run for run in runs if run.stage == "sft"]
    po_runs = [run for run in runs if run.stage == "po"]
    pending = sum(db.status(run.run_id) == "pending" for run in runs)
    # Worker processes start now and warm up while the driver converts the model and tokenizes the data.
    executor = make_executor(config.executor, warm_up=config) if pending else InProcessExecutor()  # no Ray for nothing
    try:
        inputs = process_inputs(config)
        pairs, prompts = inputs.pairs, inputs.prompts  # tokenized once (cached on disk by content)
        fingerprints = _check_fingerprints(db, config, pairs, prompts, out_dir)
        with progress_bar(progress) as bar:
            overall = bar.add_task("sweep", total=len(runs), completed=len(runs) - pending, info="")
            if sft_runs:
                _run_stage(db, inputs, sft_runs, out_dir, config.model, executor, bar, overall)
            sft_spec, sft_run_id, sft_metrics = choose_sft(db, config, sft_runs, po_runs, out_dir)
            if po_runs and sft_run_id is not None:  # the chosen SFT's own evaluation is the baseline
                inputs.adopt_baseline(sft_spec, out_dir / "runs" / sft_run_id)
            write_atomic_json(sweep_info(config, inputs, fingerprints, sft_spec, sft_run_id, sft_metrics, len(runs)),
                              out_dir / "sweep_info.json")
            if po_runs:
                _run_stage(db, inputs, po_runs, out_dir, sft_spec, executor, bar, overall)
    finally:
        executor.close()


def sweep_info(config: SweepConfig, inputs: SharedInputs, fingerprints: dict, sft_spec: str, sft_run_id: str | None,
               sft_metrics: dict | None, planned_runs: int) -> dict:
    """sweep_info.json: what the analyses and the report need to know about the sweep (docs/DESIGN.md
    section 10), including the resolved sampling backend, the KL's definition and the prompt split."""
    n_prompts, n_selection = len(inputs.prompts), len(inputs.selection)
    temperature = config.sampling.temperature
    return {
        "model": config.model, "judge": config.judge,
        "judge_is_stand_in": bool(getattr(inputs.judge, "is_stand_in", False)),
        "sft_run_id": sft_run_id, "sft_metrics": sft_metrics, "sft_spec": sft_spec,
        "sft_grid": config.sft.grid if config.sft else None,
        "methods": {name: {**config.shared_grid, **m.grid} for name, m in config.methods.items()},
        "seeds": config.seeds, "train_data": {**config.train_data.model_dump(), "n": len(inputs.pairs)},
        "test_prompts": {**config.test_prompts.model_dump(), "n": n_prompts},
        "sampling": config.sampling.model_dump(), "sampling_backend": config.sampling.backend,
        "kl": {"temperature": temperature if temperature > 0 else 1.0, "policy_top_p": config.sampling.top_p,
               "greedy": temperature == 0, "evaluation_rules": EVALUATION_RULES},
        "selection": ({"fraction": config.test_prompts.selection_fraction, "n_selection": n_selection,
                       "n_held_out": n_prompts - n_selection} if n_selection else None),
        "fingerprints": fingerprints, "planned_runs": planned_runs,
    }


def _run_stage(db: StateDB, inputs: SharedInputs, runs: list[PlannedRun], out_dir: Path, base_spec: str,
               executor: Executor, bar, overall) -> None:
    """Compute the stage's shared inputs once, here (the baseline samples of ``base_spec``, its reference
    log-probs if a method needs them; workers then read them from the disk caches), then execute the
    stage's pending runs, recording each outcome and rewriting summary.csv after it."""
    config = inputs.config
    stage = runs[0].stage
    jobs = [RunJob(run, config, out_dir, base_spec) for run in runs if db.status(run.run_id) == "pending"]
    if stage == "sft" and not jobs:
        return
    bar.update(overall, info=f"{stage} stage: baseline samples" + (", reference log-probs" if stage == "po" else ""))
    alongside = None
    if stage == "sft" and executor.shares_cores:
        # The SFT runs train while the driver samples the starting model's baseline on its share of the
        # cores; their evaluation waits for it (the baseline cache's lock) instead of sampling it again.
        alongside = _baseline_alongside(inputs, base_spec, executor, len(jobs))
    else:
        baseline = inputs.baseline(base_spec)
        inputs.park()  # the base policy stays loaded for the runs' KL, in CPU memory while they train
    if stage == "po" and any(get_method(run.method).needs_reference for run in runs):
        inputs.reference_logps(base_spec)
    if stage == "po":  # the chosen SFT's samples: the report compares every run with them
        write_baseline(baseline, out_dir / "baseline" / "samples.parquet")
    params = {run.run_id: run.params() for run in runs}

    def on_start(job: RunJob) -> None:
        db.mark_running(job.run.run_id, os.getpid())
        bar.update(overall, info=f"running {job.run.run_id}")

    for outcome in executor.run(jobs, on_start):
        db.mark_finished(outcome)
        write_summary(db, out_dir)
        bar.update(overall, advance=1)
        settings = " ".join(f"{k}={v:g}" for k, v in params[outcome.run_id].items())
        if outcome.status == "done":
            score = outcome.metrics.get("mean_score", float("nan"))
            bar.console.print(f"[green]done[/]   {outcome.run_id}  {settings}  mean_score {score:.4f}  "
                              f"({outcome.duration_s:.0f} s{', finished earlier' if outcome.skipped else ''})")
        else:
            bar.console.print(f"[red]failed[/] {outcome.run_id}  {settings}  {outcome.error}")
    if alongside is not None:
        alongside.result()  # its error, if any (the runs that needed it have failed with it too)


def _baseline_alongside(inputs: SharedInputs, base_spec: str, executor: Executor, runs: int):
    """Sample ``base_spec``'s baseline in a driver thread while the executor's workers run; the driver
    counts as one more worker for the cores' division, until it is done. Returns a future of it. The
    thread is a daemon: an interrupted sweep exits without waiting for it (a partial baseline is never
    stored: the cache writes are atomic)."""
    import threading
    from concurrent.futures import Future

    import torch

    executor.driver_busy = 1
    threads = cpu_threads_per_worker(min(executor.slots, runs) + 1)
    future: Future = Future()

    def sample():
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)  # this thread's OpenMP team; the driver's main thread only waits
        try:
            inputs.baseline(base_spec)
            inputs.park()
            future.set_result(None)
        except BaseException as error:
            future.set_exception(error)
        finally:
            torch.set_num_threads(previous)
            executor.driver_busy = 0
            executor.shares_changed()

    threading.Thread(target=sample, name="posweep-baseline", daemon=True).start()
    return future


def choose_sft(db: StateDB, config: SweepConfig, sft_runs: list[PlannedRun], po_runs: list[PlannedRun],
               out_dir: Path) -> tuple[str, str | None, dict | None]:
    """The SFT run with the best mean gold score (first on ties) → (its checkpoint, run id, metrics). With a
    selection split the score is the selection prompts' (``selection_mean_score``); the metrics reported
    are the held-out ones.

    Without an SFT grid the config's model is the SFT policy. Preference runs that finished from an
    earlier choice pin it: a grid extension that would change the choice is refused.
    """
    if not sft_runs:
        return config.model, None, None
    scored = []
    for run in sft_runs:
        metrics_path = out_dir / "runs" / run.run_id / "metrics.json"
        if db.status(run.run_id) == "done" and metrics_path.exists():
            scored.append((json.loads(metrics_path.read_text()), run))
    if not scored:
        raise SweepError(f"no SFT run finished ({len(sft_runs)} failed); see {out_dir / 'summary.csv'}, "
                         "fix the cause and rerun with --retry-failed")
    metrics, best = max(scored, key=lambda item: selection_score(item[0]))  # max keeps the first of equals
    previous = db.get_meta("chosen_sft")
    if previous and previous != best.run_id and any(db.status(r.run_id) in ("done", "failed") for r in po_runs):
        raise SweepConfigError(f"{out_dir}: the SFT grid now selects {best.run_id} instead of {previous}, which the "
                               "finished preference runs started from; start a new sweep folder (--out)")
    db.set_meta("chosen_sft", best.run_id)
    if not config.keep_checkpoints:  # only the chosen SFT checkpoint is needed from here on
        for _, run in scored:
            if run is not best:
                shutil.rmtree(out_dir / "runs" / run.run_id / "checkpoint", ignore_errors=True)
    return str(out_dir / "runs" / best.run_id / "checkpoint"), best.run_id, metrics


def selection_score(metrics: dict) -> float:
    """The score a run is ranked by: its selection prompts' mean score when the sweep has a split, else
    its mean score (NaN ranks last)."""
    value = metrics.get("selection_mean_score", metrics.get("mean_score"))
    return float("-inf") if value is None or value != value else float(value)


def write_baseline(baseline, path: Path) -> None:
    """The chosen SFT's samples, their scores and the chosen responses' scores (``evaluation.Baseline``)."""
    import pyarrow as pa

    write_atomic_parquet(pa.Table.from_pandas(baseline.samples, preserve_index=False), path)


def write_summary(db: StateDB, out_dir: Path) -> Path:
    """summary.csv: one row per run: run_id, method, stage, status, every hyperparameter, every metric
    (intervals as ``<name>_ci_low`` / ``<name>_ci_high``), then duration_s and error."""
    import pandas as pd

    rows, param_columns, metric_columns = [], {}, {}  # dicts as ordered sets
    for record in db.runs():
        params = json.loads(record["hparams"])
        metrics_path = out_dir / "runs" / record["run_id"] / "metrics.json"
        metrics = {}
        if record["status"] == "done" and metrics_path.exists():
            metrics = flatten_intervals(json.loads(metrics_path.read_text()))
        param_columns.update(dict.fromkeys(params))
        metric_columns.update(dict.fromkeys(metrics))
        rows.append({"run_id": record["run_id"], "method": record["method"], "stage": record["stage"],
                     "status": record["status"], **params, **metrics, "duration_s": record["duration_s"],
                     "error": record["error"]})
    columns = ["run_id", "method", "stage", "status", *param_columns, *metric_columns, "duration_s", "error"]
    path = out_dir / "summary.csv"
    write_atomic_text(pd.DataFrame(rows, columns=columns).to_csv(index=False), path)
    return path
