"""Per-source work, done once: the person-centred crop, its body, maps, masks and background.

A source is a photo of a person. Its SMPL parameters come from HMR (two passes, person-centred, see
body/tracking.py) or from a given motion file (one frame, the frame convention of body/motion.py).
Everything downstream works in the square crop of side `size` around the person.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from impersonator_cli.pipeline.background import BackgroundSpec, from_uint8, make_background, parse_background
from impersonator_cli.pipeline.rig import BodyModel
from impersonator_cli.body.tracking import (
    box_corner, box_from_joints, cam_frame_norm_to_crop, hmr_theta_fn, padded_frame_box, snap_box, square_crop,
    theta_joints, track_frames,
)
from impersonator_cli.errors import InputError, UsageError, check_option
from impersonator_cli.defaults import BG_KS, FT_KS
from impersonator_cli.render.flow import Masks, condition_masks
from impersonator_cli.io.images import is_video_path, read_image, resize_rgb
from impersonator_cli.render.body_view import BodyView, view_body

CROPS = ("person", "full")


@dataclass(frozen=True)
class SourceOptions:
    """How a source photo is prepared (the CLI's --crop, --background, --bg-ks, --ft-ks).

    crop: person (square crop around the person) | full (the whole photo padded to a square);
    background: inpaint | source | a colour (see background.parse_background);
    bg_ks / ft_ks: dilation of the body mask for inpainting / of the source crop mask (pixels).
    """

    crop: str = "person"
    background: str = "inpaint"
    bg_ks: int = BG_KS
    ft_ks: int = FT_KS

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise UsageError(f"Unknown crop '{self.crop}'", hint=f"Use one of: {', '.join(CROPS)}.")
        parse_background(self.background)  # a UsageError names a bad value now, before any work
        for name in ("bg_ks", "ft_ks"):
            value = getattr(self, name)
            check_option(isinstance(value, int) and 1 <= value <= 255, name, "a kernel size in 1..255 pixels", value)


@dataclass(frozen=True)
class PreparedSource:
    """One source person, ready for any job.

    image:      1 x 3 x N x N  the square crop in [-1, 1]
    theta:      1 x 85         (cam in crop coordinates, pose, shape)
    view:       BodyView at N
    cond:       1 x 3 x N x N  uv_seg condition map
    masks:      Masks (bg / body / ft)
    background: 1 x 3 x N x N
    box:        (cx, cy, size) of the crop in source-frame pixels
    """

    name: str
    image: Tensor
    theta: Tensor
    view: BodyView
    cond: Tensor
    masks: Masks
    background: Tensor
    background_note: str
    box: np.ndarray
    frame_size: tuple[int, int]
    frame: np.ndarray | None = None  # the original photo (H x W x 3 uint8), for pasting results back

    @property
    def cam(self) -> Tensor:
        return self.theta[:, :3]

    @property
    def pose(self) -> Tensor:
        return self.theta[:, 3:75]

    @property
    def shape(self) -> Tensor:
        return self.theta[:, 75:85]


def frame_theta(body: BodyModel, rgb: np.ndarray, path: Path, batch_size: int = 1,
                role: str = "source photo") -> np.ndarray:
    """HMR (two-pass, person-centred) on one photo -> 85 theta in the frame convention.
    Errors name the photo's `role` ('source photo', 'reference photo') and `path`."""
    track = track_frames([rgb], hmr_theta_fn(body.hmr()), body.smpl, batch_size=batch_size, source=path,
                         role=role)
    return track.thetas[0]


def person_box(body: BodyModel, theta_frame: np.ndarray, frame_size: tuple[int, int], crop: str) -> np.ndarray:
    """Square crop box (cx, cy, size) in frame pixels: around the person's joints, or the whole frame."""
    full = padded_frame_box(*frame_size)
    if crop == "full":
        return full
    joints = theta_joints(body.smpl, torch.from_numpy(theta_frame[None]).float())
    return box_from_joints(joints, full[None])[0]


def prepare_source(body: BodyModel, path: str | Path, size: int, *, theta: np.ndarray | None = None,
                   crop: str = "person", background: BackgroundSpec = BackgroundSpec(),
                   inpaintor=None, bg_ks: int = BG_KS, ft_ks: int = FT_KS,
                   role: str = "source photo") -> PreparedSource:
    """Read a source photo and do all per-source work except the generator's encoding.
    `role` names the photo in errors ('source photo', 'reference photo')."""
    path = Path(path)
    if is_video_path(path):
        raise InputError("The source must be a photo, but this is a video", path=path,
                         hint="Give an image (JPEG/PNG/WebP); `swap` also accepts a video source.")
    return prepare_rgb(body, read_image(path), path, size, theta=theta, crop=crop, background=background,
                       inpaintor=inpaintor, bg_ks=bg_ks, ft_ks=ft_ks, role=role)


def prepare_rgb(body: BodyModel, rgb: np.ndarray, path: Path, size: int, *, theta: np.ndarray | None = None,
                crop: str = "person", background: BackgroundSpec = BackgroundSpec(),
                inpaintor=None, bg_ks: int = BG_KS, ft_ks: int = FT_KS,
                role: str = "source photo") -> PreparedSource:
    """All per-source work on an RGB image (H x W x 3 uint8) named by `path` (and `role`, in errors)."""
    frame_size = (rgb.shape[1], rgb.shape[0])
    theta_frame = frame_theta(body, rgb, path, role=role) if theta is None else np.asarray(theta, np.float64)
    if not np.isfinite(theta_frame).all() or theta_frame.shape != (85,):
        raise InputError("The SMPL parameters given for the source are not a finite 85-vector", path=path)
    box = snap_box(person_box(body, theta_frame, frame_size, crop))  # the exact pixels cropped
    crop_rgb = resize_rgb(square_crop(rgb, box), (size, size))
    device = body.device
    cam = cam_frame_norm_to_crop(torch.from_numpy(theta_frame[None, :3]), box[None], frame_size).float()
    theta_crop = torch.cat([cam, torch.from_numpy(theta_frame[None, 3:]).float()], 1).to(device)
    return source_from_tensors(
        body, from_uint8(crop_rgb, device), theta_crop,
        lambda image, masks: make_background(background, image, masks.body_mask, inpaintor),
        name=path.name, bg_ks=bg_ks, ft_ks=ft_ks, box=box, frame_size=frame_size, frame=rgb)


BackgroundFn = Callable[[Tensor, Masks], "tuple[Tensor, str]"]  # (image, masks) -> (background, note)


def source_from_tensors(body: BodyModel, image: Tensor, theta: Tensor, background: Tensor | BackgroundFn, *,
                        name: str = "source", bg_ks: int = BG_KS, ft_ks: int = FT_KS, box: np.ndarray | None = None,
                        frame_size: tuple[int, int] | None = None, frame: np.ndarray | None = None) -> PreparedSource:
    """The per-source work on an image already cropped: image 1 x 3 x N x N in [-1, 1], theta 1 x 85
    (cam in crop coordinates, pose, shape); background: 1 x 3 x N x N, or a function of (image, masks).
    box / frame_size default to the image being the whole frame."""
    size = image.shape[-1]
    view = view_body(body.smpl, theta[:, :3], theta[:, 3:75], theta[:, 75:], size, body.rasterizer)
    cond = body.maps.render_cond(view.raster.face_index)
    masks = condition_masks(cond, bg_ks=bg_ks, ft_ks=ft_ks)
    bg, note = (background, "given") if isinstance(background, Tensor) else background(image, masks)
    box = np.array([size / 2, size / 2, size], np.float64) if box is None else box
    return PreparedSource(name=name, image=image, theta=theta, view=view, cond=cond, masks=masks, background=bg,
                          background_note=note, box=box, frame_size=frame_size or (size, size), frame=frame)


def paste_back(frame: np.ndarray, crop: np.ndarray, box: np.ndarray, feather: float = 0.03) -> np.ndarray:
    """Place a square result back into the photo it was cut from, without stretching.

    frame: H x W x 3 uint8, crop: N x N x 3 uint8 (resized to the box side), box: (cx, cy, S) as cropped.
    The edges are blended over `feather` x S pixels so the box leaves no seam.
    """
    x0, y0, size = (int(v) for v in box_corner(snap_box(box)))
    patch = resize_rgb(crop, (size, size)).astype(np.float32)
    ramp = np.clip((np.arange(size) + 0.5) / max(1.0, feather * size), 0, 1)
    edge = np.minimum(ramp, ramp[::-1])
    alpha = np.minimum(edge[:, None], edge[None, :])[..., None]
    h, w = frame.shape[:2]
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + size, w), min(y0 + size, h)
    out = frame.copy()
    if fx1 <= fx0 or fy1 <= fy0:
        return out
    region = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
    mixed = alpha[region] * patch[region] + (1 - alpha[region]) * frame[fy0:fy1, fx0:fx1]
    out[fy0:fy1, fx0:fx1] = np.round(mixed).astype(np.uint8)
    return out
