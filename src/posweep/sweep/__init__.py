"""Sweeps: a YAML config → a planned list of runs → a resumable sweep folder (docs/DESIGN.md section 5).

In: a ``SweepConfig`` (YAML file or packaged preset ``demo`` / ``paper``). Out: the sweep folder of
docs/ARCHITECTURE.md, minus the report (``posweep.workflow`` writes it after the sweep).

- ``config``: the schema, presets and the checks that run before any work.
- ``plan``: grids → ``PlannedRun`` with deterministic ids; ``RunJob`` / ``RunOutcome``.
- ``state``: ``state.sqlite`` and the folder lock.
- ``inputs``: what the runs share, loaded once per process.
- ``run``: one run (train → evaluate).
- ``executors``: in process, one worker per CUDA device, torchrun per run (``processes_per_run``), Ray.
- ``launch``: one run on several processes (torchrun), evaluated on the main one.
- ``dryrun``: ``--dry-run``: the plan, memory per run, tokens and time; nothing run or written.
- ``pipeline``: ``run_sweep``, the SFT choice, ``summary.csv``.
"""

from posweep.sweep.config import SweepConfig, SweepConfigError, load_config, quick_config, validate_config
from posweep.sweep.pipeline import SweepResult, run_sweep
from posweep.sweep.plan import PlannedRun, RunJob, RunOutcome, plan_runs
from posweep.sweep.run import run_one
from posweep.sweep.state import SweepError, sweep_lock

__all__ = ["PlannedRun", "RunJob", "RunOutcome", "SweepConfig", "SweepConfigError", "SweepError", "SweepResult",
           "load_config", "plan_runs", "quick_config", "run_one", "run_sweep", "sweep_lock", "validate_config"]
