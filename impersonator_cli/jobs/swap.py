"""Appearance transfer (spec §3.7): the source person, in the source pose and background, wearing the
reference person's selected body parts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from torch import Tensor

from impersonator_cli.body.motion import MotionData
from impersonator_cli.errors import InputError
from impersonator_cli.io.images import is_video_path, write_image
from impersonator_cli.io.encode import VideoWriter
from impersonator_cli.io.video import read_frames
from impersonator_cli.jobs.common import (
    IMAGE_SUFFIXES, VIDEO_SUFFIXES, JobResult, Source, Timings, existing, output_path, prepare, ran_with, source_notes,
    tuning_notes,
)
from impersonator_cli.jobs.imitate import ImitateOptions, driver_motion, output_holds, vfr_note
from impersonator_cli.pipeline.background import to_uint8_frames
from impersonator_cli.pipeline.source import SourceOptions
from impersonator_cli.pipeline.stages import Stages
from impersonator_cli.tune import jobs as tuning
from impersonator_cli.tune.jobs import PersonalizeOptions
from impersonator_cli.types import PathLike, Progress

from impersonator_cli.pipeline.rig import BodyModel
from impersonator_cli.render.flow import swap_flows
from impersonator_cli.pipeline.compose import flow_composition
from impersonator_cli.pipeline.source import PreparedSource


def swap_image(body: BodyModel, synth, src: PreparedSource, ref: PreparedSource, src_feats, ref_feats,
               parts: str | Sequence[str], use_front_warp: bool = False) -> Tensor:
    """One swapped image, 1 x 3 x N x N in [-1, 1]. parts: body | all | head | upper | lower | names."""
    fim = src.view.raster.face_index
    part_map = body.maps.render_parts(fim)
    flows = swap_flows(src.view.raster, part_map, ref.view.p2verts, parts, body.maps.face_part,
                       body.maps.part_names)
    stage2 = flow_composition(body.maps, [ref.image, src.image], [ref.view, src.view], src.view,
                              flows=[flows.T21, flows.T11], masks=[flows.src_part_mask, flows.src_left_mask])
    frames = synth.render([ref_feats, src_feats], stage2.warped, stage2.cond, stage2.flows, src.background)
    if not use_front_warp:
        return frames.image
    front = body.maps.render_front(fim)  # the official swap copies the SOURCE's own front face
    return (1 - front) * frames.image + src.image * front * (1 - frames.attention)


def check_swap(source: Source, reference: Source, output: PathLike, overwrite: bool) -> Path:
    """Everything about a swap call checked without reading a file; -> the output path (an image, or a
    video when the source is a video)."""
    for what, item in (("source", source), ("reference", reference)):
        if not isinstance(item, PreparedSource):
            existing(item, what)
    video = not isinstance(source, PreparedSource) and is_video_path(source)
    return output_path(output, overwrite, VIDEO_SUFFIXES if video else IMAGE_SUFFIXES)


def swap(stages: Stages, source: Source, reference: Source, output: PathLike, *,
         parts: str | Sequence[str] = "body", front_warp: bool = False, source_smpl: PathLike | None = None,
         reference_smpl: PathLike | None = None, source_options: SourceOptions = SourceOptions(),
         overwrite: bool = False, progress: Progress | None = None, personalize: PersonalizeOptions | None = None,
         tune_progress: Progress | None = None) -> JobResult:
    """The source person wearing the reference person's `parts`: one image, or a video (its frame rate
    and audio kept) when the source is a video. `personalize`: tune the generator on the pair first (for
    a video, its first frame with a person; spec §5.3), for this job only. `progress` counts a video's
    frames, `tune_progress` tuning steps (for a photo, `progress` does when `tune_progress` is None)."""
    output = check_swap(source, reference, output, overwrite)
    if not isinstance(source, PreparedSource) and is_video_path(source):
        return swap_video(stages, Path(source), reference, output, parts=parts,
                          front_warp=front_warp, reference_smpl=reference_smpl, source_options=source_options,
                          overwrite=overwrite, progress=progress, personalize=personalize,
                          tune_progress=tune_progress)
    timings = Timings()
    with timings.phase("prepare"):
        src = prepare(stages, source, source_smpl, source_options)
        ref = prepare(stages, reference, reference_smpl, source_options, "reference photo")
    notes = []
    with stages.tuned(personalize is not None):
        if personalize is not None:
            steps = progress if tune_progress is None else tune_progress
            with timings.phase("personalize"):
                notes += tuning_notes(tuning.for_pair(stages, src, ref, personalize, front_warp, steps))
        with timings.phase("render_encode"):
            src_feats, ref_feats = stages.encode([src, ref])
            image = swap_image(stages.body, stages.synth, src, ref, src_feats, ref_feats, parts, front_warp)
            write_image(output, to_uint8_frames(image)[0], overwrite=overwrite)
    return JobResult(output=output, frames=1, fps=None, size=(stages.size, stages.size), timings=dict(timings),
                     warnings=source_notes([src, ref]) + notes, **ran_with(stages))


def swap_video(stages: Stages, source: Path, reference: Source, output: Path, *, parts, front_warp: bool,
               reference_smpl: PathLike | None, source_options: SourceOptions, overwrite: bool,
               progress: Progress | None, personalize: PersonalizeOptions | None = None,
               tune_progress: Progress | None = None) -> JobResult:
    """Swap on every frame of a source video: bodies by HMR tracking, the whole (letterboxed) frame.
    `source` and `output` as `check_swap` checked them."""
    ref = prepare(stages, reference, reference_smpl, source_options, "reference photo")
    motion = driver_motion(stages.body, source, ImitateOptions(), None, role="source video")
    notes = []
    with stages.tuned(personalize is not None):
        if personalize is not None:
            index, rgb = first_person_frame(source, motion)
            first = stages.prepare_frame(rgb, source, motion.thetas[index].astype(np.float64), source_options)
            notes += tuning_notes(tuning.for_pair(stages, first, ref, personalize, front_warp, tune_progress))
        done = _write_swap_video(stages, source, ref, output, motion, parts, front_warp, source_options,
                                 overwrite, progress)
    return JobResult(output=output, frames=done, fps=motion.fps, size=(stages.size, stages.size),
                     warnings=source_notes([ref]) + notes + vfr_note(motion), missing_frames=list(motion.missing),
                     **ran_with(stages))


def _write_swap_video(stages: Stages, source: Path, ref: PreparedSource, output: Path, motion: MotionData,
                      parts, front_warp: bool, source_options: SourceOptions, overwrite: bool,
                      progress: Progress | None) -> int:
    """Prepare, swap and encode each frame of `source` in turn (a variable-rate video's frames held for
    their own durations); -> the number of frames written."""
    ref_feats = stages.encode([ref])[0]
    holds = output_holds(motion)
    seconds = float(holds.sum() / motion.fps)
    with VideoWriter(output, motion.fps, audio_from=source, audio_duration=seconds, overwrite=overwrite,
                     length=seconds) as writer, read_frames(source, max_frames=motion.frame_count) as frames:
        for i, (rgb, theta, hold) in enumerate(zip(frames, motion.thetas.astype(np.float64), holds.tolist())):
            src = stages.prepare_frame(rgb, source, theta, source_options)
            image = swap_image(stages.body, stages.synth, src, ref, stages.encode([src])[0], ref_feats, parts,
                               front_warp)
            writer.write(np.repeat(to_uint8_frames(image)[0][None], hold, axis=0))
            if progress is not None:
                progress(i + 1, motion.frame_count)
    return writer.frames_written


def first_person_frame(source: Path, motion: MotionData) -> tuple[int, np.ndarray]:
    """The first frame of a source video whose body was found (index, RGB H x W x 3), to personalize on."""
    missing = set(motion.missing)
    index = next((i for i in range(motion.frame_count) if i not in missing), None)
    if index is None:
        raise InputError(f"No person was found in any frame of {source}, so there is nothing to personalize on",
                         hint="Check that the video shows one person, whole and in view, or drop --personalize.")
    with read_frames(source, max_frames=index + 1) as frames:
        for i, rgb in enumerate(frames):
            if i == index:
                return index, rgb
    raise InputError(f"{source} ended before frame {index}, which its body tracking read",
                     hint="The file may have changed while it was read; run the command again.")
