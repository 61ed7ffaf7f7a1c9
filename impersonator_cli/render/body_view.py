"""A posed SMPL body seen through a weak-perspective camera: the bridge from stage 1 to stage 2.

`view_body` turns (cam, pose, shape) into projected per-face vertices and their raster; every job
(imitate, swap, novel view) renders bodies through it, so the conventions live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from impersonator_cli.body import camera
from impersonator_cli.body.smpl import SMPL
from impersonator_cli.render.rasterize import Raster, face_vertices, rasterize


@dataclass(frozen=True)
class BodyView:
    """One batch of posed bodies rendered at one size.

    vertices: B x V x 3   posed SMPL vertices (body frame, before projection)
    f2verts:  B x F x 3 x 3  per-face projected corners (X, Y y-down, z)
    raster:   face-index / weight maps (B x N x N)
    """

    vertices: Tensor
    f2verts: Tensor
    raster: Raster

    @property
    def p2verts(self) -> Tensor:
        """B x F x 3 x 2: per-face 2D positions (the source side of a transformation flow)."""
        return self.f2verts[..., :2]


def project_faces(vertices: Tensor, cam: Tensor, faces: Tensor) -> Tensor:
    """vertices: B x V x 3, cam: B x 3 (s, tx, ty), faces: F x 3  ->  B x F x 3 x 3 (X, Y, z)."""
    return face_vertices(camera.project(vertices, cam), faces)


def view_vertices(vertices: Tensor, cam: Tensor, faces: Tensor, size: int,
                  rasterizer: Callable[[Tensor, int], Raster] = rasterize) -> BodyView:
    """Project and rasterize already posed vertices (novel views rotate them first)."""
    f2verts = project_faces(vertices, cam, faces)
    return BodyView(vertices=vertices, f2verts=f2verts, raster=rasterizer(f2verts, size))


def view_body(smpl: SMPL, cam: Tensor, pose: Tensor, shape: Tensor, size: int,
              rasterizer: Callable[[Tensor, int], Raster] = rasterize) -> BodyView:
    """cam: B x 3, pose: B x 72, shape: B x 10 (or 1 x 10, broadcast)  ->  BodyView at N = size."""
    if shape.shape[0] != pose.shape[0]:
        shape = shape.expand(pose.shape[0], -1)
    with torch.no_grad():
        vertices = smpl(pose, shape).vertices
    return view_vertices(vertices, cam.to(vertices), smpl.faces, size, rasterizer)
