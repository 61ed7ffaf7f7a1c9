"""Motion files: a driver's per-frame body (cameras, poses, shapes), extracted once, reused often.

A motion file is a plain .npz (numpy arrays only, read with allow_pickle=False):

  version       int64 ()          MOTION_VERSION
  convention    str ()            FRAME_CONVENTION (cameras are frame-normalized, see tracking.py)
  cams          float32 (T, 3)    weak-perspective (s, tx, ty) in the frame convention
  poses         float32 (T, 72)   SMPL pose, 24 joints x axis-angle
  shapes        float32 (T, 10)   SMPL shape β
  boxes         float32 (T, 3)    (cx, cy, size) frame pixels of the crop HMR saw
  fps           int64 (2,)        frame rate as numerator, denominator
  frame_count   int64 ()          T
  frame_size    int64 (2,)        (W, H) of the driver's frames
  content_hash  str ()            sha256 of the driver (`content_hash`)
  missing       int64 (M,)        frames where no plausible body was found (θ held), ascending
  smooth_sigma  float64 ()        Gaussian smoothing applied, in frames (0 = none)
  start         float64 ()        seconds skipped at the driver's start
  source_name   str ()            the driver's file name (for messages only)
  times         float64 (T,)      optional, variable-rate drivers only: each frame's time in seconds
                                  on the driver's clock (from its first frame), ascending. Without
                                  it, frame i is at start + i / fps. With it, fps is the constant
                                  rate outputs are written at (io/timing.py).

Writes are atomic (a hidden temp file renamed into place). Loading checks every key's dtype, shape
and finiteness and the version; anything wrong raises InputError telling how to re-create the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from os import PathLike
from pathlib import Path
from typing import Optional

import numpy as np
from torch import nn

from impersonator_cli.errors import InputError, OutputError
from impersonator_cli.io.images import is_image_path, natural_key, reserve_partial_path
from impersonator_cli.io.publish import publish
from impersonator_cli.body import smoothing
from impersonator_cli.body.tracking import Progress, ThetaFn, TrackerConfig, hmr_theta_fn, track_frames

MOTION_VERSION = 1
FRAME_CONVENTION = "square-padded-centred"
SUFFIX = ".motion.npz"
_HINT = "Re-create it with `impersonate motion extract VIDEO -o FILE.motion.npz`."
_CHUNK = 1 << 20


@dataclass(frozen=True)
class MotionData:
    """A driver's motion (shapes as in the module doc; arrays are float32, T = frame_count)."""

    cams: np.ndarray
    poses: np.ndarray
    shapes: np.ndarray
    boxes: np.ndarray
    fps: Fraction
    frame_size: tuple[int, int]
    content_hash: str
    missing: tuple[int, ...] = ()
    smooth_sigma: float = 0.0
    start: float = 0.0
    source_name: str = ""
    times: Optional[np.ndarray] = None
    version: int = field(default=MOTION_VERSION)

    def __post_init__(self) -> None:
        for name, width in (("cams", 3), ("poses", 72), ("shapes", 10), ("boxes", 3)):
            value = np.ascontiguousarray(getattr(self, name), dtype=np.float32)
            if value.ndim != 2 or value.shape[1] != width:
                raise ValueError(f"{name} must be T x {width}, got {value.shape}")
            object.__setattr__(self, name, value)
        if not (len(self.cams) == len(self.poses) == len(self.shapes) == len(self.boxes)):
            raise ValueError("cams, poses, shapes and boxes must have the same number of frames")
        object.__setattr__(self, "fps", Fraction(self.fps))
        object.__setattr__(self, "frame_size", (int(self.frame_size[0]), int(self.frame_size[1])))
        object.__setattr__(self, "missing", tuple(int(i) for i in self.missing))
        if self.times is not None:
            times = np.ascontiguousarray(self.times, dtype=np.float64)
            if times.shape != (len(self.cams),) or not _ascending(times):
                raise ValueError(f"times must be {len(self.cams)} finite ascending seconds, got {times.shape}")
            object.__setattr__(self, "times", times)

    @property
    def frame_count(self) -> int:
        return int(self.cams.shape[0])

    @property
    def frame_times(self) -> np.ndarray:
        """Each frame's time in seconds on the driver's clock (T, float64)."""
        if self.times is not None:
            return self.times
        return self.start + np.arange(self.frame_count, dtype=np.float64) / float(self.fps)

    @property
    def thetas(self) -> np.ndarray:
        """T x 85 float32: (cam, pose, shape) per frame, the HMR θ layout."""
        return np.concatenate([self.cams, self.poses, self.shapes], axis=1)


# --------------------------------------------------------------------------------------------
# Content hash


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.digest()


