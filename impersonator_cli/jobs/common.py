"""What every job shares at its edges: the paths and sources it was given, and the result it returns."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from impersonator_cli.errors import InputError, OutputError, UsageError
from impersonator_cli.body.motion import load_motion
from impersonator_cli.pipeline.source import PreparedSource, SourceOptions
from impersonator_cli.pipeline.stages import Stages
from impersonator_cli.types import PathLike

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
Source = Union[PathLike, PreparedSource]  # a photo, or one prepared already (to reuse it across jobs)


@dataclass
class JobResult:
    """What a job produced: paths, counts and timings (also the CLI's --json summary)."""

    output: Path
    frames: int
    fps: Optional[Fraction]
    size: tuple[int, int]
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    missing_frames: list = field(default_factory=list)
    precision: str = ""  # what the generator ran in: fp32, bf16 or fp16 (`ran_with`)
    precision_reason: str = ""  # why: the rule that chose it ("fp32: this CPU has no native bf16 (AVX2)")

    def to_dict(self) -> dict:
        return {"output": str(self.output), "frames": self.frames,
                "fps": None if self.fps is None else f"{self.fps.numerator}/{self.fps.denominator}",
                "fps_float": None if self.fps is None else float(self.fps), "width": self.size[0],
                "height": self.size[1], "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
                "warnings": list(self.warnings), "missing_frames": list(self.missing_frames),
                "precision": self.precision, "precision_reason": self.precision_reason}


def ran_with(stages: Stages) -> dict:
    """JobResult's precision fields: the precision the generator ran in and why. Body, rendering,
    flows and the inpaintor always run in float32; without a generator (warp-only) nothing else runs."""
    runtime = stages.runtime
    if getattr(stages.synth, "name", "") == "none":
        also = "" if runtime.precision == "fp32" else f" ({runtime.precision} would apply to the generator)"
        return {"precision": "fp32", "precision_reason": f"fp32: warp-only, no generator{also}"}
    return {"precision": runtime.precision, "precision_reason": runtime.reason}


def existing(path: PathLike, what: str) -> Path:
    """`path` as a Path; InputError naming `what` when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"The {what} does not exist", path=path, hint="Check the path (quote paths with spaces).")
    return path


def output_path(path: PathLike, overwrite: bool, suffixes: tuple[str, ...]) -> Path:
    """A writable output path with one of `suffixes`, checked before any work starts."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"Cannot write '{path.name}': use one of {', '.join(suffixes)}")
    if path.is_dir():
        raise OutputError("The output path is a folder", path=path, hint="Give a file name, e.g. out.mp4.")
    if path.exists() and not overwrite:
        raise OutputError("The output already exists", path=path, hint="Pass --overwrite or choose another name.")
    if not path.parent.exists():
        raise OutputError("The output folder does not exist", path=path.parent, hint="Create it first.")
    return path


def prepare(stages: Stages, source: Source, smpl: PathLike | None = None,
            options: SourceOptions = SourceOptions(), role: str = "source photo") -> PreparedSource:
    """A prepared source: `source` itself when prepared already, else the photo prepared with `options`
    (its body from HMR, or from `smpl`, a motion file whose first frame is the source's SMPL).
    `role` names the photo in errors ('source photo', 'reference photo')."""
    if isinstance(source, PreparedSource):
        return source
    theta = None if smpl is None else single_theta(Path(smpl))
    return stages.prepare(existing(source, role), theta, options, role)


def single_theta(path: Path) -> np.ndarray:
    """The first frame's 85 SMPL parameters (frame convention) of a motion file."""
    motion = load_motion(existing(path, "source SMPL file"))
    if motion.frame_count < 1:
        raise InputError("The SMPL file holds no frame", path=path)
    return motion.thetas[0].astype(np.float64)


def source_notes(sources: Sequence[PreparedSource]) -> list[str]:
    """Warnings about the sources worth a user's attention (a background inpainted without DeepFill)."""
    return [f"background of {s.name}: {s.background_note}" for s in sources if "not found" in s.background_note]


def tuning_notes(report) -> list[str]:
    """What a personalization did, for the job's warnings."""
    how = "reused from the cache" if report.cache_hit else f"{report.steps} steps in {report.seconds:.0f} s"
    return [f"personalization: {how}", *report.notes]


class Timings(dict):
    """Seconds per phase of a job (load, prepare, motion, personalize, render_encode ...)."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start
