"""Motion imitation: the source person performs the driver's motion, streamed to an encoded video.

Per source work happens once (source.py); the driver's motion comes from a motion file or is
recovered once (body/motion.py); then batches of frames are rendered, synthesized and encoded while
the next batch is computed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from impersonator_cli.body.camera import CAMERA_STRATEGIES, drive_cameras
from impersonator_cli.pipeline.rig import BodyModel
from impersonator_cli.body.motion import MotionData, extract_motion, load_motion
from impersonator_cli.body.smoothing import smooth_cameras, smooth_poses
from impersonator_cli.body.tracking import padded_frame_box, square_crop
from impersonator_cli.pipeline.background import to_uint8_frames
from impersonator_cli.pipeline.compose import synthesize
from impersonator_cli.errors import UsageError, check_option
from impersonator_cli.jobs.common import (
    VIDEO_SUFFIXES, JobResult, Source, Timings, existing, output_path, prepare, ran_with, source_notes, tuning_notes,
)
from impersonator_cli.io import timing
from impersonator_cli.io.images import is_image_path, resize_rgb
from impersonator_cli.render.body_view import view_body
from impersonator_cli.pipeline.source import PreparedSource, SourceOptions, paste_back
from impersonator_cli.pipeline.stages import Stages
from impersonator_cli.io.streaming import BackgroundWriter, prefetch
from impersonator_cli.io.encode import VideoWriter
from impersonator_cli.io.video import read_frames
from impersonator_cli.tune import jobs as tuning
from impersonator_cli.tune.jobs import PersonalizeOptions
from impersonator_cli.types import PathLike, Progress

LAYOUTS = ("result", "side-by-side")
FRAMES = ("crop", "source")


@dataclass(frozen=True)
class ImitateOptions:
    """Driver-side settings of `imitate` (per-source settings live in the API call)."""

    camera: str = "smooth"
    smooth: float = 0.0
    batch_size: int = 4
    front_warp: bool = False
    layout: str = "result"
    frame: str = "crop"  # crop: the square person crop at `size`; source: pasted back into the source photo
    start: float = 0.0
    duration: Optional[float] = None
    max_frames: Optional[int] = None
    crf: int = 18
    audio: bool = True
    audio_file: Optional[Path] = None

    def __post_init__(self) -> None:
        """Every value checked here, before any weight or file is read (UsageError naming it)."""
        check_option(self.camera in CAMERA_STRATEGIES, "camera", f"one of {', '.join(CAMERA_STRATEGIES)}", self.camera)
        check_option(self.layout in LAYOUTS, "layout", f"one of {', '.join(LAYOUTS)}", self.layout)
        check_option(self.frame in FRAMES, "frame", f"one of {', '.join(FRAMES)}", self.frame)
        check_option(self.smooth >= 0, "smooth", "0 (off) or more frames", self.smooth)
        check_option(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        check_option(self.start >= 0, "start", "0 or more seconds", self.start)
        check_option(self.duration is None or self.duration > 0, "duration", "more than 0 seconds", self.duration)
        check_option(self.max_frames is None or self.max_frames >= 1, "max_frames", "at least 1", self.max_frames)
        check_option(0 <= self.crf <= 51, "crf", "in 0..51", self.crf)


def is_motion_file(path: Path) -> bool:
    return path.name.lower().endswith(".npz")


def check_driver(driver: Path, options: ImitateOptions) -> None:
    """The options that depend on the kind of driver (its name only: nothing is read)."""
    if options.layout == "side-by-side" and is_motion_file(driver):
        raise UsageError("The side-by-side layout needs the driver's frames, but the driver is a motion file",
                         hint="Pass the driver video instead, or use layout 'result' (--layout result).")


def check_imitate(sources: Sequence[Source], driver: PathLike, output: PathLike, options: ImitateOptions,
                  source_smpl: Sequence[PathLike], overwrite: bool) -> tuple[Path, Path]:
    """Everything about an imitate call that can be checked without reading a file or loading a weight;
    -> (output, driver) paths."""
    output = output_path(output, overwrite, VIDEO_SUFFIXES)
    driver = existing(driver, "driver")
    check_driver(driver, options)
    if not sources:
        raise UsageError("imitate needs at least one source image (--source)")
    if source_smpl and len(source_smpl) != len(sources):
        raise UsageError(f"{len(sources)} sources but {len(source_smpl)} source SMPL files",
                         hint="Give one --source-smpl per --source, or none.")
    if options.audio_file is not None:
        existing(options.audio_file, "audio file")
    return output, driver


def driver_motion(body: BodyModel, driver: Path, options: ImitateOptions, progress: Progress | None,
                  role: str = "driver") -> MotionData:
    """The driver's motion: loaded from a motion file (sliced by start/duration/max_frames) or recovered
    (`role` names the video in messages)."""
    if is_motion_file(driver):
        return _slice_motion(load_motion(driver), options)
    return extract_motion(driver, body.hmr(), body.smpl, batch_size=max(1, options.batch_size),
                          max_frames=options.max_frames, start=options.start, duration=options.duration,
                          smooth_sigma=0.0, progress=progress, role=role)


def _motion_range(motion: MotionData, options: ImitateOptions) -> tuple[int, int]:
    """[first, last) frames of a motion file kept by start/duration/max_frames (seconds from its first frame)."""
    if motion.times is not None:
        index = timing.select(motion.times - motion.times[0], options.start, options.duration, options.max_frames)
        return (int(index[0]), int(index[-1]) + 1) if len(index) else (0, 0)
    first = int(round(options.start * motion.fps))
    last = motion.frame_count
    if options.duration is not None:
        last = min(last, first + int(round(options.duration * motion.fps)))
    if options.max_frames is not None:
        last = min(last, first + options.max_frames)
    return first, last


def _slice_motion(motion: MotionData, options: ImitateOptions) -> MotionData:
    first, last = _motion_range(motion, options)
    if first >= last:
        raise UsageError(f"The motion file has {motion.frame_count} frames: none is left after start "
                         f"{options.start} s, duration {options.duration} s and max_frames {options.max_frames}")
    keep = slice(first, last)
    missing = tuple(i - first for i in motion.missing if first <= i < last)
    times = None if motion.times is None else motion.times[keep]
    start = motion.start + first / motion.fps if times is None else float(times[0])
    return MotionData(cams=motion.cams[keep], poses=motion.poses[keep], shapes=motion.shapes[keep],
                      boxes=motion.boxes[keep], fps=motion.fps, frame_size=motion.frame_size,
                      content_hash=motion.content_hash, missing=missing, smooth_sigma=motion.smooth_sigma,
                      start=start, source_name=motion.source_name, times=times)


def audio_source(driver: Path, options: ImitateOptions) -> Optional[Path]:
    """Where the output's sound comes from: --audio-file, else the driver when it is a media file (a
    motion file, a frame folder or one image has no sound)."""
    if options.audio_file:
        return Path(options.audio_file)
    has_sound = driver.is_file() and not is_motion_file(driver) and not is_image_path(driver)
    return driver if options.audio and has_sound else None


def audio_note(driver: Path, options: ImitateOptions) -> list[str]:
    """Say so when the driver's sound was asked for (the default) but it has none to give."""
    if not options.audio or audio_source(driver, options) is not None:
        return []
    kind = "a folder of frames" if driver.is_dir() else "a motion file" if is_motion_file(driver) else "an image"
    return [f"the driver is {kind}, which has no sound: the output is silent (an audio file adds a soundtrack)"]