def content_hash(path: str | PathLike) -> str:
    """sha256 hex of a driver: a file's bytes; for a folder, of its image files' sha256 digests in
    natural name order (the order frames are read; names themselves do not count)."""
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted((p for p in path.iterdir() if p.is_file() and is_image_path(p)
                            and not p.name.startswith(".")), key=lambda p: natural_key(p.name))
            return hashlib.sha256(b"".join(_file_digest(p) for p in files)).hexdigest()
        return _file_digest(path).hex()
    except OSError as exc:
        raise InputError("Cannot read the driver", path=path,
                         hint="Check that the file exists and is readable.", detail=str(exc)) from exc


# --------------------------------------------------------------------------------------------
# Saving


def _arrays(motion: MotionData) -> dict[str, np.ndarray]:
    return {
        "version": np.array(motion.version, dtype=np.int64),
        "convention": np.array(FRAME_CONVENTION),
        "cams": motion.cams, "poses": motion.poses, "shapes": motion.shapes, "boxes": motion.boxes,
        "fps": np.array([motion.fps.numerator, motion.fps.denominator], dtype=np.int64),
        "frame_count": np.array(motion.frame_count, dtype=np.int64),
        "frame_size": np.array(motion.frame_size, dtype=np.int64),
        "content_hash": np.array(motion.content_hash),
        "missing": np.array(motion.missing, dtype=np.int64).reshape(-1),
        "smooth_sigma": np.array(motion.smooth_sigma, dtype=np.float64),
        "start": np.array(motion.start, dtype=np.float64),
        "source_name": np.array(motion.source_name),
        **({} if motion.times is None else {"times": motion.times}),
    }


def save_motion(path: str | PathLike, motion: MotionData, *, overwrite: bool = False) -> Path:
    """Write a motion file atomically; returns its path. OutputError if it exists (unless
    overwrite) or the folder is not writable."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError("The motion file already exists", path=path,
                          hint="Pass --overwrite to replace it, or choose another name.")
    tmp = reserve_partial_path(path)
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **_arrays(motion))
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError("Cannot write the motion file", path=path,
                              hint="Check free space and permissions of the folder.", detail=str(exc)) from exc
        raise
    return publish(tmp, path, overwrite)  # never replaces a file that appeared meanwhile, unless overwrite


# --------------------------------------------------------------------------------------------
# Loading


def _bad(path: Path, what: str) -> InputError:
    return InputError(f"The motion file is invalid: {what}", path=path, hint=_HINT)


_SPEC: dict[str, tuple[str, tuple | None]] = {  # key -> (dtype kind, shape with -1 = T, None = any length)
    "cams": ("f4", (-1, 3)), "poses": ("f4", (-1, 72)), "shapes": ("f4", (-1, 10)),
    "boxes": ("f4", (-1, 3)), "fps": ("i8", (2,)), "frame_count": ("i8", ()), "frame_size": ("i8", (2,)),
    "content_hash": ("U", ()), "missing": ("i8", None), "smooth_sigma": ("f8", ()), "start": ("f8", ()),
    "source_name": ("U", ()), "convention": ("U", ()),
}


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError("The motion file does not exist", path=path, hint=_HINT)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as exc:  # noqa: BLE001 — zip, zlib, format and pickle refusals all mean corrupt
        raise InputError("The motion file is damaged or not a motion file", path=path, hint=_HINT,
                         detail=f"{type(exc).__name__}: {exc}") from exc


def _check_version(path: Path, data: Mapping[str, np.ndarray]) -> None:
    version = data.get("version")
    if version is None or version.shape != () or version.dtype.kind not in "iu":
        raise InputError("This is not a motion file (no format version)", path=path, hint=_HINT)
    if int(version) != MOTION_VERSION:
        newer = int(version) > MOTION_VERSION
        raise InputError(
            f"The motion file has format version {int(version)}, this program reads version {MOTION_VERSION}",
            path=path, hint=("Upgrade impersonate, or r" if newer else "R") + _HINT[1:])


def _check_arrays(path: Path, data: Mapping[str, np.ndarray]) -> None:
    frames = data["cams"].shape[0] if "cams" in data and data["cams"].ndim == 2 else None
    for key, (kind, shape) in _SPEC.items():
        if key not in data:
            raise _bad(path, f"'{key}' is missing")
        value = data[key]
        if (value.dtype.kind != "U") if kind == "U" else (value.dtype != np.dtype(kind)):
            want_type = "text" if kind == "U" else np.dtype(kind)
            raise _bad(path, f"'{key}' has type {value.dtype}, expected {want_type}")
        want = None if shape is None else tuple(frames if d == -1 else d for d in shape)
        if (want is not None and value.shape != want) or (shape is None and value.ndim != 1):
            raise _bad(path, f"'{key}' has shape {value.shape}, expected {want or '(M,)'}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise _bad(path, f"'{key}' holds non-finite values")


def _ascending(times: np.ndarray) -> bool:
    return bool(np.isfinite(times).all() and (times >= 0).all() and (np.diff(times) > 0).all())


def _check_times(path: Path, data: Mapping[str, np.ndarray]) -> None:
    """The optional per-frame times: T ascending non-negative float64 seconds."""
    times = data.get("times")
    if times is None:
        return
    if times.dtype != np.float64 or times.shape != (data["cams"].shape[0],):
        raise _bad(path, f"'times' has type {times.dtype} and shape {times.shape}, expected float64 (T,)")
    if not _ascending(times):
        raise _bad(path, "'times' must be finite, non-negative and strictly ascending")


def _check_values(path: Path, data: Mapping[str, np.ndarray]) -> None:
    frames = data["cams"].shape[0]
    missing = data["missing"]
    checks = [
        (frames >= 1 and int(data["frame_count"]) == frames, "frame_count does not match the arrays"),
        ((data["fps"] > 0).all(), "fps must be positive"),
        ((data["frame_size"] > 0).all(), "frame_size must be positive"),
        (len(str(data["content_hash"])) == 64, "content_hash is not a sha256"),
        (((missing >= 0) & (missing < frames)).all() and (np.diff(missing) > 0).all(),
         "missing frame indices out of range or not ascending"),
        (float(data["smooth_sigma"]) >= 0 and float(data["start"]) >= 0, "negative smoothing or start"),
        (str(data["convention"]) == FRAME_CONVENTION, f"unknown camera convention '{data['convention']}'"),
        ((data["boxes"][:, 2] > 0).all() and (data["cams"][:, 0] != 0).all(), "zero camera scale or box size"),
    ]
    for ok, what in checks:
        if not ok:
            raise _bad(path, what)


def load_motion(path: str | PathLike) -> MotionData:
    """Read and validate a motion file. InputError naming the file on anything wrong."""
    path = Path(path)
    data = _read(path)
    _check_version(path, data)
    _check_arrays(path, data)
    _check_values(path, data)
    _check_times(path, data)
    return MotionData(
        cams=data["cams"], poses=data["poses"], shapes=data["shapes"], boxes=data["boxes"],
        fps=Fraction(int(data["fps"][0]), int(data["fps"][1])),
        frame_size=(int(data["frame_size"][0]), int(data["frame_size"][1])),
        content_hash=str(data["content_hash"]), missing=tuple(int(i) for i in data["missing"]),
        smooth_sigma=float(data["smooth_sigma"]), start=float(data["start"]),
        source_name=str(data["source_name"]), times=data.get("times"), version=int(data["version"]))


# --------------------------------------------------------------------------------------------
# Extraction


def smooth_motion(cams: np.ndarray, poses: np.ndarray, shapes: np.ndarray,
                  sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian temporal smoothing (smoothing.py; sigma frames, 0 = unchanged copies).
    T x 3, T x 72, T x 10 -> same."""
    return (smoothing.smooth_cameras(cams, sigma), smoothing.smooth_poses(poses, sigma),
            smoothing.smooth_shapes(shapes, sigma))


