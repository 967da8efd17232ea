"""Executors: where a sweep's runs execute. One bounded-submit loop, three backends.

An executor runs jobs and yields their outcomes as they finish, calling ``on_start(job)`` as each starts.
It lives for the whole sweep (worker processes and Ray start once), and ``close()`` releases it. The driver
alone records outcomes in ``state.sqlite``.

- ``InProcessExecutor``: one run after another in this process (shared inputs loaded once).
- ``DeviceExecutor``: one worker process per CUDA device, or, on a machine without one, ``cpu_workers``
  processes sharing the cores (each run ``cpu_count // n`` torch threads, ``n`` the runs in flight).
- ``LaunchExecutor`` (``processes_per_run`` > 1): each run a ``torchrun`` of that many processes on its own
  group of devices (``posweep.sweep.launch``), groups in parallel; on CPU, gloo processes.
- ``RayExecutor``: one Ray task per run, with its GPU request; with ``processes_per_run`` > 1 each run
  reserves a placement group of that many GPUs (or CPUs) and runs ``torchrun`` inside it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from posweep.sweep import launch
from posweep.sweep.config import ExecutorConfig, SweepConfig
from posweep.sweep.plan import RunJob, RunOutcome
from posweep.sweep.run import is_finished, run_one, warm_up
from posweep.sweep.state import SweepError

OnStart = Callable[[RunJob], None]


class InProcessExecutor:
    """One run after another in this process (the shared inputs are loaded once)."""

    shares_cores = False  # the runs are the driver's own work

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
    in_flight: int = 1  # how many jobs will run at once, counting the one being submitted
    driver_busy: int = 0  # the driver's own work alongside the runs (a baseline it samples), see shares_cores
    shares_cores: bool = False  # the runs and the driver share this machine's CPU cores (DeviceExecutor on CPU)

    def shares_changed(self) -> None:
        """``in_flight`` or ``driver_busy`` changed (a DeviceExecutor on CPU re-divides the cores)."""

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
                self.in_flight = min(self.slots, len(active) + len(waiting))
                self.shares_changed()
                job = waiting.pop(0)
                on_start(job)
                active[self.submit(job)] = job
            for handle in self.wait_any(list(active)):
                outcome = self.outcome(handle, active.pop(handle))
                self.in_flight = len(active)
                self.shares_changed()
                yield outcome

    def close(self) -> None:
        pass


def cpu_threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


_core_share = None  # in a CPU worker: the torch threads each run may use now, set by the driver


def _start_worker(devices, core_share, config) -> None:
    """A worker process's initializer: its CUDA device (before it initialises CUDA), or its share of the
    cores; then the imports and judge its first run would otherwise load (``run.warm_up``)."""
    global _core_share
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())
    _core_share = core_share
    if config is not None:
        warm_up(config)


def _take_core_share(phase: str) -> None:
    import torch

    torch.set_num_threads(_core_share.value)


def _run_on_cpu(job: RunJob) -> RunOutcome:
    return run_one(job, before_phase=_take_core_share)


def _started() -> int:
    return os.getpid()


class DeviceExecutor(BoundedExecutor):
    """One worker process per CUDA device, each running one run at a time on its device; or, with no
    devices, ``cpu_workers`` processes that share the cores: a run takes ``cpu_count // n`` torch threads
    as it starts training and again as it starts evaluating, ``n`` being the runs in flight then plus the
    driver when it samples alongside them (``shares_cores``). On CPU, sampling one token at a time is
    bound by memory latency, not arithmetic: two one-thread processes sample ~1.6x as many tokens per
    second as one two-thread process, and train about as many (bench/RESULTS.md).

    ``warm_up``: the sweep's config; every worker starts at once and loads what runs need (imports, the
    judge) while the driver prepares the data, instead of inside the first run it is given."""

    def __init__(self, devices: list[int] | None = None, cpu_workers: int = 1, warm_up: SweepConfig | None = None):
        import multiprocessing

        self.devices = devices or []
        self.on_cpu = self.shares_cores = not self.devices
        self.slots = len(self.devices) or cpu_workers
        self.context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self.core_share = self.context.Value("i", cpu_threads_per_worker(1)) if self.on_cpu else None
        self.warm_up = warm_up
        self.pool = self._new_pool()

    def _new_pool(self):
        from concurrent.futures import ProcessPoolExecutor

        device_queue = None
        if not self.on_cpu:
            device_queue = self.context.Queue()
            for device in self.devices:
                device_queue.put(device)
        pool = ProcessPoolExecutor(self.slots, mp_context=self.context, initializer=_start_worker,
                                   initargs=(device_queue, self.core_share, self.warm_up))
        if self.warm_up is not None:
            for _ in range(self.slots):  # the pool starts a process per task while none is idle: all of them
                pool.submit(_started)
        return pool

    def shares_changed(self) -> None:
        if self.core_share is not None:
            self.core_share.value = cpu_threads_per_worker(max(1, self.in_flight + self.driver_busy))

    def submit(self, job: RunJob):
        from concurrent.futures.process import BrokenProcessPool

        call = (_run_on_cpu, job) if self.on_cpu else (run_one, job)
        try:
            return self.pool.submit(*call)
        except BrokenProcessPool:  # a worker died (its runs are recorded failed): the next runs get a new pool
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            return self.pool.submit(*call)

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


def device_groups(gpus: int, processes: int) -> list[list[int]]:
    """Disjoint groups of ``processes`` CUDA devices (a trailing incomplete group stays unused)."""
    if gpus and gpus < processes:
        raise SweepError(f"executor.processes_per_run is {processes} but this machine has {gpus} CUDA devices")
    return [list(range(start, start + processes)) for start in range(0, gpus - processes + 1, processes)]


class LaunchExecutor(BoundedExecutor):
    """Each run a ``torchrun`` of ``processes_per_run`` processes; as many runs at once as device groups
    fit (on CPU: ``cpu_count // processes_per_run``). The driver records every outcome."""

    def __init__(self, options: ExecutorConfig, gpus: int):
        self.processes = options.processes_per_run
        self.free = [",".join(map(str, group)) for group in device_groups(gpus, self.processes)] if gpus else \
            [None] * max(1, (os.cpu_count() or 1) // self.processes)
        self.slots = len(self.free)
        self.scratch = Path(tempfile.mkdtemp(prefix="posweep-launch-"))
        self.running: dict = {}  # handle -> (devices, scratch folder)

    def submit(self, job: RunJob):
        devices = self.free.pop(0)
        if is_finished(Path(job.out_dir) / "runs" / job.run.run_id):
            handle = run_one(job)  # evaluated by an earlier attempt: nothing to launch
        else:
            env = {"CUDA_VISIBLE_DEVICES": devices} if devices is not None else {}
            handle = launch.start_run(job, self.processes, self.scratch / job.run.run_id, env)
        self.running[id(handle)] = (devices, handle)
        return id(handle)

    def wait_any(self, handles: list) -> list:
        while True:
            done = [h for h in handles if isinstance(self.running[h][1], RunOutcome) or self.running[h][1].poll() is not None]
            if done:
                return done
            time.sleep(0.2)

    def outcome(self, handle, job: RunJob) -> RunOutcome:
        devices, process = self.running.pop(handle)
        self.free.append(devices)
        if isinstance(process, RunOutcome):
            return process
        outcome = launch.collect_run(job, process.returncode, self.scratch / job.run.run_id)
        shutil.rmtree(self.scratch / job.run.run_id, ignore_errors=True)
        return outcome

    def close(self) -> None:
        for _, process in self.running.values():
            if not isinstance(process, RunOutcome) and process.poll() is None:
                process.terminate()
        shutil.rmtree(self.scratch, ignore_errors=True)


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
        n = self.processes = options.processes_per_run
        if gpus and gpus < n:  # its placement group could never be placed: the sweep would wait forever
            raise SweepError(f"executor.processes_per_run is {n} but the Ray cluster has {gpus} GPUs")
        # Only as many runs in flight as the cluster can execute at once, so "running" means running.
        self.slots = max(1, gpus // n) if gpus else max(1, int(resources.get("CPU", 1) // (options.num_cpus * n)))
        passed_env = {k: v for k, v in os.environ.items() if k.startswith(("POSWEEP_", "HF_", "TOKENIZERS_"))}
        # A run of n processes needs n devices on one node: one bundle holding all of them, reserved per run.
        self.bundle = {"GPU": n, "CPU": options.num_cpus * n} if gpus else {"CPU": options.num_cpus * n}
        self.function = ray.remote(run_one if n == 1 else launch.launch_run)
        self.options = {"num_gpus": n if gpus else 0, "num_cpus": options.num_cpus * n,
                        "max_retries": options.max_retries, "runtime_env": {"env_vars": passed_env}}
        self.groups: dict = {}  # handle -> placement group

    def submit(self, job: RunJob):
        if self.processes == 1:
            return self.function.options(**self.options).remote(job)
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group([self.bundle], strategy="STRICT_PACK")
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
        # Ray sets CUDA_VISIBLE_DEVICES to the task's GPUs; torchrun's processes each take one of them.
        handle = self.function.options(**self.options, scheduling_strategy=strategy).remote(job, self.processes)
        self.groups[handle] = group
        return handle

    def wait_any(self, handles: list) -> list:
        return self.ray.wait(handles, num_returns=1)[0]

    def outcome(self, handle, job: RunJob) -> RunOutcome:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayError as error:  # the task's worker died, retries exhausted
            return RunOutcome(job.run.run_id, "failed", error=f"Ray task failed: {error}"[:2000], pid=None)
        finally:
            if handle in self.groups:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self.groups.pop(handle))

    def close(self) -> None:
        if self.started_ray:
            self.ray.shutdown()


Executor = InProcessExecutor | DeviceExecutor | LaunchExecutor | RayExecutor


def make_executor(options: ExecutorConfig, warm_up: SweepConfig | None = None) -> Executor:
    """``ray``: Ray tasks. ``local``: ``torchrun`` per run when ``processes_per_run`` > 1, else worker
    processes when several CUDA devices are present (or, without CUDA, ``cpu_workers`` > 1), else in
    process. ``warm_up``: the sweep's config, for worker processes to start on at once (DeviceExecutor)."""
    if options.kind == "ray":
        return RayExecutor(options)
    import torch

    devices = list(range(torch.cuda.device_count()))
    if options.processes_per_run > 1:
        return LaunchExecutor(options, len(devices))
    if len(devices) > 1:
        return DeviceExecutor(devices, warm_up=warm_up)
    if not devices and options.cpu_workers > 1:
        return DeviceExecutor(cpu_workers=options.cpu_workers, warm_up=warm_up)
    return InProcessExecutor()
