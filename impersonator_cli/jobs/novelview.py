"""Novel view synthesis (spec §3.8): the source person's posed mesh rotated rigidly, rendered with the
source camera, and synthesized from the source's own appearance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from impersonator_cli.body.camera import orbit_angles, rotate_vertices
from impersonator_cli.body.rotation import euler_to_matrix
from impersonator_cli.pipeline.rig import BodyModel
from impersonator_cli.pipeline.compose import synthesize
from impersonator_cli.render.body_view import BodyView, view_vertices
from impersonator_cli.errors import UsageError, check_option
from impersonator_cli.io.images import write_image
from impersonator_cli.io.encode import VideoWriter
from impersonator_cli.jobs.common import (
    IMAGE_SUFFIXES, VIDEO_SUFFIXES, JobResult, Source, Timings, output_path, prepare, ran_with, source_notes,
    tuning_notes,
)
from impersonator_cli.pipeline.background import to_uint8_frames
from impersonator_cli.pipeline.source import PreparedSource, SourceOptions
from impersonator_cli.pipeline.stages import Stages
from impersonator_cli.tune import jobs as tuning
from impersonator_cli.tune.jobs import PersonalizeOptions
from impersonator_cli.types import PathLike, Progress


def view_angles(frames: int = 0, yaw: Sequence[float] = (), pitch: Sequence[float] = ()) -> np.ndarray:
    """K x 3 radians (alpha about x = pitch, beta about y = yaw, gamma = 0).

    Either an orbit of `frames` views (yaw 0..360 deg) or the given yaw/pitch lists in degrees
    (a single pitch or yaw is repeated to the other list's length)."""
    if yaw or pitch:
        yaw, pitch = list(yaw) or [0.0], list(pitch) or [0.0]
        n = max(len(yaw), len(pitch))
        yaw = yaw * n if len(yaw) == 1 else yaw
        pitch = pitch * n if len(pitch) == 1 else pitch
        if len(yaw) != len(pitch):
            raise UsageError(f"{len(yaw)} yaw and {len(pitch)} pitch angles were given",
                             hint="Give one pitch, one yaw, or equally many of each (--yaw/--pitch).")
        return np.array([[math.radians(p), math.radians(y), 0.0] for y, p in zip(yaw, pitch)])
    return orbit_angles(max(1, frames)).numpy()


def source_vertices(body: BodyModel, src: PreparedSource, tpose: bool) -> Tensor:
    """The source's posed vertices (1 x V x 3), optionally with every body joint at rest (T-pose)."""
    if not tpose:
        return src.view.vertices
    pose = src.pose.clone()
    pose[:, 3:] = 0
    with torch.no_grad():
        return body.smpl(pose, src.shape).vertices


def rotated_views(body: BodyModel, src: PreparedSource, vertices: Tensor, angles: np.ndarray, size: int) -> BodyView:
    """The mesh rotated by each (alpha, beta, gamma) about the body frame's origin: V' = V R."""
    rots = torch.stack([euler_to_matrix(*map(float, a)) for a in angles]).to(vertices)
    verts = rotate_vertices(vertices.expand(len(angles), -1, -1), rots)
    cam = src.cam.expand(len(angles), -1)
    return view_vertices(verts, cam, body.faces, size, body.rasterizer)


def render_views(body: BodyModel, synth, src: PreparedSource, feats, angles: np.ndarray, size: int,
                 batch_size: int = 4, tpose: bool = False, background: Tensor | None = None,
                 use_front_warp: bool = False):
    """Yield B x 3 x N x N frames in [-1, 1] for the views, `batch_size` at a time."""
    vertices = source_vertices(body, src, tpose)
    bg = src.background if background is None else background
    for start in range(0, len(angles), max(1, batch_size)):
        views = rotated_views(body, src, vertices, angles[start:start + batch_size], size)
        yield synthesize(body, synth, [src], [feats], views, bg, use_front_warp)


@dataclass(frozen=True)
class NovelViewOptions:
    """Which views (an orbit of `frames`, or the given yaw/pitch in degrees) and how they are written."""

    frames: int = 90
    yaw: Sequence[float] = ()
    pitch: Sequence[float] = ()
    tpose: bool = False
    fps: float = 25
    batch_size: int = 4
    front_warp: bool = False
    crf: int = 18

    def __post_init__(self) -> None:
        """Every value checked here, before any weight or file is read (UsageError naming it)."""
        check_option(self.frames >= 1, "frames", "at least 1", self.frames)
        check_option(self.fps > 0, "fps", "more than 0", self.fps)
        check_option(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        check_option(0 <= self.crf <= 51, "crf", "in 0..51", self.crf)
        angles = [*self.yaw, *self.pitch]
        check_option(all(math.isfinite(a) for a in angles), "yaw", "finite degrees", angles)
        view_angles(self.frames, self.yaw, self.pitch)  # yaw and pitch counts that pair up


def check_novel_view(output: PathLike, options: NovelViewOptions, overwrite: bool) -> tuple[Path, np.ndarray]:
    """Everything about a novel_view call checked without reading a file; -> (output, view angles)."""
    output = output_path(output, overwrite, VIDEO_SUFFIXES + IMAGE_SUFFIXES)
    angles = view_angles(options.frames, options.yaw, options.pitch)
    if output.suffix.lower() in IMAGE_SUFFIXES and len(angles) != 1:
        raise UsageError(f"An image output holds one view, but {len(angles)} were asked for",
                         hint="Give one --yaw/--pitch for an image, or write a video (.mp4).")
    return output, angles


def novel_view(stages: Stages, source: Source, output: PathLike, *, options: NovelViewOptions = NovelViewOptions(),
               source_smpl: PathLike | None = None, source_options: SourceOptions = SourceOptions(),
               overwrite: bool = False, progress: Progress | None = None, personalize: PersonalizeOptions | None = None,
               tune_progress: Progress | None = None) -> JobResult:
    """The source person from other viewpoints: an orbit video, or an image of one view.
    `personalize`: tune the generator on the source first (built-in target poses), for this job only."""
    output, angles = check_novel_view(output, options, overwrite)
    is_image = output.suffix.lower() in IMAGE_SUFFIXES
    timings = Timings()
    with timings.phase("prepare"):
        src = prepare(stages, source, source_smpl, source_options)
    rate = Fraction(options.fps).limit_denominator(1001)
    notes = []
    with stages.tuned(personalize is not None):
        if personalize is not None:
            with timings.phase("personalize"):
                notes += tuning_notes(tuning.for_source(stages, src, personalize, progress=tune_progress))
        with timings.phase("render_encode"):
            batches = render_views(stages.body, stages.synth, src, stages.encode([src])[0], angles, stages.size,
                                   options.batch_size, options.tpose, use_front_warp=options.front_warp)
            if is_image:
                write_image(output, to_uint8_frames(next(batches))[0], overwrite=overwrite)
            else:
                _write_video(output, batches, rate, options.crf, overwrite, len(angles), progress)
    return JobResult(output=output, frames=len(angles), fps=None if is_image else rate,
                     size=(stages.size, stages.size), timings=dict(timings), warnings=source_notes([src]) + notes,
                     **ran_with(stages))


def _write_video(output: Path, batches: Iterator[Tensor], fps: Fraction, crf: int, overwrite: bool, total: int,
                 progress: Progress | None) -> None:
    done = 0
    with VideoWriter(output, fps, crf=crf, overwrite=overwrite) as writer:
        for images in batches:
            for frame in to_uint8_frames(images):
                writer.write(frame)
            done += images.shape[0]
            if progress is not None:
                progress(done, total)
