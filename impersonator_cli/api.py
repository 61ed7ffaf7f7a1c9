"""The Python API: load the stages once, then imitate / swap / novel_view as often as needed.

    from impersonator_cli.api import Impersonator
    imp = Impersonator(weights_dir="weights", device="auto")
    imp.imitate(["me.jpg"], "dance.mp4", "out.mp4")

Nothing here prints, exits or parses argv; errors are the typed errors of `errors.py`; progress is
reported through an optional callback `progress(done, total)` counted in frames.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from . import weights
from .background import BackgroundSpec, parse_background, to_uint8_frames
from .body.model import BodyModel, load_body_model
from .body.motion import load_motion
from .devices import Runtime, resolve_runtime
from .errors import InputError, OutputError, UsageError
from .gan.load import load_generator, load_inpaintor
from .imitate import ImitateOptions, JobResult, driver_motion, driving_bodies, write_imitation
from .source import CROPS, PreparedSource, prepare_rgb, prepare_source
from .images import is_video_path, write_image
from .novelview import render_views, view_angles
from .swap import swap_image
from .synth import LWBSynthesizer, WarpOnly
from .video import VideoWriter, read_frames

PathLike = Union[str, Path]
Progress = Callable[[int, Optional[int]], None]
SIZES = (256, 512)
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class PersonalizeOptions:
    """The official post-tune (spec §5.2) within a budget: whichever of steps / seconds ends first
    (neither: the official 5 epochs over the pairs). use_face: None = when SphereFace weights exist."""

    steps: Optional[int] = None
    seconds: Optional[float] = None
    use_face: Optional[bool] = None
    cache: bool = True


class Impersonator:
    """Loads the body model, generator and inpaintor once; every job reuses them.

    generator: a registry name (default: the official iPER+DeepFashion+Places generator), a path to a
    converted or official checkpoint, or "none" for the warp-only baseline (no GAN weights needed).
    """

    def __init__(self, weights_dir: PathLike | None = None, device: str = "auto", precision: str = "auto",
                 generator: str = weights.DEFAULT_GENERATOR, size: int = 256, inpaint: bool = True,
                 renderer: str = "auto") -> None:
        if size not in SIZES:
            raise UsageError(f"Unsupported output size {size}", hint="Use 256 (the trained size) or 512.")
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        self.runtime: Runtime = resolve_runtime(device, precision)
        self.size = size
        self.body: BodyModel = load_body_model(self.weights_dir, self.runtime.device, renderer)
        self.synth = self._load_synth(generator)
        self.inpaintor = self._load_inpaintor() if inpaint else None

    def _load_synth(self, generator: str):
        if str(generator).lower() == "none":
            return WarpOnly()
        net = load_generator(generator, self.weights_dir, self.runtime.device)
        return LWBSynthesizer(net, self.runtime)

    def _load_inpaintor(self):
        if weights.find("inpaintor_deepfillv2", self.weights_dir) is None:
            return None  # backgrounds fall back to classical inpainting, with a warning in results
        return load_inpaintor("inpaintor_deepfillv2", self.weights_dir, self.runtime.device)

    # ------------------------------------------------------------------ sources

    def prepare(self, source: PathLike, *, smpl: PathLike | None = None, crop: str = "person",
                background: str | BackgroundSpec = "inpaint", bg_ks: int = 13, ft_ks: int = 3) -> PreparedSource:
        """Per-source work (body, crop, maps, masks, background). `smpl`: a motion file with its SMPL."""
        if crop not in CROPS:
            raise UsageError(f"Unknown crop '{crop}'", hint=f"Use one of: {', '.join(CROPS)}.")
        spec = parse_background(background) if isinstance(background, str) else background
        theta = None if smpl is None else _single_theta(Path(smpl))
        return prepare_source(self.body, _existing(source, "source image"), self.size, theta=theta, crop=crop,
                              background=spec, inpaintor=self.inpaintor, bg_ks=bg_ks, ft_ks=ft_ks)

    def personalize(self, src: PreparedSource, options: PersonalizeOptions = PersonalizeOptions(),
                    motion_cams: np.ndarray | None = None, motion_poses: np.ndarray | None = None,
                    progress: Progress | None = None):
        """Fine-tune the generator on one source, in place (see `tuned` to undo it after a job)."""
        from . import personalize as post

        if not isinstance(self.synth, LWBSynthesizer):
            raise UsageError("Personalization fine-tunes the GAN generator; it does nothing with --generator none",
                             hint="Drop --personalize, or use a generator.")
        psrc = post.prepare_source(self.body.smpl, self.body.maps, src.image, src.background, src.cam, src.pose,
                                   src.shape)
        targets = None
        if motion_poses is not None:
            device = self.runtime.device
            targets = post.targets_from_motion(torch.from_numpy(motion_cams).float().to(device),
                                               torch.from_numpy(motion_poses).float().to(device), src.shape)
        pairs = post.build_pairs(psrc, self.body.smpl, self.body.maps, targets)
        budget = post.Budget(steps=options.steps, seconds=options.seconds)
        generator = self.synth.generator
        with torch.enable_grad():
            report = post.personalize(generator, psrc, pairs, budget, use_face=options.use_face,
                                      weights_dir=self.weights_dir, cache=options.cache,
                                      progress=None if progress is None else lambda done, total, *_: progress(done, total))
        generator.eval()
        return report

    @contextlib.contextmanager
    def tuned(self, active: bool = True):
        """Restore the generator's weights when the block ends (a job's personalization stays in it).

        ``active=False`` (a job without personalization) neither copies nor reloads the weights, so
        the generator's prepared fast-kernel filters stay valid from one job to the next."""
        if not active or not isinstance(self.synth, LWBSynthesizer):
            yield
            return
        saved = {k: v.detach().clone() for k, v in self.synth.generator.state_dict().items()}
        try:
            yield
        finally:
            self.synth.generator.load_state_dict(saved)

    def _encode(self, sources: Sequence[PreparedSource]) -> list:
        return [self.synth.encode(s.image, s.cond, s.masks.ft_mask) for s in sources]

    # ------------------------------------------------------------------ jobs

    def imitate(self, sources: Sequence[PathLike | PreparedSource], driver: PathLike, output: PathLike, *,
                options: ImitateOptions = ImitateOptions(), overwrite: bool = False,
                progress: Progress | None = None, personalize: PersonalizeOptions | None = None,
                tune_progress: Progress | None = None, **source_kw) -> JobResult:
        """The source person(s) perform the driver's motion; writes a video at the driver's frame rate.
        `progress` counts frames written; `tune_progress` counts personalization steps."""
        output = _output_path(output, overwrite, VIDEO_SUFFIXES)
        driver = _existing(driver, "driver")
        prepared = [s if isinstance(s, PreparedSource) else self.prepare(s, **source_kw) for s in sources]
        if not prepared:
            raise UsageError("imitate needs at least one --source image")
        motion = driver_motion(self.body, driver, options, None)
        notes = []
        with self.tuned(personalize is not None):
            if personalize is not None:
                cams, poses = driving_bodies(prepared[0], motion, options)
                notes += _tuning_notes(self.personalize(prepared[0], personalize, cams, poses, tune_progress))
            feats = self._encode(prepared)
            result = write_imitation(self.body, self.synth, prepared, feats, driver, motion, output, self.size,
                                     options, overwrite, progress)
        result.warnings.extend(_notes(prepared) + notes)
        if motion.missing:
            result.warnings.append(f"{len(motion.missing)} driver frame(s) without a plausible person held the "
                                   f"last good pose: {list(motion.missing)[:20]}")
        return result

    def swap(self, source: PathLike | PreparedSource, reference: PathLike | PreparedSource, output: PathLike, *,
             parts: str | Sequence[str] = "body", front_warp: bool = False, overwrite: bool = False,
             reference_smpl: PathLike | None = None, progress: Progress | None = None,
             personalize: PersonalizeOptions | None = None, tune_progress: Progress | None = None,
             **source_kw) -> JobResult:
        """The source person wearing the reference person's `parts`: one image, or a video when the
        source is a video (its frame rate and audio kept). `personalize`: the official swap post-tune
        on the (source, reference) pair first (spec §5.3); for a source video the pair is its first
        frame with a person and the reference, and the tuned generator renders every frame.
        `progress` counts a video's frames (a photo's tuning steps when `tune_progress` is None);
        `tune_progress` counts personalization steps."""
        if not isinstance(source, PreparedSource) and is_video_path(source):
            return self._swap_video(_existing(source, "source video"), reference, output, parts=parts,
                                    front_warp=front_warp, overwrite=overwrite, reference_smpl=reference_smpl,
                                    progress=progress, personalize=personalize, tune_progress=tune_progress,
                                    **source_kw)
        output = _output_path(output, overwrite, IMAGE_SUFFIXES)
        src = source if isinstance(source, PreparedSource) else self.prepare(source, **source_kw)
        ref_kw = {**source_kw, "smpl": reference_smpl}
        ref = reference if isinstance(reference, PreparedSource) else self.prepare(reference, **ref_kw)
        notes = []
        with self.tuned(personalize is not None):
            if personalize is not None:
                notes += _tuning_notes(self._personalize_swap(src, ref, personalize, front_warp,
                                                              progress if tune_progress is None else tune_progress))
            src_feats, ref_feats = self._encode([src, ref])
            image = swap_image(self.body, self.synth, src, ref, src_feats, ref_feats, parts, front_warp)
        write_image(output, to_uint8_frames(image)[0])
        return JobResult(output=output, frames=1, fps=None, size=(self.size, self.size),
                         warnings=_notes([src, ref]) + notes)

    def _personalize_swap(self, src: PreparedSource, ref: PreparedSource, options: PersonalizeOptions,
                          front_warp: bool, progress: Progress | None):
        """Fine-tune the generator on the (source, reference) pair, in place (spec §5.3)."""
        from . import personalize as post
        from . import personalize_swap as post_swap

        if not isinstance(self.synth, LWBSynthesizer):
            raise UsageError("Personalization fine-tunes the GAN generator; it does nothing with --generator none",
                             hint="Drop --personalize, or use a generator.")
        people = [post.prepare_source(self.body.smpl, self.body.maps, p.image, p.background, p.cam, p.pose, p.shape)
                  for p in (src, ref)]
        pair = post_swap.build_swap_pair(people[0], people[1], self.body.maps)
        generator = self.synth.generator
        with torch.enable_grad():
            report = post_swap.personalize_swap(
                generator, pair, post.Budget(steps=options.steps, seconds=options.seconds), use_face=options.use_face,
                front_warp=front_warp, weights_dir=self.weights_dir, cache=options.cache,
                progress=None if progress is None else lambda done, total, *_: progress(done, total))
        generator.eval()
        return report

    def _swap_video(self, source: Path, reference, output: PathLike, *, parts, front_warp: bool, overwrite: bool,
                    reference_smpl, progress: Progress | None, personalize: PersonalizeOptions | None = None,
                    tune_progress: Progress | None = None, **source_kw) -> JobResult:
        """Swap on every frame of a source video: bodies by HMR tracking, the whole (letterboxed) frame."""
        output = _output_path(output, overwrite, VIDEO_SUFFIXES)
        kw = {k: v for k, v in source_kw.items() if k != "smpl"}
        ref = reference if isinstance(reference, PreparedSource) else self.prepare(reference, smpl=reference_smpl, **kw)
        motion = driver_motion(self.body, source, ImitateOptions(), None)
        spec = parse_background(kw.get("background", "inpaint"))

        def prepare_frame(rgb: np.ndarray, theta: np.ndarray) -> PreparedSource:
            return prepare_rgb(self.body, rgb, source, self.size, theta=theta, crop="full", background=spec,
                               inpaintor=self.inpaintor, bg_ks=kw.get("bg_ks", 13), ft_ks=kw.get("ft_ks", 3))

        notes, done = [], 0
        with self.tuned(personalize is not None):
            if personalize is not None:
                index, rgb = _first_person_frame(source, motion)
                first = prepare_frame(rgb, motion.thetas[index].astype(np.float64))
                notes += _tuning_notes(self._personalize_swap(first, ref, personalize, front_warp, tune_progress))
            ref_feats = self._encode([ref])[0]
            with VideoWriter(output, motion.fps, audio_from=source,
                             audio_duration=float(motion.frame_count / motion.fps), overwrite=overwrite) as writer, \
                    read_frames(source, max_frames=motion.frame_count) as frames:
                for rgb, theta in zip(frames, motion.thetas.astype(np.float64)):
                    src = prepare_frame(rgb, theta)
                    image = swap_image(self.body, self.synth, src, ref, self._encode([src])[0], ref_feats, parts,
                                       front_warp)
                    writer.write(to_uint8_frames(image)[0])
                    done += 1
                    if progress is not None:
                        progress(done, motion.frame_count)
        return JobResult(output=output, frames=done, fps=motion.fps, size=(self.size, self.size),
                         warnings=_notes([ref]) + notes, missing_frames=list(motion.missing))

    def novel_view(self, source: PathLike | PreparedSource, output: PathLike, *, frames: int = 90,
                   yaw: Sequence[float] = (), pitch: Sequence[float] = (), tpose: bool = False,
                   fps: float = 25, batch_size: int = 4, front_warp: bool = False, crf: int = 18,
                   overwrite: bool = False, progress: Progress | None = None,
                   personalize: PersonalizeOptions | None = None, tune_progress: Progress | None = None,
                   **source_kw) -> JobResult:
        """The source person from other viewpoints: an orbit video, or images at given yaw/pitch.
        `progress` counts frames written; `tune_progress` counts personalization steps."""
        output = _output_path(output, overwrite, VIDEO_SUFFIXES + IMAGE_SUFFIXES)
        angles = view_angles(frames, yaw, pitch)
        is_image = output.suffix.lower() in IMAGE_SUFFIXES
        if is_image and len(angles) != 1:
            raise UsageError(f"An image output holds one view, but {len(angles)} were asked for",
                             hint="Give one --yaw/--pitch for an image, or write a video (.mp4).")
        src = source if isinstance(source, PreparedSource) else self.prepare(source, **source_kw)
        notes = []
        with self.tuned(personalize is not None):
            if personalize is not None:
                notes += _tuning_notes(self.personalize(src, personalize, progress=tune_progress))
            feats = self._encode([src])[0]
            batches = render_views(self.body, self.synth, src, feats, angles, self.size, batch_size, tpose,
                                   use_front_warp=front_warp)
            if is_image:
                write_image(output, to_uint8_frames(next(batches))[0])
            else:
                _write_video(output, batches, Fraction(fps).limit_denominator(1001), crf, overwrite, len(angles),
                             progress)
        rate = None if is_image else Fraction(fps).limit_denominator(1001)
        return JobResult(output=output, frames=len(angles), fps=rate, size=(self.size, self.size),
                         warnings=_notes([src]) + notes)


