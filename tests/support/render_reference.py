"""Slow, obviously-correct rasterizer: the official kernel's rules applied literally, face by face.

It exists only to check `rasterize.rasterize` (design habit 11). For every face in index order it
evaluates every pixel of the image (no bounding boxes, no tricks) and updates a z-buffer with a
strict "<", which is exactly how exact depth ties end up with the lower face index. Barycentrics
come from triangle-area ratios (a formula independent of the fast path's affine coefficients).
numpy, float64 by default; meant for small images (N <= 64) and meshes of up to ~14k faces.
"""

from __future__ import annotations

import numpy as np

from impersonator_cli.render.rasterize import EYE_DISTANCE, FAR, NEAR


def _area(ax, ay, bx, by, cx, cy):
    """Twice the signed area of triangle (a, b, c) (arrays broadcast)."""
    return (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)


def rasterize_reference_single(f2verts: np.ndarray, size: int, z_offset: float = EYE_DISTANCE,
                               dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """F x 3 x 3 corners (X, Y y-down normalized, SMPL z) -> (N x N face index, N x N x 3 w)."""
    v = np.asarray(f2verts, dtype=dtype)
    n = size
    # pixel centres, normalized; stored as float32 like the kernel's sample point
    centre = ((2 * np.arange(n) + 1 - n) / n).astype(np.float32).astype(dtype)
    Xp, Yp = np.meshgrid(centre, centre)                 # [r, c]: X = centre[c], Y = centre[r]
    Cp, Rp = np.meshgrid(np.arange(n, dtype=dtype), np.arange(n, dtype=dtype))
    depth = np.full((n, n), np.inf)
    fim = np.full((n, n), -1, dtype=np.int64)
    wim = np.zeros((n, n, 3))
    for f in range(v.shape[0]):
        X, Y, Z = v[f, :, 0], v[f, :, 1], v[f, :, 2] + dtype(z_offset)
        if (Y[2] - Y[0]) * (X[1] - X[0]) > (Y[1] - Y[0]) * (X[2] - X[0]):
            continue  # back face
        inside = np.ones((n, n), dtype=bool)
        for i, j in ((0, 1), (1, 2), (2, 0)):
            inside &= (Yp - Y[i]) * (X[j] - X[i]) <= (Xp - X[i]) * (Y[j] - Y[i])
        px = 0.5 * (X * n + n - 1)
        py = 0.5 * (Y * n + n - 1)
        whole = _area(px[0], py[0], px[1], py[1], px[2], py[2])
        if whole == 0 or not inside.any():
            continue
        w = np.stack([
            _area(Cp, Rp, px[1], py[1], px[2], py[2]) / whole,
            _area(px[0], py[0], Cp, Rp, px[2], py[2]) / whole,
            _area(px[0], py[0], px[1], py[1], Cp, Rp) / whole,
        ], axis=-1)
        w = np.clip(w, 0.0, 1.0)
        w = w / w.sum(-1, keepdims=True)
        zp = 1.0 / (w[..., 0] / Z[0] + w[..., 1] / Z[1] + w[..., 2] / Z[2])
        win = inside & (zp > NEAR) & (zp < FAR) & (zp < depth)
        depth[win] = zp[win]
        fim[win] = f
        wim[win] = w[win]
    return fim, wim


def rasterize_reference(f2verts, size: int, z_offset: float = EYE_DISTANCE,
                        dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Batched: B x F x 3 x 3 -> (B x N x N face index int64, B x N x N x 3 weights)."""
    arr = np.asarray(f2verts.detach().cpu() if hasattr(f2verts, "detach") else f2verts)
    outs = [rasterize_reference_single(a, size, z_offset, dtype) for a in arr]
    return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])
