"""What every batch runner shares: options, the summary, events, and running one job into its line."""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from impersonator_cli.batch.spec import JobSpec
from impersonator_cli.batch.worker import Worker
from impersonator_cli.defaults import cache_root
from impersonator_cli.errors import ImpersonateError, internal_error
from impersonator_cli.io.images import leftover_partials
from impersonator_cli.types import Progress

Line = dict
STATUSES = ("ok", "skipped", "failed")


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs. workers: local worker processes (1: this process). ray: None, "auto" or a
    cluster address. retries: re-runs of a job whose worker died. motion_dir: the motion cache."""

    results: Path
    redo: bool = False
    workers: int = 1
    ray: Optional[str] = None
    retries: int = 2
    motion_dir: Optional[Path] = None

    def motion_cache(self) -> Path:
        return self.motion_dir if self.motion_dir is not None else cache_root() / "motion"


@dataclass
class BatchSummary:
    """How a batch went: job counts by status (ok, skipped, failed), the batch's exit code, its seconds,
    and the workers' tallies of loads, preparations and motions (`Worker.counts`)."""

    total: int = 0
    by_status: collections.Counter = field(default_factory=collections.Counter)
    exit_code: int = 0
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)

    def add(self, line: Line) -> None:
        self.by_status[line["status"]] += 1
        if line["status"] == "failed":
            self.exit_code = max(self.exit_code, int(line["error"]["exit_code"]))

    def to_dict(self) -> dict:
        return {"jobs": self.total, **{k: self.by_status[k] for k in STATUSES},
                "exit_code": self.exit_code, "seconds": round(self.seconds, 3), **self.counts}


class Events:
    """What a front end hears: the batch starting, each job starting and ending, a job's frames."""

    def started(self, total: int) -> None: ...

    def job_started(self, spec: JobSpec) -> None: ...

    def job_progress(self, done: int, total: int) -> None: ...

    def job_ended(self, line: Line) -> None: ...


# ------------------------------------------------------------------ one job


def job_line(spec: JobSpec, status: str, seconds: float, result: dict | None = None,
             error: dict | None = None, reuse: dict | None = None) -> Line:
    """The results-file line of one job."""
    line = {"index": spec.index, "job": spec.kind, "status": status, "output": str(spec.output),
            "seconds": round(seconds, 3)}
    if result is not None:
        line.update({k: v for k, v in result.items() if k != "output"})
    line["reuse"] = reuse or {}
    line["error"] = error
    return line


def worker_died(who: str, exc: BaseException) -> dict:
    """The error object of a job whose worker process died under it (`who`: which worker, how often)."""
    return {"kind": "WorkerDied", "message": f"The {who} running this job died",
            "hint": "Check the memory of the machine it ran on (a killed worker is often out of memory; on a "
                    "cluster also `ray status`), then run the batch again: finished jobs are skipped.",
            "exit_code": 6, "path": None, "detail": f"{type(exc).__name__}: {exc}"}


def run_job(worker: Worker, spec: JobSpec, progress: Progress | None = None) -> Line:
    """Run one spec; any error becomes the line's error object (Ctrl-C still stops the batch)."""
    t0 = time.perf_counter()
    try:
        result = worker.run(spec, progress=progress)
    except ImpersonateError as exc:
        return job_line(spec, "failed", time.perf_counter() - t0, error=exc.to_dict(), reuse=worker.last_reuse)
    except Exception as exc:  # noqa: BLE001 - reported in the job's line; the other jobs go on
        return job_line(spec, "failed", time.perf_counter() - t0, error=internal_error(exc), reuse=worker.last_reuse)
    return job_line(spec, "ok", time.perf_counter() - t0, result=result.to_dict(), reuse=worker.last_reuse)


def remove_partials(output: Path) -> None:
    """Delete the hidden temp files a killed writer left beside `output`."""
    for tmp in leftover_partials(output):
        tmp.unlink(missing_ok=True)


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """torch threads of each of `workers` workers sharing `cpus` cores (the same rule on Ray)."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, workers))
