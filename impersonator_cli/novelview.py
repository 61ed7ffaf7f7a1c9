"""Novel view synthesis (spec §3.8): the source person's posed mesh rotated rigidly, rendered with the
source camera, and synthesized from the source's own appearance."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .body.camera import euler_to_matrix, orbit_angles, rotate_vertices
from .body.model import BodyModel
from .compose import synthesize
from .render.body_view import BodyView, view_vertices
from .source import PreparedSource


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
            raise ValueError("give one pitch, one yaw, or equally many of each")
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
