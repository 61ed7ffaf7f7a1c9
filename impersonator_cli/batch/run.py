"""`impersonate batch`: run many job specs, resumably, in this process, in worker processes or on Ray.

- A job whose output exists is complete (outputs are published atomically, so an existing output is
  a whole one) and is skipped, unless `redo`; then it runs again and replaces its output. The hidden
  temp files of a run that was killed are removed before their job runs again (so two batches must
  not run one manifest at the same time).
- Each job ends with one JSON line appended to the results file: its manifest index, status (ok,
  failed, skipped), output, frames, fps, timings, what it reused, and on failure the error object
  with its exit code. A failed job does not stop the others.
- The batch's exit code is 0 when no job failed, else the largest exit code among the failed jobs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from impersonator_cli.batch.core import (
    BatchOptions, BatchSummary, Events, Line, job_line, remove_partials, run_job, threads_per_worker, worker_died,
)
from impersonator_cli.batch.spec import JobSpec
from impersonator_cli.batch.worker import Worker

# ------------------------------------------------------------------ the batch


def run_batch(specs: Sequence[JobSpec], options: BatchOptions, events: Events | None = None) -> BatchSummary:
    """Run `specs` (see the module doc); appends to `options.results` as jobs end."""
    events = events or Events()
    summary = BatchSummary(total=len(specs))
    t0 = time.perf_counter()
    events.started(len(specs))
    options.results.parent.mkdir(parents=True, exist_ok=True)
    with open(options.results, "a", encoding="utf-8") as results:
        def record(line: Line) -> None:
            results.write(json.dumps(line) + "\n")
            results.flush()
            summary.add(line)
            events.job_ended(line)

        todo = []
        for spec in specs:
            if spec.output.exists() and not options.redo:
                record(job_line(spec, "skipped", 0.0))
                continue
            remove_partials(spec.output)  # what a killed earlier run left half-written
            todo.append(spec.overwriting() if options.redo else spec)
        for line in _runner(options)(todo, options, events, summary):
            record(line)
    summary.seconds = time.perf_counter() - t0
    return summary


def default_workers() -> int:
    """One worker per CUDA device when there are several, else one (this process)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() and torch.cuda.device_count() > 1 else 1


def _runner(options: BatchOptions) -> Callable[..., Iterator[Line]]:
    if options.ray is not None:
        from impersonator_cli.batch.on_ray import run_on_ray

        return run_on_ray
    return run_in_pool if options.workers > 1 else run_here


def run_here(specs: Iterable[JobSpec], options: BatchOptions, events: Events, summary: BatchSummary) -> Iterator[Line]:
    """One worker in this process."""
    worker = Worker(reuse=True, motion_dir=options.motion_cache())
    for spec in specs:
        events.job_started(spec)
        yield run_job(worker, spec, events.job_progress)
    summary.counts = dict(worker.counts)


# ------------------------------------------------------------------ local worker processes

_POOL_WORKER: Optional[Worker] = None


def _pool_init(threads: int, motion_dir: str, devices) -> None:
    global _POOL_WORKER
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())  # pinned before torch sees CUDA
    import torch

    torch.set_num_threads(threads)
    _POOL_WORKER = Worker(reuse=True, motion_dir=Path(motion_dir))


def _pool_run(spec: JobSpec) -> Line:
    return run_job(_POOL_WORKER, spec)


def run_in_pool(specs: Iterable[JobSpec], options: BatchOptions, events: Events, summary: BatchSummary) -> Iterator[Line]:
    """`options.workers` processes, each with its own loaded networks (one per GPU when there are GPUs)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    devices = _gpu_queue(ctx, options.workers)
    threads = threads_per_worker(options.workers)
    specs = list(specs)
    with ProcessPoolExecutor(options.workers, mp_context=ctx, initializer=_pool_init,
                             initargs=(threads, str(options.motion_cache()), devices)) as pool:
        futures = {pool.submit(_pool_run, spec): spec for spec in specs}
        for spec in specs:
            events.job_started(spec)
        for future in as_completed(futures):
            spec = futures[future]
            try:
                yield future.result()
            except BrokenProcessPool as exc:
                remove_partials(spec.output)
                yield job_line(spec, "failed", 0.0, error=worker_died("worker process", exc))


def _gpu_queue(ctx, workers: int):
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 1:
        return None
    queue = ctx.Queue()
    for i in range(workers):
        queue.put(i % count)
    return queue