def output_holds(motion: MotionData) -> np.ndarray:
    """Output frames per driver frame: all ones at a constant rate; a variable-rate driver's frames
    are held on the constant `motion.fps` output for their own durations (io/timing.py)."""
    if motion.times is None:
        return np.ones(motion.frame_count, np.int64)
    return timing.hold_counts(motion.times, motion.fps)


def vfr_note(motion: MotionData) -> list[str]:
    """A warning telling how a variable-rate driver was shown (empty for a constant rate)."""
    if motion.times is None:
        return []
    holds = output_holds(motion)
    seconds = int(holds.sum()) / float(motion.fps)
    return [f"the driver has a variable frame rate: its {motion.frame_count} frames ({seconds:.2f} s) are each "
            f"shown at their own time on a constant {float(motion.fps):g} fps output of {int(holds.sum())} "
            "frames (slower stretches hold their frames longer)"]


def driving_bodies(src: PreparedSource, motion: MotionData, options: ImitateOptions) -> tuple[np.ndarray, np.ndarray]:
    """(cams T x 3, poses T x 72) driving the source: optional smoothing, then the camera strategy."""
    cams, poses = motion.cams.astype(np.float64), motion.poses.astype(np.float64)
    if options.smooth > 0:
        cams, poses = smooth_cameras(cams, options.smooth), smooth_poses(poses, options.smooth)
    driven = drive_cameras(src.cam[0].double().cpu(), torch.from_numpy(cams), options.camera)
    return driven.numpy(), poses


def _driver_panels(driver: Path, motion: MotionData, options: ImitateOptions, size: int) -> Iterator[np.ndarray]:
    """Driver frames letterboxed to squares of `size` (for the side-by-side layout)."""
    frames = read_frames(driver, start=options.start, duration=options.duration, max_frames=motion.frame_count)
    with frames:
        for frame in frames:
            box = padded_frame_box(frame.shape[1], frame.shape[0])
            yield resize_rgb(square_crop(frame, box), (size, size))


