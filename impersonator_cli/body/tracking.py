"""Person-centred HMR on real footage: square crops, two-pass recovery, box tracking, bad frames.

The official code resizes the whole frame to 224 x 224, stretching non-square frames (spec §1.1);
HMR expects a square, person-centred crop. Without a person detector we let HMR find the person:

* pass 1: HMR on a square search crop: the whole frame padded to a square when the person is
  unknown, else the previous smoothed box enlarged by `search_scale`; the projected COCO-plus
  joints give a tight box (`box_from_joints`);
* the tight boxes are smoothed over time (an exponential moving average, reset on jumps);
* pass 2: HMR on the smoothed tight crop gives the frame's θ.

Boxes are (cx, cy, size) in frame pixels, a pixel c covering [c, c + 1). Crops are cut at integer
pixel positions (`snap_box`), padded with a constant outside the frame and resized uniformly to
224 (cv2 INTER_LINEAR, as the official preprocessing): never a non-uniform stretch.

Frame convention of the output cameras ("frame-normalized"): normalized coordinates of the full
frame padded to a square of side L = max(W, H) with the padding split equally on both sides
(letterboxing): frame pixel x maps to X = 2 (x - (W - L) / 2) / L - 1, likewise y with H; the
frame's own centre is (0, 0) and Y grows downwards. Rendering such a camera at N x N draws over the
letterboxed square frame resized to N.

Plausibility of a result (θ of a crop): finite θ and joints, scale s inside a range, and at least
`min_inside` of the 19 projected joints inside the crop. Frames failing it are listed in
`MotionTrack.missing` and hold the last good frame's θ (leading failures take the first good one).
A frame with no person can still fool HMR into a plausible-looking body; only geometric failures
are caught.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike

import numpy as np
import torch
from torch import nn

from impersonator_cli.errors import InputError
from impersonator_cli.io.images import resize_rgb
from impersonator_cli.body import camera
from impersonator_cli.body.hmr import IMAGE_SIZE, preprocess

ThetaFn = Callable[[torch.Tensor], torch.Tensor]  # crops B x 3 x 224 x 224 in [-1, 1] -> θ B x 85
Progress = Callable[[int, "int | None"], None]  # (frames done, total or None)

MARGIN = 1.3  # box side = joint extent x MARGIN: joints are inside the body; hands, feet, hair stick out


@dataclass(frozen=True)
class TrackerConfig:
    """Knobs of `track_frames` (defaults documented where they are used).

    margin:             box side / the projected joints' larger extent.
    search_scale:       pass-1 crop = previous smoothed box x this (room for motion in a batch).
    box_alpha:          EMA weight of the newest box (1 = no smoothing).
    jump:               reset the EMA when the centre moves > jump x size or the size changes
                        by more than a factor 1 + jump (a re-detection, a cut).
    scale_range:        plausible s of the tight pass-2 crop (a person filling it has s ≈ 0.8-1.6).
    search_scale_range: plausible s of a pass-1 search crop (the person may be small in it).
    min_inside:         fraction of the 19 joints that must project inside the crop.
    min_box:            smallest box side (frame pixels) worth running HMR on; a person found
                        smaller than that counts as not found.
    """

    margin: float = MARGIN
    search_scale: float = 1.5
    box_alpha: float = 0.5
    jump: float = 0.5
    scale_range: tuple[float, float] = (0.3, 3.0)
    search_scale_range: tuple[float, float] = (0.05, 5.0)
    min_inside: float = 0.75
    min_box: float = 16.0


@dataclass(frozen=True)
class MotionTrack:
    """Per-frame body of a driver, everything in one frame convention (see module doc).

    thetas:     T x 85 float32, θ = (cam 3 frame-normalized, pose 72, shape 10)
    boxes:      T x 3 float32, (cx, cy, size) frame pixels of the pass-2 crop HMR saw
    frame_size: (W, H) of the frames
    missing:    indices of frames that failed the plausibility rule (their θ is held)
    """

    thetas: np.ndarray
    boxes: np.ndarray
    frame_size: tuple[int, int]
    missing: list[int] = field(default_factory=list)

    @property
    def cams(self) -> np.ndarray:
        return self.thetas[:, 0:3]

    @property
    def poses(self) -> np.ndarray:
        return self.thetas[:, 3:75]

    @property
    def shapes(self) -> np.ndarray:
        return self.thetas[:, 75:85]


# --------------------------------------------------------------------------------------------
# Boxes and crops


def padded_frame_box(width: int, height: int) -> np.ndarray:
    """The full frame padded (centred) to a square: (W / 2, H / 2, max(W, H)).  -> 3"""
    return np.array([width / 2, height / 2, max(width, height)], dtype=np.float64)


def snap_box(box: Sequence[float] | np.ndarray) -> np.ndarray:
    """The integer-aligned box actually cropped: size rounded, corner rounded.  ... x 3 -> ... x 3

    Result (x0 + S / 2, y0 + S / 2, S) with integers x0, y0, S >= 1 (rounding half up).
    """
    box = np.asarray(box, dtype=np.float64)
    size = np.maximum(1.0, np.floor(box[..., 2] + 0.5))
    x0 = np.floor(box[..., 0] - size / 2 + 0.5)
    y0 = np.floor(box[..., 1] - size / 2 + 0.5)
    return np.stack([x0 + size / 2, y0 + size / 2, size], axis=-1)


def box_corner(box: Sequence[float] | np.ndarray) -> np.ndarray:
    """(cx, cy, size) -> (x0, y0, size), camera.py's box form.  ... x 3 -> ... x 3"""
    box = np.asarray(box, dtype=np.float64)
    return np.stack([box[..., 0] - box[..., 2] / 2, box[..., 1] - box[..., 2] / 2, box[..., 2]], -1)


