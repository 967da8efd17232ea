"""One run of a sweep on several processes: ``torchrun`` launches this module, which trains on every
process and evaluates on the main one.

In (driver side, ``launch_run``): a ``RunJob`` and a process count. The job is pickled into a scratch
folder and ``python -m torch.distributed.run --standalone --nproc_per_node N -m posweep.sweep.launch JOB
OUTCOME`` runs it on this machine's devices (``CUDA_VISIBLE_DEVICES`` as the caller set it; CPU with gloo
when there is no GPU). Out: the ``RunOutcome`` that the main process pickled, or a failed outcome with
the launcher's output tail when the processes died (a crash is recorded; the sweep goes on).

In each process (``main``): the shared inputs are read from the disk caches the driver filled (tokenized
pairs, reference log-probs, baseline), every process trains its share of each step
(``posweep.training``), and the main process alone then evaluates the checkpoint on its device (rank 0's
GPU, the first of the run's devices) through ``run_one``, which also clears and owns the run folder. The
driver alone writes ``state.sqlite``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from posweep.io import write_atomic_bytes
from posweep.sweep.plan import RunJob, RunOutcome
from posweep.sweep.run import is_finished, run_one


def launch_command(processes: int, job_file: Path, outcome_file: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "posweep.sweep.launch", str(job_file), str(outcome_file)]


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def start_run(job: RunJob, processes: int, scratch: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``torchrun`` for ``job`` (non-blocking); its output goes to ``scratch/launch.log``."""
    scratch.mkdir(parents=True, exist_ok=True)
    write_atomic_bytes(pickle.dumps(job), scratch / "job.pkl")
    with open(scratch / "launch.log", "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(launch_command(processes, scratch / "job.pkl", scratch / "outcome.pkl"),
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def collect_run(job: RunJob, returncode: int, scratch: Path) -> RunOutcome:
    """The outcome the main process wrote, else a failure carrying the launcher's output tail."""
    outcome_file = scratch / "outcome.pkl"
    if outcome_file.exists():
        return pickle.loads(outcome_file.read_bytes())
    output = (scratch / "launch.log").read_text(errors="replace") if (scratch / "launch.log").exists() else ""
    return RunOutcome(job.run.run_id, "failed", error=f"distributed run exited with code {returncode} before "
                      "its main process recorded an outcome", traceback_tail=_tail(output), pid=None)


def launch_run(job: RunJob, processes: int, env: dict | None = None) -> RunOutcome:
    """Run ``job`` on ``processes`` processes of this machine and wait for it (a Ray task calls this)."""
    if is_finished(Path(job.out_dir) / "runs" / job.run.run_id):
        return run_one(job)  # already evaluated: run_one skips it without starting any process
    with tempfile.TemporaryDirectory(prefix=f"posweep-{job.run.run_id}-") as scratch:
        process = start_run(job, processes, Path(scratch), env)
        return collect_run(job, process.wait(), Path(scratch))


def _train_share(job: RunJob, inputs) -> None:
    """What ``run_one`` trains, on a process other than the main one (same arguments, so every process
    runs the same collectives); this process writes nothing."""
    from posweep.losses import get_method
    from posweep.training import train_preference, train_sft

    run, run_dir = job.run, Path(job.out_dir) / "runs" / job.run.run_id
    if run.stage == "sft":
        train_sft(job.base_spec, inputs.pairs, run.optim, run_dir, progress=False)
    else:
        reference = inputs.reference_logps(job.base_spec) if get_method(run.method).needs_reference else None
        train_preference(job.base_spec, inputs.pairs, run.method, run.hparams, run.optim, run_dir,
                         reference_logps=reference, progress=False)


def main(job_file: str, outcome_file: str) -> None:
    """One process of a distributed run (started by ``torchrun``)."""
    import torch.distributed

    from posweep.sweep.inputs import process_inputs
    from posweep.sweep.run import quiet_libraries

    quiet_libraries()
    job: RunJob = pickle.loads(Path(job_file).read_bytes())
    inputs = process_inputs(job.config)
    if int(os.environ.get("RANK", "0")) == 0:
        outcome = run_one(job, inputs)  # trains with the others, then evaluates here alone
        write_atomic_bytes(pickle.dumps(outcome), Path(outcome_file))
    else:
        _train_share(job, inputs)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
