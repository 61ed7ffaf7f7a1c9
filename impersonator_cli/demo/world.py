"""The no-download demo: a textured mannequin photo, a reference mannequin, a dance, and all three jobs.

Everything is generated here: the mannequin's assets in the official file formats (so the real
loaders run), "photos" rendered from known SMPL parameters (saved as one-frame motion files, so HMR
is not needed), a procedural dance motion and a driver video of it with a soundtrack.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from impersonator_cli.pipeline.background import to_uint8
from impersonator_cli.demo.mannequin_assets import mannequin_texture, mannequin_uv, write_mannequin_assets
from impersonator_cli.pipeline.rig import BodyModel, load_body_model
from impersonator_cli.body.motion import MotionData, save_motion
from impersonator_cli.body.rotation import upright_turned
from impersonator_cli.body.tracking import padded_frame_box
from impersonator_cli.io.images import resize_rgb, write_image
from impersonator_cli.render.body_view import view_body
from impersonator_cli.render.texture import face_corner_uv, render_texture
from impersonator_cli.io.probe import find_ffmpeg
from impersonator_cli.io.encode import VideoWriter
from impersonator_cli.types import Progress

FPS = Fraction(25)
UPRIGHT = (math.pi, 0.0, 0.0)  # HMR's global rotation: SMPL's y-up body upright in the y-down image


@dataclass(frozen=True)
class DemoFiles:
    weights_dir: Path
    source: Path
    source_smpl: Path
    reference: Path
    reference_smpl: Path
    motion: Path
    driver: Path


def a_pose(arms: float = 65.0) -> np.ndarray:
    """72 pose: upright, arms lowered by `arms` degrees from the T-pose."""
    pose = np.zeros(72)
    pose[:3] = UPRIGHT
    pose[16 * 3 + 2] = -math.radians(arms)  # left shoulder about z
    pose[17 * 3 + 2] = math.radians(arms)  # right shoulder
    return pose


def dance(frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A procedural dance: (cams T x 3, poses T x 72) — sway, turns, arm waves and knee bends."""
    t = np.arange(frames) / float(FPS)
    poses = np.zeros((frames, 72))
    for i, ti in enumerate(t):
        w = 2 * math.pi * ti
        pose = a_pose(arms=55 + 35 * math.sin(w * 0.9))
        pose[:3] = upright_turned(math.radians(35) * math.sin(w * 0.35))
        pose[17 * 3 + 2] = math.radians(55 + 35 * math.sin(w * 0.9 + math.pi))
        pose[18 * 3 + 1] = -math.radians(45) * (1 + math.sin(w * 1.3)) / 2  # left elbow
        pose[19 * 3 + 1] = math.radians(45) * (1 + math.cos(w * 1.3)) / 2  # right elbow
        bend = math.radians(25) * (1 - math.cos(w * 1.8)) / 2
        pose[1 * 3 + 0], pose[2 * 3 + 0] = -bend, -bend  # hips forward
        pose[4 * 3 + 0], pose[5 * 3 + 0] = 2 * bend, 2 * bend  # knees back
        pose[15 * 3 + 1] = math.radians(20) * math.sin(w * 0.7)  # head turn
        poses[i] = pose
    cams = np.stack([np.full(frames, 1.0), 0.12 * np.sin(2 * math.pi * t * 0.5), np.full(frames, 0.2)], 1)
    return cams, poses