def square_crop(frame: np.ndarray, box: Sequence[float] | np.ndarray, fill: int = 0) -> np.ndarray:
    """Cut the square `snap_box(box)` out of a frame, `fill` outside the frame; no resize.

    frame: H x W x C -> S x S x C; crop pixel (r, c) is frame pixel (y0 + r, x0 + c).
    """
    x0, y0, size = (int(v) for v in box_corner(snap_box(box)))
    h, w = frame.shape[:2]
    out = np.full((size, size) + frame.shape[2:], fill, dtype=frame.dtype)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + size, w), min(y0 + size, h)
    if fx1 > fx0 and fy1 > fy0:
        out[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = frame[fy0:fy1, fx0:fx1]
    return out


def crop_to_frame(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Normalized crop coordinates -> continuous frame pixels: x = cx + size X / 2.

    points: B x J x 2, box: B x 3 (cx, cy, size)  ->  B x J x 2
    """
    box = np.asarray(box, dtype=np.float64)
    return box[..., None, :2] + box[..., None, 2:3] * np.asarray(points, dtype=np.float64) / 2


def frame_to_crop(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Inverse of `crop_to_frame`: X = 2 (x - cx) / size.  B x J x 2, B x 3 -> B x J x 2"""
    box = np.asarray(box, dtype=np.float64)
    return 2 * (np.asarray(points, dtype=np.float64) - box[..., None, :2]) / box[..., None, 2:3]


def box_from_joints(j2d: np.ndarray, box: np.ndarray, margin: float = MARGIN,
                    min_size: float = 1.0) -> np.ndarray:
    """Square box around projected joints: centre of their extent, side = larger extent x margin.

    j2d: B x J x 2 normalized coordinates of the crop `box` (B x 3, frame pixels)
    ->  B x 3 (cx, cy, size) frame pixels; size at least `min_size`.
    """
    xy = crop_to_frame(j2d, box)
    lo, hi = xy.min(axis=-2), xy.max(axis=-2)
    size = np.maximum((hi - lo).max(axis=-1) * margin, min_size)
    return np.concatenate([(lo + hi) / 2, size[..., None]], axis=-1)


def enlarge(box: np.ndarray, factor: float) -> np.ndarray:
    """Same centre, side x factor.  ... x 3 -> ... x 3"""
    return np.concatenate([box[..., :2], box[..., 2:3] * factor], axis=-1)


# --------------------------------------------------------------------------------------------
# Cameras between a crop and the frame convention


def _frame_corner(frame_size: tuple[int, int]) -> torch.Tensor:
    return torch.as_tensor(box_corner(padded_frame_box(*frame_size)), dtype=torch.float64)


def cam_crop_to_frame_norm(cam: torch.Tensor, box: np.ndarray, frame_size: tuple[int, int]) -> torch.Tensor:
    """Normalized camera of crop `box` -> frame-normalized camera (module doc), float64.

    cam: B x 3, box: B x 3 (cx, cy, size), frame_size (W, H)  ->  B x 3
    """
    corner = torch.as_tensor(box_corner(box), dtype=torch.float64)
    cam_px = camera.cam_crop_to_frame(cam.double(), corner)
    return camera.cam_frame_to_crop(cam_px, _frame_corner(frame_size))


def cam_frame_norm_to_crop(cam: torch.Tensor, box: np.ndarray, frame_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `cam_crop_to_frame_norm`.  B x 3, B x 3, (W, H) -> B x 3 float64"""
    cam_px = camera.cam_crop_to_frame(cam.double(), _frame_corner(frame_size))
    return camera.cam_frame_to_crop(cam_px, torch.as_tensor(box_corner(box), dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Plausibility and bad frames


def plausible(theta: np.ndarray, j2d: np.ndarray, scale_range: tuple[float, float],
              min_inside: float) -> np.ndarray:
    """Which results look like a person in their crop.  θ: B x 85, j2d: B x J x 2 -> B bool

    finite θ and joints, s in scale_range, >= min_inside of the joints with |X|, |Y| <= 1.
    """
    theta, j2d = np.asarray(theta, np.float64), np.asarray(j2d, np.float64)
    finite = np.isfinite(theta).all(axis=1) & np.isfinite(j2d).all(axis=(1, 2))
    s = np.nan_to_num(theta[:, 0], nan=-1.0)
    in_range = (s >= scale_range[0]) & (s <= scale_range[1])
    inside = (np.abs(np.nan_to_num(j2d, nan=2.0)) <= 1.0).all(axis=-1).mean(axis=-1) >= min_inside
    return finite & in_range & inside


def fill_missing(values: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Replace rows where not ok by the last ok row (the first ok row before any).

    values: T x D, ok: T bool (at least one True)  ->  (T x D, indices of replaced rows)
    """
    ok = np.asarray(ok, dtype=bool)
    index = np.where(ok, np.arange(ok.size), -1)
    source = np.maximum.accumulate(index) if ok.size else index
    source[source < 0] = int(np.argmax(ok))
    return values[source], [int(i) for i in np.flatnonzero(~ok)]


def no_person_error(role: str, frames: int, source: str | PathLike | None) -> InputError:
    """The error for a `role` ('driver', 'source photo', ...) of `frames` frames where no person was found."""
    where = f"the {role}" if frames == 1 else f"any frame of the {role}"
    kind = role.split()[-1]  # driver, photo, video
    return InputError(
        f"No person found in {where}", path=source,
        hint=f"The body model could not place a person in it. Use a {kind} showing one person, whole or "
             "most of the body, large enough in the frame.")


def finish_track(thetas: np.ndarray, boxes: np.ndarray, ok: np.ndarray, frame_size: tuple[int, int],
                 source: str | PathLike | None = None, role: str = "driver") -> MotionTrack:
    """Crop θ of every frame -> MotionTrack in the frame convention, bad frames held.

    thetas: T x 85 crop-normalized θ (pass 2), boxes: T x 3 their crops, ok: T bool.
    Raises InputError naming the `role` ('driver', 'source photo', ...) and `source` when no frame
    is plausible.
    """
    ok = np.asarray(ok, dtype=bool)
    if not ok.any():
        raise no_person_error(role, ok.size, source)
    thetas = np.asarray(thetas, np.float64).copy()
    good = np.flatnonzero(ok)
    cams = cam_crop_to_frame_norm(torch.from_numpy(thetas[good, :3]), boxes[good], frame_size)
    thetas[good, :3] = cams.numpy()
    filled, missing = fill_missing(thetas, ok)
    held_boxes, _ = fill_missing(np.asarray(boxes, np.float64), ok)
    return MotionTrack(thetas=filled.astype(np.float32), boxes=held_boxes.astype(np.float32),
                       frame_size=(int(frame_size[0]), int(frame_size[1])), missing=missing)


# --------------------------------------------------------------------------------------------
# Running HMR on crops


def hmr_theta_fn(model: nn.Module | ThetaFn) -> ThetaFn:
    """A θ function from an HMR module (or any callable): crops moved to its device and dtype,
    no autograd, θ returned as float32 on the CPU."""
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    device = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params else torch.float32

    def theta_fn(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.as_tensor(model(images.to(device=device, dtype=dtype))).float().cpu()

    return theta_fn


def crops_for_hmr(frames: Sequence[np.ndarray], boxes: np.ndarray) -> torch.Tensor:
    """RGB uint8 frames (H x W x 3 each) and boxes B x 3 -> B x 3 x 224 x 224 in [-1, 1]."""
    crops = [resize_rgb(square_crop(f, b), (IMAGE_SIZE, IMAGE_SIZE)) for f, b in zip(frames, boxes)]
    return preprocess(np.stack(crops))


def theta_joints(smpl: nn.Module, theta: torch.Tensor) -> np.ndarray:
    """θ B x 85 -> projected COCO-plus joints B x 19 x 2 (crop-normalized), via SMPL."""
    ref = smpl.v_template
    with torch.inference_mode():
        details = smpl.get_details(theta.to(device=ref.device, dtype=ref.dtype))
    return details.j2d.double().cpu().numpy()


class _Recovery:
    """HMR + SMPL on crops of a batch of frames."""

    def __init__(self, theta_fn: ThetaFn, smpl: nn.Module, config: TrackerConfig) -> None:
        self.theta_fn, self.smpl, self.config = theta_fn, smpl, config

    def run(self, frames: Sequence[np.ndarray], boxes: np.ndarray,
            scale_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """frames (B), boxes B x 3  ->  θ B x 85, joints B x 19 x 2, plausible B."""
        theta = self.theta_fn(crops_for_hmr(frames, boxes)).detach().float().cpu()
        j2d = theta_joints(self.smpl, theta)
        ok = plausible(theta.numpy(), j2d, scale_range, self.config.min_inside)
        return theta.double().numpy(), j2d, ok


class BoxTracker:
    """Two-pass recovery over batches of consecutive frames, carrying the smoothed box."""

    def __init__(self, theta_fn: ThetaFn, smpl: nn.Module, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.recovery = _Recovery(theta_fn, smpl, self.config)
        self.state: np.ndarray | None = None  # last smoothed box (cx, cy, size)

    def _smooth(self, raw: np.ndarray) -> np.ndarray:
        """One EMA step of the box state towards `raw` (reset on a jump).  3 -> 3"""
        c, prev = self.config, self.state
        if prev is not None:
            moved = np.hypot(*(raw[:2] - prev[:2])) > c.jump * prev[2]
            resized = max(raw[2] / prev[2], prev[2] / raw[2]) > 1 + c.jump
            if not (moved or resized):
                raw = c.box_alpha * raw + (1 - c.box_alpha) * prev
        self.state = raw
        return raw

    def _search(self, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Pass 1: tight boxes B x 3 and which frames found a person (B bool)."""
        c, n = self.config, len(frames)
        full = snap_box(padded_frame_box(frames[0].shape[1], frames[0].shape[0]))
        start = full if self.state is None else snap_box(enlarge(self.state, c.search_scale))
        boxes = np.repeat(start[None], n, axis=0)
        _, j2d, ok = self.recovery.run(frames, boxes, c.search_scale_range)
        retry = np.flatnonzero(~ok) if self.state is not None else np.array([], dtype=int)
        if retry.size:  # the tracked box lost the person: look at the whole frame again
            boxes[retry] = full
            _, j2d[retry], ok[retry] = self.recovery.run([frames[i] for i in retry], boxes[retry],
                                                         c.search_scale_range)
        tight = box_from_joints(j2d, boxes, c.margin)
        ok &= np.isfinite(tight).all(axis=1) & (np.nan_to_num(tight[:, 2]) >= c.min_box)  # too small: give up
        return tight, ok

    def step(self, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A batch of consecutive frames -> crop θ B x 85, pass-2 boxes B x 3, plausible B."""
        tight, ok = self._search(frames)
        boxes = np.repeat(snap_box(padded_frame_box(frames[0].shape[1], frames[0].shape[0]))[None],
                          len(frames), axis=0)
        for i in np.flatnonzero(ok):
            boxes[i] = snap_box(self._smooth(tight[i]))
        thetas = np.full((len(frames), 85), np.nan)
        found = np.flatnonzero(ok)
        if found.size:
            thetas[found], _, ok[found] = self.recovery.run([frames[i] for i in found], boxes[found],
                                                            self.config.scale_range)
        return thetas, boxes, ok


def _batches(frames: Iterable[np.ndarray], size: int) -> Iterable[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def track_frames(frames: Iterable[np.ndarray], theta_fn: ThetaFn, smpl: nn.Module, *, batch_size: int = 8,
                 config: TrackerConfig | None = None, source: str | PathLike | None = None,
                 total: int | None = None, progress: Progress | None = None, role: str = "driver") -> MotionTrack:
    """Recover the body in every frame of a stream (RGB uint8 H x W x 3, all one size).

    theta_fn: HMR as a function (`hmr_theta_fn(load_hmr(...))`), smpl: the SMPL module.
    Frames stream through in batches of `batch_size`; memory holds one batch of frames.
    Errors name the `role` ('driver', 'source photo', ...) and the file `source`; progress(done, total)
    is called after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tracker = BoxTracker(theta_fn, smpl, config)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    size: tuple[int, int] | None = None
    done = 0
    for batch in _batches(frames, batch_size):
        size = size or (batch[0].shape[1], batch[0].shape[0])
        if any(f.shape[:2] != (size[1], size[0]) for f in batch):
            raise InputError(f"The {role}'s frames change size", path=source,
                             hint="Use a video (or image folder) whose frames all have one size.")
        parts.append(tracker.step(batch))
        done += len(batch)
        if progress is not None:
            progress(done, total)
    if size is None:
        raise InputError(f"The {role} has no frames", path=source,
                         hint="Check the file, and that start/duration select part of it.")
    thetas, boxes, ok = (np.concatenate(p) for p in zip(*parts))
    return finish_track(thetas, boxes, ok, size, source, role)
