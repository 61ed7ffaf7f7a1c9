"""Camera math of the body stage: weak perspective, crop <-> frame cameras, imitation camera
strategies and the rigid motion used for novel views (rotation matrices: body/rotation.py).

Conventions (spec §1.6): a camera is (s, tx, ty). A body point (x, y, z) maps to normalized image
coordinates (X, Y) = s * (x + tx, y + ty), x to the right and **y downwards**, in [-1, 1] over the
N x N crop; Z = z is kept unscaled for depth ordering. Pixel column c has its centre at
X = (2c + 1) / N - 1. A *pixel camera* (s_px, tx_px, ty_px) maps instead to continuous pixel
coordinates u = s_px * (x + tx_px), where pixel c covers [c, c + 1) (its centre is at c + 0.5).
All angles are in radians.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from impersonator_cli.errors import UsageError

CAMERA_STRATEGIES = ("smooth", "source", "copy")


def project(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Weak-perspective projection keeping depth.

    points: B x N x 3, cam: B x 3 (s, tx, ty)  ->  B x N x 3 (X, Y, Z) with (X, Y) = s (xy + t), Z = z
    """
    s = cam[:, None, 0:1]
    xy = s * (points[..., :2] + cam[:, None, 1:3])
    return torch.cat([xy, points[..., 2:3]], dim=-1)


def project_2d(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """points: B x N x 3, cam: B x 3  ->  B x N x 2 normalized image coordinates (the j2d of HMR)."""
    return cam[:, None, 0:1] * (points[..., :2] + cam[:, None, 1:3])


def pixel_centres(n: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """n  ->  n normalized coordinates of the pixel centres, (2i + 1) / n - 1."""
    i = torch.arange(n, dtype=torch.float64, device=device)
    return ((2 * i + 1) / n - 1).to(dtype)


def _box(box: torch.Tensor | Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(box, dtype=like.dtype, device=like.device)


def cam_to_pixels(cam: torch.Tensor, n: int) -> torch.Tensor:
    """Normalized crop camera -> crop-pixel camera: s_px = n s / 2, t_px = t + 1 / s.

    cam: ... x 3  ->  ... x 3
    """
    s, t = cam[..., :1], cam[..., 1:]
    return torch.cat([n * s / 2, t + 1 / s], dim=-1)


def cam_from_pixels(cam_px: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `cam_to_pixels`.  cam_px: ... x 3  ->  ... x 3"""
    s = 2 * cam_px[..., :1] / n
    return torch.cat([s, cam_px[..., 1:] - 1 / s], dim=-1)


def cam_crop_to_frame(cam: torch.Tensor, box: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Normalized camera of a square crop -> pixel camera of the whole frame.

    The crop is the frame region [x0, x0 + size) x [y0, y0 + size) (frame pixels), resized to the
    network's N x N; a normalized crop coordinate X lands on frame pixel x0 + size (X + 1) / 2, so
    s_f = size s / 2 and t_f = t + 1 / s + (x0, y0) / s_f. With box (0, 0, N) this is `cam_to_pixels`.

    cam: ... x 3, box: ... x 3 (x0, y0, size)  ->  ... x 3 (s_f, tx_f, ty_f)
    """
    box = _box(box, cam)
    s_f = box[..., 2:3] * cam[..., :1] / 2
    t_f = cam[..., 1:] + 1 / cam[..., :1] + box[..., :2] / s_f
    return torch.cat([s_f, t_f], dim=-1)


def cam_frame_to_crop(cam_f: torch.Tensor, box: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Inverse of `cam_crop_to_frame`: frame pixel camera -> normalized camera of the crop `box`.

    cam_f: ... x 3, box: ... x 3 (x0, y0, size)  ->  ... x 3 (s, tx, ty)
    """
    box = _box(box, cam_f)
    s_f = cam_f[..., :1]
    s = 2 * s_f / box[..., 2:3]
    t = cam_f[..., 1:] - box[..., :2] / s_f - 1 / s
    return torch.cat([s, t], dim=-1)


def drive_cameras(cam_src: torch.Tensor, cams_tgt: torch.Tensor, strategy: str) -> torch.Tensor:
    """Cameras of the driving bodies for motion imitation (spec §3.6).

    smooth: (s_src, t_src + t_tgt(t) - t_tgt(0)); source: cam_src every frame; copy: cams_tgt.
    cam_src: 3, cams_tgt: T x 3  ->  T x 3
    """
    if strategy == "copy":
        return cams_tgt.clone()
    src = cam_src.to(cams_tgt).reshape(1, 3).expand(cams_tgt.shape[0], 3)
    if strategy == "source":
        return src.clone()
    if strategy == "smooth":
        offset = cams_tgt[:, 1:] - cams_tgt[:1, 1:]
        return torch.cat([src[:, :1], src[:, 1:] + offset], dim=-1)
    raise UsageError(f"Unknown camera strategy '{strategy}'",
                     hint=f"Choose one of: {', '.join(CAMERA_STRATEGIES)}.")


def rotate_vertices(verts: torch.Tensor, rot: torch.Tensor,
                    trans: torch.Tensor | None = None) -> torch.Tensor:
    """Novel-view rigid motion with row vectors (spec §3.8): V' = V R + t.

    verts: B x V x 3, rot: 3 x 3 or B x 3 x 3, trans: 3 or B x 3 (optional)  ->  B x V x 3
    """
    out = verts @ rot.to(verts)
    if trans is not None:
        out = out + trans.to(verts).reshape(-1, 1, 3)
    return out


def orbit_angles(n: int, alpha: float = 0.0, gamma: float = 0.0) -> torch.Tensor:
    """n views around the vertical axis: (alpha, 2 pi i / n, gamma) for i < n.  -> n x 3 radians

    n=180 gives the official 2-degree turntable; n=16, alpha=gamma=10 deg the 22.5-degree grid.
    """
    beta = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([torch.full_like(beta, alpha), beta, torch.full_like(beta, gamma)], dim=-1)
