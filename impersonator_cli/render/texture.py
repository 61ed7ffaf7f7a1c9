"""Texture rendering through the face-index / weight maps (used for the mannequin's images).

The generator never needs this: it is how the no-download demo and the tests make "photos" of a
textured body whose SMPL parameters are known exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from impersonator_cli.render.rasterize import Raster


def face_corner_uv(vt: Tensor, face_vt: Tensor) -> Tensor:
    """vt: M x 2 (u, v), face_vt: F x 3 indices  ->  F x 3 x 2 per-face corner UVs."""
    return vt[face_vt.long()]


def pixel_uv(raster: Raster, corner_uv: Tensor) -> Tensor:
    """Barycentric interpolation of corner UVs: -> B x N x N x 2 (0 on background)."""
    fim = raster.face_index.clamp(min=0)
    uv = corner_uv.to(raster.weights)[fim]  # B x N x N x 3 x 2
    out = (raster.weights.unsqueeze(-1) * uv).sum(dim=-2)
    return out * raster.foreground.unsqueeze(-1).to(out)


def render_texture(raster: Raster, corner_uv: Tensor, texture: Tensor, background: Tensor | None = None) -> Tensor:
    """Sample `texture` (C x H x W, row 0 at v = 1) at each body pixel's UV.

    raster: B x N x N, corner_uv: F x 3 x 2, background: B x C x N x N or None (zeros)
    ->  B x C x N x N
    """
    uv = pixel_uv(raster, corner_uv)
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1)
    tex = texture.to(uv).unsqueeze(0).expand(uv.shape[0], -1, -1, -1)
    colour = F.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mask = raster.foreground.unsqueeze(1).to(colour)
    bg = torch.zeros_like(colour) if background is None else background.to(colour)
    return colour * mask + bg * (1 - mask)