def extract_motion_file(driver: PathLike, output: PathLike, *, weights_dir: PathLike | None = None,
                        device: str = "auto", batch_size: int = 8, start: float = 0.0,
                        duration: float | None = None, max_frames: int | None = None, smooth: float = 0.0,
                        overwrite: bool = False, progress: Progress | None = None):
    """Recover a driver's motion (HMR + SMPL, person-centred) once and save it as a .motion.npz file."""
    from .body.motion import extract_motion, save_motion
    from .devices import resolve_device

    output = _output_path(output, overwrite, (".npz",))
    driver = _existing(driver, "driver")
    body = load_body_model(weights_dir, resolve_device(device))
    motion = extract_motion(driver, body.hmr(), body.smpl, batch_size=batch_size, max_frames=max_frames,
                            start=start, duration=duration, smooth_sigma=smooth, progress=progress)
    save_motion(output, motion, overwrite=overwrite)
    return motion


def _write_video(output: Path, batches, fps: Fraction, crf: int, overwrite: bool, total: int,
                 progress: Progress | None) -> None:
    done = 0
    with VideoWriter(output, fps, crf=crf, overwrite=overwrite) as writer:
        for images in batches:
            for frame in to_uint8_frames(images):
                writer.write(frame)
            done += images.shape[0]
            if progress is not None:
                progress(done, total)


def _tuning_notes(report) -> list[str]:
    how = "reused from the cache" if report.cache_hit else f"{report.steps} steps in {report.seconds:.0f} s"
    return [f"personalization: {how}", *report.notes]


def _notes(sources: Sequence[PreparedSource]) -> list[str]:
    return [f"background of {s.name}: {s.background_note}" for s in sources if "not found" in s.background_note]


def _first_person_frame(source: Path, motion) -> tuple[int, np.ndarray]:
    """The first frame of a source video whose body was found (index, RGB), for personalization."""
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


def _single_theta(path: Path) -> np.ndarray:
    motion = load_motion(_existing(path, "source SMPL file"))
    if motion.frame_count < 1:
        raise InputError("The SMPL file holds no frame", path=path)
    return motion.thetas[0].astype(np.float64)


def _existing(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"The {what} does not exist", path=path, hint="Check the path (quote paths with spaces).")
    return path


def _output_path(path: PathLike, overwrite: bool, suffixes: tuple[str, ...]) -> Path:
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