def render_imitation(body: BodyModel, synth, sources: Sequence[PreparedSource], feats: Sequence[object],
                     cams: np.ndarray, poses: np.ndarray, size: int, options: ImitateOptions,
                     emit: Callable[[list], None], progress: Progress | None = None) -> None:
    """Render every driving body in batches and hand uint8 frames to `emit`."""
    total, step = len(poses), max(1, options.batch_size)
    device = body.device
    shape = sources[0].shape
    for start in range(0, total, step):
        cam_b = torch.from_numpy(cams[start:start + step]).float().to(device)
        pose_b = torch.from_numpy(poses[start:start + step]).float().to(device)
        target = view_body(body.smpl, cam_b, pose_b, shape, size, body.rasterizer)
        images = synthesize(body, synth, sources, feats, target, sources[0].background, options.front_warp)
        emit(to_uint8_frames(images))
        if progress is not None:
            progress(min(start + step, total), total)


def write_imitation(body: BodyModel, synth, sources: Sequence[PreparedSource], feats: Sequence[object],
                    driver: Path, motion: MotionData, output: Path, size: int, options: ImitateOptions,
                    overwrite: bool, progress: Progress | None = None) -> JobResult:
    """Render and encode the whole imitation to `output` (atomic: no partial file on failure)."""
    check_driver(driver, options)
    side = options.layout == "side-by-side"
    src = sources[0]
    in_photo = options.frame == "source"
    out_w, out_h = src.frame_size if in_photo else (size, size)
    cams, poses = driving_bodies(sources[0], motion, options)
    audio_from = audio_source(driver, options)
    holds = output_holds(motion)
    duration = int(holds.sum()) / motion.fps
    # The driver's clock (also right for an --audio-file of the driver): a VFR driver's audio starts
    # at its first kept frame.
    audio_start = motion.start if motion.times is None else float(motion.times[0])
    t0 = time.perf_counter()
    writer = VideoWriter(output, motion.fps, crf=options.crf, audio_from=audio_from, audio_start=audio_start,
                         audio_duration=float(duration), overwrite=overwrite, length=float(duration))
    panels = prefetch(_driver_panels(driver, motion, options, out_h)) if side else None
    held = iter(holds.tolist())
    with writer, BackgroundWriter(lambda frames: [writer.write(f) for f in frames]) as queue:
        def emit(frames: list) -> None:
            if in_photo:
                frames = [paste_back(src.frame, f, src.box) for f in frames]
            if panels is not None:
                frames = [np.concatenate([next(panels), f], axis=1) for f in frames]
            queue.put([f for f in frames for _ in range(next(held))])

        render_imitation(body, synth, sources, feats, cams, poses, size, options, emit, progress)
    return JobResult(output=Path(output), frames=int(holds.sum()), fps=motion.fps,
                     size=(out_w + (out_h if side else 0), out_h),
                     timings={"render_encode": time.perf_counter() - t0},
                     missing_frames=list(motion.missing))


def imitate(stages: Stages, sources: Sequence[Source], driver: PathLike, output: PathLike, *,
            options: ImitateOptions = ImitateOptions(), source_smpl: Sequence[PathLike] = (),
            source_options: SourceOptions = SourceOptions(), overwrite: bool = False,
            progress: Progress | None = None, personalize: PersonalizeOptions | None = None,
            tune_progress: Progress | None = None, motion: MotionData | None = None) -> JobResult:
    """The source person(s) perform the driver's motion; writes a video at the driver's frame rate.

    `personalize`: tune the generator on the first source first, with target poses from the driver's
    motion (it stays tuned for this job only); `tune_progress` counts its steps. `motion`: the driver's
    motion recovered already (`driver_motion` with the same options), to reuse it across jobs."""
    output, driver = check_imitate(sources, driver, output, options, source_smpl, overwrite)
    smpls = list(source_smpl) or [None] * len(sources)
    timings = Timings()
    with timings.phase("prepare"):
        prepared = [prepare(stages, s, smpl, source_options) for s, smpl in zip(sources, smpls)]
    with timings.phase("motion"):
        motion = motion if motion is not None else driver_motion(stages.body, driver, options, None)
    notes = []
    with stages.tuned(personalize is not None):
        if personalize is not None:
            cams, poses = driving_bodies(prepared[0], motion, options)
            with timings.phase("personalize"):
                notes += tuning_notes(tuning.for_source(stages, prepared[0], personalize, cams, poses, tune_progress))
        result = write_imitation(stages.body, stages.synth, prepared, stages.encode(prepared), driver, motion,
                                 output, stages.size, options, overwrite, progress)
    result = dataclasses.replace(result, timings={**timings, **result.timings}, **ran_with(stages))
    result.warnings.extend(source_notes(prepared) + notes + vfr_note(motion) + audio_note(driver, options))
    if motion.missing:
        result.warnings.append(f"{len(motion.missing)} driver frame(s) without a plausible person held the "
                               f"last good pose: {list(motion.missing)[:20]}")
    return result