def extract_motion(driver_path: str | PathLike, hmr: nn.Module | ThetaFn, smpl: nn.Module, *,
                   batch_size: int = 8, max_frames: int | None = None, start: float = 0.0,
                   duration: float | None = None, smooth_sigma: float = 0.0,
                   progress: Progress | None = None, config: TrackerConfig | None = None,
                   role: str = "driver") -> MotionData:
    """Recover the driver's motion: frames read with video.read_frames, bodies by `track_frames`.

    hmr: the HMR module (any device) or a θ function (crops B x 3 x 224 x 224 -> θ B x 85);
    smpl: the SMPL module. smooth_sigma: Gaussian smoothing in frames, 0 (default) = none, as the
    official. progress(done, total) counts frames. InputError when no frame shows a person.
    """
    from impersonator_cli.io.video import read_frames

    smoothing._check_sigma(smooth_sigma)
    path = Path(driver_path)
    digest = content_hash(path)
    with read_frames(path, start=start, duration=duration, max_frames=max_frames) as frames:
        track = track_frames(frames, hmr_theta_fn(hmr), smpl, batch_size=batch_size, config=config,
                             source=path, total=len(frames), progress=progress, role=role)
        fps, times = frames.fps, frames.times
    cams, poses, shapes = smooth_motion(track.cams, track.poses, track.shapes, smooth_sigma)
    return MotionData(cams=cams, poses=poses, shapes=shapes, boxes=track.boxes, fps=fps,
                      frame_size=track.frame_size, content_hash=digest, missing=tuple(track.missing),
                      smooth_sigma=float(smooth_sigma), start=float(start), source_name=path.name,
                      times=times)
