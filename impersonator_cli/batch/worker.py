"""Run job specs, reusing what earlier jobs computed.

A `Worker` keeps, for as long as it lives:
- the loaded networks, one `Impersonator` per `StageKey`;
- with `reuse`, each prepared source photo (per stages, photo, SMPL file and source options), and
  each driver's motion: in memory, and on disk in `motion_dir` (keyed by the driver's content hash,
  the options that change the motion, the HMR weights and the device), so later runs reuse it too.

Reused results are the very objects a lone job computes, so a job's output does not depend on what
ran before it in the same worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from impersonator_cli.api import ImitateOptions
from impersonator_cli.batch.spec import JobSpec, StageKey
from impersonator_cli.body.motion import MotionData, content_hash, load_motion, save_motion
from impersonator_cli.jobs.common import JobResult, Timings
from impersonator_cli.jobs.imitate import is_motion_file
from impersonator_cli.io.images import is_video_path
from impersonator_cli.types import Progress

MOTION_KEY_VERSION = "impersonate-motion-cache/1"
_MAX_SOURCES = 64  # prepared sources kept per worker (least recently used dropped first)


class Worker:
    """Runs `JobSpec`s (see the module doc). `counts` tallies loads, preparations and motions."""

    def __init__(self, reuse: bool = False, motion_dir: Optional[Path] = None) -> None:
        self.reuse, self.motion_dir = reuse, motion_dir
        self._stages: dict = {}
        self._sources: OrderedDict = OrderedDict()
        self._motions: dict = {}
        self._hmr_ids: dict = {}
        self._driver_hashes: dict = {}
        self.counts = {"stages_loaded": 0, "sources_prepared": 0, "sources_reused": 0,
                       "motions_extracted": 0, "motions_reused": 0}
        self.last_reuse: dict = {}
        self._times = Timings()

    def impersonator(self, key: StageKey):
        if key not in self._stages:
            self._stages[key] = key.load()
            self.counts["stages_loaded"] += 1
        return self._stages[key]

    def run(self, spec: JobSpec, progress: Progress | None = None,
            tune_progress: Progress | None = None) -> JobResult:
        """Run one job (typed errors propagate, as from the API). Its timings start with `load`: the
        seconds spent loading networks for it (0 when they were loaded already)."""
        start = time.perf_counter()
        imp = self.impersonator(spec.stages)
        load = time.perf_counter() - start
        self.last_reuse, self._times = {}, Timings()
        result = self._run(imp, spec, progress, tune_progress)
        timings = {"load": load, **result.timings}
        for phase, seconds in self._times.items():  # work done here for the job (sources, motion)
            timings[phase] = timings.get(phase, 0.0) + seconds
        result.timings = timings
        return result

    def _run(self, imp, spec: JobSpec, progress: Progress | None, tune_progress: Progress | None) -> JobResult:
        call = dict(spec.call)
        if spec.kind == "imitate":
            if self.reuse:
                call = self._reusing_imitate(imp, spec.stages, call)
            return imp.imitate(output=spec.output, progress=progress, tune_progress=tune_progress, **call)
        if spec.kind == "swap":
            if self.reuse:
                for role, smpl in (("source", "source_smpl"), ("reference", "reference_smpl")):
                    if not is_video_path(call[role]):
                        call[role] = self._source(imp, spec.stages, call[role], call.pop(smpl), call["source_options"])
                        call[smpl] = None
            return imp.swap(output=spec.output, progress=progress, tune_progress=tune_progress, **call)
        if self.reuse:
            call["source"] = self._source(imp, spec.stages, call["source"], call.pop("source_smpl"),
                                          call["source_options"])
            call["source_smpl"] = None
        return imp.novel_view(output=spec.output, progress=progress, tune_progress=tune_progress, **call)

    # ------------------------------------------------------------------ reuse

    def _reusing_imitate(self, imp, key: StageKey, call: dict) -> dict:
        smpls = list(call.pop("source_smpl", ())) or [None] * len(call["sources"])
        if len(smpls) != len(call["sources"]):  # let the API report the mismatch
            return {**call, "source_smpl": smpls}
        call["sources"] = [self._source(imp, key, s, smpl, call["source_options"])
                           for s, smpl in zip(call["sources"], smpls)]
        call["motion"] = self._motion(imp, key, Path(call["driver"]), call["options"])
        return call

    def _source(self, imp, key: StageKey, photo, smpl, options):
        cache_key = (key, str(photo), None if smpl is None else str(smpl), options)
        if cache_key in self._sources:
            self._sources.move_to_end(cache_key)
            self.counts["sources_reused"] += 1
            self.last_reuse.setdefault("sources", []).append("reused")
            return self._sources[cache_key]
        with self._times.phase("prepare"):
            prepared = imp.prepare(photo, smpl=smpl, options=options)
        self._sources[cache_key] = prepared
        if len(self._sources) > _MAX_SOURCES:
            self._sources.popitem(last=False)
        self.counts["sources_prepared"] += 1
        self.last_reuse.setdefault("sources", []).append("prepared")
        return prepared

    def _motion(self, imp, key: StageKey, driver: Path, options: ImitateOptions) -> Optional[MotionData]:
        if is_motion_file(driver):
            return None  # the job reads (and slices) the file itself: nothing to save
        digest = self._motion_key(imp, key, driver, options)
        if digest in self._motions:
            self.counts["motions_reused"] += 1
            self.last_reuse["motion"] = "memory"
            return self._motions[digest]
        with self._times.phase("motion"), self._motion_lock(digest):
            motion, how = self._motion_from_disk(digest), "disk"
            if motion is None:
                motion, how = imp.driver_motion(driver, options), "extracted"
                self._motion_to_disk(digest, motion)
        self.counts["motions_extracted" if how == "extracted" else "motions_reused"] += 1
        self.last_reuse["motion"] = how
        self._motions[digest] = motion
        return motion

    def _motion_key(self, imp, key: StageKey, driver: Path, options: ImitateOptions) -> str:
        """What the recovered motion depends on: the driver's bytes, the frames chosen, the HMR batch
        (the box tracker follows batches), the HMR weights and the device they run on."""
        if key not in self._hmr_ids:
            from impersonator_cli.tune.cache import module_fingerprint

            self._hmr_ids[key] = module_fingerprint(imp.body.hmr())
        parts = {"version": MOTION_KEY_VERSION, "driver": self._driver_hash(driver), "start": options.start,
                 "duration": options.duration, "max_frames": options.max_frames,
                 "batch_size": options.batch_size, "hmr": self._hmr_ids[key], "device": str(imp.runtime.device)}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _driver_hash(self, driver: Path) -> str:
        """The driver's content hash, read once per file version (path, size and mtime) in this worker:
        jobs that share a driver do not re-read it. A frame folder is hashed each time (its own mtime
        does not change when a frame is edited in place)."""
        if driver.is_dir():
            return content_hash(driver)
        stat = driver.stat()
        version = (str(driver.resolve()), stat.st_size, stat.st_mtime_ns)
        if version not in self._driver_hashes:
            self._driver_hashes[version] = content_hash(driver)
        return self._driver_hashes[version]

    @contextlib.contextmanager
    def _motion_lock(self, digest: str):
        """Workers sharing `motion_dir` extract each motion once: the others wait, then read it."""
        if self.motion_dir is None:
            yield
            return
        self.motion_dir.mkdir(parents=True, exist_ok=True)
        with open(self.motion_dir / f"{digest}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _motion_from_disk(self, digest: str) -> Optional[MotionData]:
        path = None if self.motion_dir is None else self.motion_dir / f"{digest}.motion.npz"
        if path is None or not path.is_file():
            return None
        try:
            return load_motion(path)
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
            return None

    def _motion_to_disk(self, digest: str, motion: MotionData) -> None:
        if self.motion_dir is not None:
            save_motion(self.motion_dir / f"{digest}.motion.npz", motion, overwrite=True)
