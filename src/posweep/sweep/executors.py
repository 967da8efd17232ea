"""Executors: where a sweep's runs execute. One bounded-submit loop, three backends.

An executor runs jobs and yields their outcomes as they finish, calling ``on_start(job)`` as each starts.
It lives for the whole sweep (worker processes and Ray start once), and ``close()`` releases it. The driver
alone records outcomes in ``state.sqlite``.

- ``InProcessExecutor``: one run after another in this process (shared inputs loaded once).
- ``DeviceExecutor``: one worker process per CUDA device.
- ``RayExecutor``: one Ray task per run, with its GPU request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from posweep.sweep.config import ExecutorConfig
from posweep.sweep.plan import RunJob, RunOutcome
from posweep.sweep.run import run_one
from posweep.sweep.state import SweepError

OnStart = Callable[[RunJob], None]


class InProcessExecutor:
    """One run after another in this process (the shared inputs are loaded once)."""

    def run(self, jobs: list[RunJob], on_start: OnStart) -> Iterator[RunOutcome]:
        for job in jobs:
            on_start(job)
            yield run_one(job)

    def close(self) -> None:
        pass


class BoundedExecutor:
    """Runs jobs on ``slots`` workers: submits while a slot is free, yields each outcome as it finishes.

    Only as many jobs are in flight as there are slots, so a run marked "running" is running. Subclasses
    say how to submit a job, wait for any of the submitted ones, and read a finished one's outcome."""

    slots: int = 1

    def submit(self, job: RunJob):
        raise NotImplementedError

    def wait_any(self, handles: list) -> list:
        raise NotImplementedError

    def outcome(self, handle, job: RunJob) -> RunOutcome:
        raise NotImplementedError

    def run(self, jobs: list[RunJob], on_start: OnStart) -> Iterator[RunOutcome]:
        waiting, active = list(jobs), {}
        while waiting or active:
            while waiting and len(active) < self.slots:
                job = waiting.pop(0)
                on_start(job)
                active[self.submit(job)] = job
            for handle in self.wait_any(list(active)):
                yield self.outcome(handle, active.pop(handle))

    def close(self) -> None:
        pass


def _pin_device(devices) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())  # before this worker initialises CUDA


class DeviceExecutor(BoundedExecutor):
    """One worker process per CUDA device, each running one run at a time on its device."""

    def __init__(self, devices: list[int]):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        device_queue = context.Queue()
        for device in devices:
            device_queue.put(device)
        self.slots = len(devices)
        self.pool = ProcessPoolExecutor(len(devices), mp_context=context, initializer=_pin_device,
                                        initargs=(device_queue,))

    def submit(self, job: RunJob):
        return self.pool.submit(run_one, job)

    def wait_any(self, handles: list) -> list:
        from concurrent.futures import FIRST_COMPLETED, wait

        return list(wait(handles, return_when=FIRST_COMPLETED).done)

    def outcome(self, handle, job: RunJob) -> RunOutcome:
        try:
            return handle.result()
        except Exception as error:
            return RunOutcome(job.run.run_id, "failed", error=f"worker died: {type(error).__name__}: {error}",
                              pid=None)

    def close(self) -> None:
        self.pool.shutdown()


class RayExecutor(BoundedExecutor):
    """Each run a Ray task with its GPU request. Tasks write their run folders; the driver records status.

    Safe to retry: ``run_one`` skips a run whose evaluation finished, so a retried task never duplicates.
    On a multi-node cluster the sweep folder and ``$POSWEEP_CACHE`` must be on storage every node sees.
    """

    def __init__(self, options: ExecutorConfig):
        try:
            import ray
        except ImportError:
            raise SweepError("--executor ray needs Ray: pip install 'posweep[ray]'") from None
        self.ray, self.started_ray = ray, not ray.is_initialized()
        if self.started_ray:
            ray.init(address=options.address, include_dashboard=False)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        # Only as many runs in flight as the cluster can execute at once, so "running" means running.
        self.slots = gpus if gpus else max(1, int(resources.get("CPU", 1) // options.num_cpus))
        passed_env = {k: v for k, v in os.environ.items() if k.startswith(("POSWEEP_", "HF_", "TOKENIZERS_"))}
        self.task = ray.remote(run_one).options(num_gpus=1 if gpus else 0, num_cpus=options.num_cpus,
                                                max_retries=options.max_retries, runtime_env={"env_vars": passed_env})

    def submit(self, job: RunJob):
        return self.task.remote(job)

    def wait_any(self, handles: list) -> list:
        return self.ray.wait(handles, num_returns=1)[0]

    def outcome(self, handle, job: RunJob) -> RunOutcome:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayError as error:  # the task's worker died, retries exhausted
            return RunOutcome(job.run.run_id, "failed", error=f"Ray task failed: {error}"[:2000], pid=None)

    def close(self) -> None:
        if self.started_ray:
            self.ray.shutdown()


Executor = InProcessExecutor | DeviceExecutor | RayExecutor


def make_executor(options: ExecutorConfig) -> Executor:
    """``ray``: Ray tasks. ``local``: worker processes when several CUDA devices are present, else in process."""
    if options.kind == "ray":
        return RayExecutor(options)
    import torch

    devices = list(range(torch.cuda.device_count()))
    return DeviceExecutor(devices) if len(devices) > 1 else InProcessExecutor()
