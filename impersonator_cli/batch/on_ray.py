"""The batch on a Ray cluster: one long-lived actor per GPU (or per CPU worker), each holding its loaded
networks and caches, fed one job at a time. Needs the `cluster` extra (`pip install 'impersonate[cluster]'`).

- address "auto": join the running cluster if there is one, else start a local one; any other value
  is a cluster address (`ray://host:10001` or `host:6379`). A Ray session already open in this
  process is used as it is.
- Inputs and outputs must be on storage every node sees; the motion cache too.
- A job whose actor dies is retried on a fresh actor, up to `retries` times; the dead writer's
  hidden temp file is removed first, so a partial output is never kept.
- Actors pin torch's thread count by the rule of the local workers (`threads_per_worker`), so an
  output does not depend on where its job ran.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Iterable, Iterator

from impersonator_cli.batch.core import (
    BatchOptions, BatchSummary, Events, Line, job_line, remove_partials, run_job, threads_per_worker, worker_died,
)
from impersonator_cli.batch.spec import JobSpec
from impersonator_cli.batch.worker import Worker
from impersonator_cli.errors import EnvironmentProblem

_INSTALL = "Install the cluster extra: pip install 'impersonate[cluster]'."


class BatchActor:
    """A worker in a Ray actor: loads networks on first use and keeps them for every later job."""

    def __init__(self, threads: int, motion_dir: str) -> None:
        import torch

        torch.set_num_threads(threads)
        self.worker = Worker(reuse=True, motion_dir=Path(motion_dir))

    def run(self, spec: JobSpec) -> Line:
        return run_job(self.worker, spec)

    def counts(self) -> dict:
        return dict(self.worker.counts)

    def pid(self) -> int:
        return os.getpid()


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise EnvironmentProblem("Ray is not installed", hint=_INSTALL) from exc
    return ray


def connect(address: str) -> None:
    """Join a cluster (see the module doc); EnvironmentProblem when it cannot be reached."""
    ray = _ray()
    if ray.is_initialized():
        return
    try:
        if address == "auto":
            try:
                ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
            except ConnectionError:
                ray.init(logging_level="ERROR", log_to_driver=False, include_dashboard=False)
        else:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds here
        raise EnvironmentProblem(f"Cannot join the Ray cluster at {address}", hint="Check that `ray status` works "
                                 "on this machine, or pass --ray auto to start a local cluster.",
                                 detail=f"{type(exc).__name__}: {exc}") from exc


def _actors(options: BatchOptions):
    ray = _ray()
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    count = options.workers if options.workers > 1 else max(1, gpus)
    threads = threads_per_worker(count, cpus)
    remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=threads, max_restarts=0)(BatchActor)
    motion_dir = str(options.motion_cache())
    return lambda: remote.remote(threads, motion_dir), count


def run_on_ray(specs: Iterable[JobSpec], options: BatchOptions, events: Events, summary: BatchSummary) -> Iterator[Line]:
    """Jobs as Ray actor calls; lines come back as jobs end (in any order)."""
    ray = _ray()
    connect(options.ray)
    new_actor, count = _actors(options)
    idle = [new_actor() for _ in range(count)]
    queue = collections.deque((spec, 0) for spec in specs)
    pending: dict = {}
    try:
        while queue or pending:
            while queue and idle:
                spec, attempt = queue.popleft()
                actor = idle.pop()
                events.job_started(spec)
                pending[actor.run.remote(spec)] = (spec, attempt, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            spec, attempt, actor = pending.pop(done[0])
            try:
                line = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                remove_partials(spec.output)
                idle.append(new_actor())
                if attempt < options.retries:
                    queue.appendleft((spec, attempt + 1))
                    continue
                line = job_line(spec, "failed", 0.0, error=worker_died(f"Ray worker ({attempt + 1} tries)", exc))
            else:
                idle.append(actor)
            yield line
        summary.counts = _total_counts(ray, idle)
    finally:
        for actor in idle + [a for _, _, a in pending.values()]:
            ray.kill(actor)


def _total_counts(ray, actors) -> dict:
    total: collections.Counter = collections.Counter()
    for counts in ray.get([a.counts.remote() for a in actors]):
        total.update(counts)
    return dict(total)