def room(size: int, seed: int = 0) -> torch.Tensor:
    """A simple room (wall gradient, tiled floor, a picture frame) as 1 x 3 x N x N in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size] / size
    wall = np.stack([0.75 - 0.2 * y, 0.7 - 0.1 * y, 0.55 + 0.1 * x], -1)
    floor = 0.35 + 0.25 * ((np.floor(x * 8) + np.floor(y * 16)) % 2)[..., None] * np.array([1.0, 0.9, 0.8])
    img = np.where((y > 0.72)[..., None], floor, wall)
    frame = (abs(x - 0.2 - 0.05 * seed) < 0.1) & (abs(y - 0.3) < 0.12)
    img[frame] = [0.2, 0.45, 0.3]
    return torch.from_numpy(img).permute(2, 0, 1)[None].float()


class MannequinPhotographer:
    """Renders the textured mannequin at known SMPL parameters (2x supersampled)."""

    def __init__(self, body: BodyModel, hue_shift: int = 0) -> None:
        self.body = body
        vt, face_vt = mannequin_uv()
        self.corner_uv = face_corner_uv(torch.from_numpy(vt).float(), torch.from_numpy(face_vt))
        tex = mannequin_texture(512)
        if hue_shift:
            tex = _shift_hue(tex, hue_shift)
        self.texture = torch.from_numpy(tex).permute(2, 0, 1).float() / 255

    def photo(self, cam: np.ndarray, pose: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
        big = 2 * size
        view = view_body(self.body.smpl, torch.tensor(cam[None]).float(), torch.tensor(pose[None]).float(),
                         torch.zeros(1, 10), big)
        img = render_texture(view.raster, self.corner_uv, self.texture, room(big, seed))
        rgb = to_uint8(img * 2 - 1)
        return resize_rgb(rgb, (size, size)) if big != size else rgb


def _shift_hue(rgb: np.ndarray, shift: int) -> np.ndarray:
    from impersonator_cli.io.images import _cv2

    cv2 = _cv2()
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + shift) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _one_frame_motion(path: Path, cam: np.ndarray, pose: np.ndarray, size: int) -> Path:
    motion = MotionData(cams=cam[None], poses=pose[None], shapes=np.zeros((1, 10)),
                        boxes=padded_frame_box(size, size)[None], fps=FPS, frame_size=(size, size),
                        content_hash="0" * 64, source_name=path.name)
    return save_motion(path, motion, overwrite=True)


def _soundtrack(path: Path, seconds: float) -> Path:
    """A short melody (sine tones) for the driver video, made by ffmpeg."""
    notes = "+".join(f"sin(2*PI*{f}*t)*between(mod(t\\,2)\\,{i * 0.5}\\,{i * 0.5 + 0.45})"
                     for i, f in enumerate((440, 554, 659, 880)))
    cmd = [find_ffmpeg(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y", "-f", "lavfi",
           "-i", f"aevalsrc=0.2*({notes}):s=44100:d={seconds:.3f}", "-c:a", "aac", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def build_demo(folder: Path, size: int = 256, frames: int = 75) -> DemoFiles:
    """Write every demo input into `folder` (assets, photos, SMPL files, motion, driver video).

    They are made in a hidden folder inside `folder` and moved into place once all are complete, so
    a failed or interrupted build (Ctrl-C, SIGTERM) leaves no half-written input behind; files
    already in `folder` that the demo does not make (other weights under assets/) are kept.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-inputs.partial-", dir=folder))
    try:
        return _move_inputs(_make_inputs(staging, size, frames), staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_inputs(files: DemoFiles, staging: Path, folder: Path) -> DemoFiles:
    """Move every complete file made under `staging` to the same place under `folder`."""
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = folder / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    return DemoFiles(**{name: folder / Path(value).relative_to(staging) for name, value in asdict(files).items()})


def _make_inputs(folder: Path, size: int, frames: int) -> DemoFiles:
    weights_dir = folder / "assets"
    write_mannequin_assets(weights_dir)
    body = load_body_model(weights_dir)
    cam = np.array([1.0, 0.0, 0.2])
    src_pose, ref_pose = a_pose(65), a_pose(40)
    ref_pose[:3] = upright_turned(math.radians(25))
    photographer, other = MannequinPhotographer(body), MannequinPhotographer(body, hue_shift=60)
    write_image(folder / "source.png", photographer.photo(cam, src_pose, size))
    write_image(folder / "reference.png", other.photo(cam, ref_pose, size, seed=1))
    cams, poses = dance(frames)
    motion = MotionData(cams=cams, poses=poses, shapes=np.zeros((frames, 10)),
                        boxes=np.repeat(padded_frame_box(size, size)[None], frames, 0), fps=FPS,
                        frame_size=(size, size), content_hash="0" * 64, source_name="dance")
    driver = folder / "driver.mp4"
    audio = _soundtrack(folder / "driver-audio.m4a", frames / float(FPS))
    with VideoWriter(driver, FPS, audio_from=audio, audio_duration=frames / float(FPS),
                     length=frames / float(FPS)) as writer:
        for c, p in zip(cams, poses):
            writer.write(other.photo(c, p, size, seed=2))
    audio.unlink()
    return DemoFiles(weights_dir=weights_dir, source=folder / "source.png",
                     source_smpl=_one_frame_motion(folder / "source.motion.npz", cam, src_pose, size),
                     reference=folder / "reference.png",
                     reference_smpl=_one_frame_motion(folder / "reference.motion.npz", cam, ref_pose, size),
                     motion=save_motion(folder / "dance.motion.npz", motion, overwrite=True), driver=driver)


RESULTS = ("imitate.mp4", "imitate-side-by-side.mp4", "swap.png", "novelview.mp4")


DEMO_NOTE = ("The demo ran warp-only (--generator none): the source's pixels are moved onto the new body, and "
             "the background behind the person is filled by OpenCV's classical inpainting, not DeepFillv2. "
             "Expect grey smears where the body was, and a face where the back of the head should be when "
             "the person turns. With the official weights (impersonate weights import), the Liquid Warping "
             "GAN generator and DeepFillv2 fill these in.")


def run_demo(folder: Path, frames: int = 75, device: str = "auto", overwrite: bool = False,
             phase: Callable[[str], Optional[Progress]] | None = None) -> dict:
    """Build the demo inputs in `folder` and run the three jobs on them (warp-only generator).
    `phase(name)` is called as each phase starts and may return that phase's progress(done, total)."""
    from impersonator_cli.api import Impersonator
    from impersonator_cli.errors import OutputError
    from impersonator_cli.api import ImitateOptions, NovelViewOptions, SourceOptions

    phase = phase or (lambda name: None)
    folder = Path(folder)
    existing = [name for name in RESULTS if (folder / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"The demo folder already holds results ({', '.join(existing)})", path=folder,
                          hint="Pass --overwrite or choose another --output-dir.")
    phase(f"making the mannequin, its photos and a {frames}-frame driver video")
    files = build_demo(folder, frames=frames)
    phase("loading the body model and preparing the photos")
    imp = Impersonator(weights_dir=files.weights_dir, device=device, generator="none")
    src = imp.prepare(files.source, smpl=files.source_smpl, options=SourceOptions(crop="full"))
    ref = imp.prepare(files.reference, smpl=files.reference_smpl, options=SourceOptions(crop="full"))
    out = {}
    opts = ImitateOptions(audio_file=files.driver)
    out["imitate"] = imp.imitate([src], files.motion, folder / RESULTS[0], options=opts, overwrite=True,
                                 progress=phase(f"imitate: {frames} frames"))
    # The same motion from the driver video's own frames would need HMR weights; the side-by-side
    # layout reads the driver's frames, so it uses the motion with the video as driver source.
    out["imitate_side_by_side"] = _side_by_side(imp, src, files, folder / RESULTS[1],
                                                phase(f"imitate beside the driver: {frames} frames"))
    phase("swap: the reference's upper clothes onto the source")
    out["swap"] = imp.swap(src, ref, folder / RESULTS[2], parts="upper", overwrite=True)
    out["novelview"] = imp.novel_view(src, folder / RESULTS[3], options=NovelViewOptions(frames=frames),
                                      overwrite=True, progress=phase(f"novel view: a {frames}-view orbit"))
    return out


def _side_by_side(imp, src, files: DemoFiles, output: Path, progress):
    from impersonator_cli.body.motion import load_motion
    from impersonator_cli.jobs.imitate import ImitateOptions, write_imitation

    motion = load_motion(files.motion)
    feats = imp.stages.encode([src])
    options = ImitateOptions(layout="side-by-side")
    return write_imitation(imp.body, imp.synth, [src], feats, files.driver, motion, output, imp.size, options,
                           True, progress)
