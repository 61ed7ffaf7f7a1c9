"""The Python API: load the stages once, then imitate / swap / novel_view as often as needed.

    from impersonator_cli import Impersonator, ImitateOptions
    imp = Impersonator(weights_dir="weights", device="auto")
    imp.imitate(["me.jpg"], "dance.mp4", "out.mp4", options=ImitateOptions(layout="side-by-side"))

This module only loads and dispatches: each job lives in its own module of `jobs/`. Nothing here
prints, exits or parses argv; errors are the typed errors of `errors.py`; progress is reported
through optional callbacks `progress(done, total)`, counted in frames (`tune_progress`: in
personalization steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from impersonator_cli.body.motion import MotionData
from impersonator_cli.jobs import imitate as imitate_job
from impersonator_cli.jobs import novelview as novelview_job
from impersonator_cli.jobs import swap as swap_job
from impersonator_cli.jobs.common import JobResult, Source, prepare
from impersonator_cli.jobs.imitate import ImitateOptions, check_imitate
from impersonator_cli.jobs.motion import extract_motion_file
from impersonator_cli.jobs.novelview import NovelViewOptions, check_novel_view
from impersonator_cli.jobs.swap import check_swap
from impersonator_cli.pipeline.source import PreparedSource, SourceOptions
from impersonator_cli.defaults import DEFAULT_SIZE
from impersonator_cli.pipeline.stages import Stages, load_stages
from impersonator_cli.tune import jobs as tuning
from impersonator_cli.tune.jobs import PersonalizeOptions
from impersonator_cli.types import PathLike, Progress
from impersonator_cli.weights.registry import DEFAULT_GENERATOR

__all__ = ["Impersonator", "ImitateOptions", "JobResult", "NovelViewOptions", "PersonalizeOptions", "SourceOptions",
           "check_imitate", "check_novel_view", "check_swap", "extract_motion_file"]


class Impersonator:
    """Loads the body model, generator and inpaintor once; every job reuses them.

    generator: a registry name (default: the official iPER+DeepFashion+Places generator), a path to a
    converted or official checkpoint, or "none" for the warp-only baseline (no GAN weights needed).
    """

    def __init__(self, weights_dir: PathLike | None = None, device: str = "auto", precision: str = "auto",
                 generator: str = DEFAULT_GENERATOR, size: int = DEFAULT_SIZE, inpaint: bool = True,
                 renderer: str = "auto") -> None:
        self.stages: Stages = load_stages(weights_dir, device, precision, generator, size, inpaint, renderer)
        self.weights_dir, self.runtime, self.size = self.stages.weights_dir, self.stages.runtime, self.stages.size
        self.body, self.synth, self.inpaintor = self.stages.body, self.stages.synth, self.stages.inpaintor

    def prepare(self, source: PathLike, *, smpl: PathLike | None = None,
                options: SourceOptions = SourceOptions()) -> PreparedSource:
        """Per-source work (body, crop, maps, masks, background), to reuse a source across jobs.
        `smpl`: a motion file whose first frame is the source's SMPL (instead of HMR)."""
        return prepare(self.stages, source, smpl, options)

    def personalize(self, src: PreparedSource, options: PersonalizeOptions = PersonalizeOptions(),
                    motion_cams: np.ndarray | None = None, motion_poses: np.ndarray | None = None,
                    progress: Progress | None = None):
        """Fine-tune the generator on one source, in place (see `tuned` to undo it after a job)."""
        return tuning.for_source(self.stages, src, options, motion_cams, motion_poses, progress)

    def tuned(self, active: bool = True):
        """Restore the generator's weights when the block ends (see `Stages.tuned`)."""
        return self.stages.tuned(active)

    # ------------------------------------------------------------------ jobs

    def imitate(self, sources: Sequence[Source], driver: PathLike, output: PathLike, *,
                options: ImitateOptions = ImitateOptions(), source_smpl: Sequence[PathLike] = (),
                source_options: SourceOptions = SourceOptions(), overwrite: bool = False,
                progress: Progress | None = None, personalize: PersonalizeOptions | None = None,
                tune_progress: Progress | None = None, motion: MotionData | None = None) -> JobResult:
        """The source person(s) perform the driver's motion; writes a video at the driver's frame rate.
        `sources`: photos or prepared sources (`source_smpl`: one SMPL motion file per photo).
        `motion`: the driver's motion from `driver_motion` (same driver and options), to reuse it."""
        return imitate_job.imitate(self.stages, sources, driver, output, options=options, source_smpl=source_smpl,
                                   source_options=source_options, overwrite=overwrite, progress=progress, personalize=personalize,
                                   tune_progress=tune_progress, motion=motion)

    def driver_motion(self, driver: PathLike, options: ImitateOptions = ImitateOptions(),
                      progress: Progress | None = None) -> MotionData:
        """The driver's motion exactly as `imitate` recovers it with these options (from a motion file:
        its slice), to pass to many `imitate` calls."""
        return imitate_job.driver_motion(self.body, Path(driver), options, progress)

    def swap(self, source: Source, reference: Source, output: PathLike, *, parts: str | Sequence[str] = "body",
             front_warp: bool = False, source_smpl: PathLike | None = None, reference_smpl: PathLike | None = None,
             source_options: SourceOptions = SourceOptions(), overwrite: bool = False,
             progress: Progress | None = None, personalize: PersonalizeOptions | None = None,
             tune_progress: Progress | None = None) -> JobResult:
        """The source person wearing the reference person's `parts`: one image, or a video when the
        source is a video (its frame rate and audio kept). `personalize`: the official swap post-tune
        on the (source, reference) pair first (spec §5.3); for a source video the pair is its first
        frame with a person and the reference, and the tuned generator renders every frame.
        `progress` counts a video's frames (a photo's tuning steps when `tune_progress` is None)."""
        return swap_job.swap(self.stages, source, reference, output, parts=parts, front_warp=front_warp,
                             source_smpl=source_smpl, reference_smpl=reference_smpl, source_options=source_options,
                             overwrite=overwrite, progress=progress, personalize=personalize,
                             tune_progress=tune_progress)

    def novel_view(self, source: Source, output: PathLike, *, options: NovelViewOptions = NovelViewOptions(),
                   source_smpl: PathLike | None = None, source_options: SourceOptions = SourceOptions(),
                   overwrite: bool = False, progress: Progress | None = None,
                   personalize: PersonalizeOptions | None = None, tune_progress: Progress | None = None) -> JobResult:
        """The source person from other viewpoints: an orbit video, or an image of one view (yaw/pitch)."""
        return novelview_job.novel_view(self.stages, source, output, options=options, source_smpl=source_smpl,
                                        source_options=source_options, overwrite=overwrite, progress=progress,
                                        personalize=personalize, tune_progress=tune_progress)
