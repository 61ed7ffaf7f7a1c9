"""Fast, vectorised face-index / weight-map rasterizer with the official renderer's pixel semantics.

The official renderer (neural_renderer's face-index/weight-map kernel, spec §2.2-§2.3) is a CUDA
extension that needs a compiler. This module computes the same maps in plain PyTorch, batched, on
CPU or CUDA, with no Python loop over faces or pixels.

Conventions (all in the final, y-down frame of spec §1.6):

* Input `f2verts` (B x F x 3 x 3): per face, per corner, (X, Y, z) with (X, Y) normalized image
  coordinates (x right, **y down**, [-1, 1] spans the image) and z the SMPL depth. The depth the
  z-buffer uses is z + EYE_DISTANCE (the `look_at` of §2.2 only shifts z; the projection is
  orthographic).
* Pixel (r, c) samples the point X = (2c+1)/N - 1, Y = (2r+1)/N - 1.
* Back-face rule. The kernel sees raster coordinates (x, y) = (X, -Y) and skips a face when
  (y2-y0)(x1-x0) < (y1-y0)(x2-x0). Substituting y = -Y multiplies both sides by -1 and flips the
  inequality, so in the y-down frame a face is KEPT iff

      (Y2 - Y0)(X1 - X0) <= (Y1 - Y0)(X2 - X0),

  i.e. the 2D cross product (v1-v0) x (v2-v0) = n_z <= 0: the right-handed normal of the corner
  order (X, Y-down, z) points towards the eye at z = -EYE_DISTANCE. A closed mesh with outward
  normals (SMPL, after HMR's rotation about x, which preserves handedness) shows its front faces.
* Inside test: the kernel's three edge tests, mapped to y-down the same way, keep a pixel centre p
  iff (Yp-Yi)(Xj-Xi) <= (Xp-Xi)(Yj-Yi) for edges (i, j) in (0,1), (1,2), (2,0); points on an edge
  are inside. For a kept (non-degenerate) face this is exactly "all three unclamped barycentrics
  >= 0", which is what is evaluated here, with a 1e-6 tolerance so that edge points stay inside
  despite float rounding (`reference.py` evaluates the edge tests literally). Faces with zero area
  are never drawn (the kernel divides by their zero area).
* Weights: affine barycentrics of the pixel index (c, r) w.r.t. the corners' pixel coordinates
  0.5 (X N + N - 1), 0.5 (Y N + N - 1), each clamped to [0, 1], then divided by their sum.
* Depth: z_p = 1 / sum_k (w_k / z_k); a pixel is used only if NEAR < z_p < FAR; the smallest z_p
  wins and exact ties go to the lower face index.

Results are float32 (as in the official kernel) whatever the input dtype; per-face set-up is done in
float64, which keeps the weights within ~1e-6 of exact arithmetic.

Algorithm: cull back faces; per-face integer pixel bounding boxes; the exact list of (face, pixel)
candidates is enumerated with `repeat_interleave`; every candidate gets its barycentrics and depth;
the z-buffer is a single `scatter_reduce(amin)` on an int64 key (float32 depth bits << 32 | face
index), which orders by depth then face index because positive float32 bit patterns are
order-preserving integers. Weights are then recomputed for the winning face of each pixel. Faces
covering huge areas are handled by splitting the candidate list into chunks of bounded size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from impersonator_cli.errors import UsageError

EYE_DISTANCE = 1.0 / math.tan(math.radians(30.0)) + 1.0  # 2.7320508...: z shift of look_at (§2.2)
NEAR = 0.1
FAR = 100.0
CHUNK_CANDIDATES = 1 << 21  # (face, pixel) candidates per chunk (>= N*N; float32-exact < 2^22)
MAX_SIZE = 2048  # so that one face's N*N candidates stay float32-exact
_BBOX_EPS = 1e-3  # pixels; bounding boxes are a superset, the exact inside test decides
_INSIDE_EPS = 1e-6  # barycentric units: points on an edge count as inside despite rounding
_NO_HIT = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class Raster:
    """Rasterized mesh.

    face_index: B x N x N int64, visible face per pixel, -1 = background
    weights:    B x N x N x 3 float32, barycentric weights of the face's corners 0, 1, 2 (0 on bg)
    """

    face_index: Tensor
    weights: Tensor
    pixels: Tensor | None = None  # optional: flat indices of the foreground pixels, ascending

    def foreground_pixels(self) -> Tensor:
        """Flat (b*N*N + r*N + c) indices of the foreground pixels, ascending (K int64)."""
        if self.pixels is not None:
            return self.pixels
        return torch.nonzero(self.face_index.reshape(-1) >= 0).squeeze(1)

    @property
    def size(self) -> int:
        return int(self.face_index.shape[-1])

    @property
    def foreground(self) -> Tensor:
        """B x N x N bool, True where some face is visible."""
        return self.face_index >= 0

    def to(self, device: torch.device | str) -> "Raster":
        pixels = None if self.pixels is None else self.pixels.to(device)
        return Raster(self.face_index.to(device), self.weights.to(device), pixels)


def face_vertices(vertices: Tensor, faces: Tensor) -> Tensor:
    """Gather per-face corners: B x V x D vertices, F x 3 faces -> B x F x 3 x D."""
    return vertices[:, faces.long()]


@dataclass(frozen=True)
class _FaceTable:
    """The S front-facing, finite faces of a batch, ascending by flat index b*F+f.

    flat:  S int64 flat face index b*F+f
    table: 16 x S float32 rows (see `_TABLE_ROWS`)
    first: S int64 flat index b*N*N + r0*N + c0 of the face's bounding-box origin
    count: S int64 pixels in the bounding box (0 = cannot cover any pixel)
    """

    flat: Tensor
    table: Tensor
    first: Tensor
    count: Tensor

    def take(self, idx: Tensor) -> "_FaceTable":
        return _FaceTable(self.flat[idx], self.table.index_select(1, idx), self.first[idx],
                          self.count[idx])


# Corner-0 pixel coords are split into an integer part (p0i, q0i) and a fraction (p0f, q0f) so that
# pixel offsets from corner 0 are formed exactly before any rounding;
# oc/orr = bbox origin - (p0i, q0i).
# g0..g3 are the barycentric gradients of `_weights`; iz* the inverse shifted depths. Rows 2..9 are
# all that `_resolve` needs.
_TABLE_ROWS = ("oc", "orr", "p0f", "q0f", "g0", "g1", "g2", "g3", "p0i", "q0i", "iz0", "iz1", "iz2",
               "width", "inv_width", "face")


def _face_setup(f2verts: Tensor, size: int, z_offset: float) -> _FaceTable:
    """Cull back faces and non-finite faces, then build the per-face table (float64 -> float32)."""
    B, F = f2verts.shape[:2]
    v = f2verts.detach().to(torch.float32).reshape(B * F, 3, 3).permute(1, 2, 0).contiguous()
    v = v.view(9, B * F)                                                       # x0 y0 z0 x1 ...
    x0, y0, x1, y1, x2, y2 = v[0], v[1], v[3], v[4], v[6], v[7]
    keep = (y2 - y0) * (x1 - x0) <= (y1 - y0) * (x2 - x0)                    # back-face rule
    keep &= torch.isfinite(v.sum(0))
    flat = torch.nonzero(keep).squeeze(1)
    v = v.index_select(1, flat).double()
    n = float(size)
    pq = v.view(3, 3, -1)[:, :2] * (n / 2) + (n - 1) / 2              # 3 x 2 x S pixel coords
    (p0, q0), (p1, q1), (p2, q2) = pq
    e1, f1, e2, f2 = p1 - p0, q1 - q0, p2 - p0, q2 - q0
    den = e1 * f2 - e2 * f1
    origin, extent = _boxes(pq, size)
    count = torch.where(den < 0, extent[0] * extent[1], 0)  # kept faces: den <= 0; 0 = no area
    first = (torch.div(flat, F, rounding_mode="floor") * size + origin[1]) * size + origin[0]
    p0i, q0i = p0.round(), q0.round()
    wd = extent[0].double().clamp(min=1)
    rows = (origin[0] - p0i, origin[1] - q0i, p0 - p0i, q0 - q0i, f2 / den, e2 / den, e1 / den,
            f1 / den, p0i, q0i, 1.0 / (v[2] + z_offset), 1.0 / (v[5] + z_offset),
            1.0 / (v[8] + z_offset), wd, 1.0 / wd, flat % F)
    table = torch.empty(len(rows), flat.numel(), dtype=torch.float32, device=flat.device)
    for i, row in enumerate(rows):
        table[i] = row
    return _FaceTable(flat, table, first, count)


def _boxes(pq: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Pixel bounding boxes clipped to the image, from 3 corners x 2 (col, row) x S pixel coords.

    Returns origin (2 x S int64: first column, first row) and extent (2 x S int64: width, height,
    0 when the box misses the image).
    """
    lo = torch.minimum(torch.minimum(pq[0], pq[1]), pq[2]).clamp_(-2.0, float(size + 1))
    hi = torch.maximum(torch.maximum(pq[0], pq[1]), pq[2]).clamp_(-2.0, float(size + 1))
    lo = torch.ceil(lo - _BBOX_EPS).clamp_(min=0.0)
    hi = torch.floor(hi + _BBOX_EPS).clamp_(max=float(size - 1))
    return lo.long(), (hi - lo + 1.0).clamp_(min=0.0).long()


def _weights(grad: Tensor, dc: Tensor, dr: Tensor) -> Tensor:
    """Unclamped barycentrics (3 x K) of pixel offsets (dc, dr) from corner 0.

    With corner pixel coords (p_k, q_k), e_k = p_k - p0, f_k = q_k - q0, den = e1 f2 - e2 f1 and
    grad = (f2, e2, e1, f1) / den: w1 = dc g0 - dr g1, w2 = dr g2 - dc g3, w0 = 1 - w1 - w2.
    """
    w1 = dc * grad[0] - dr * grad[1]
    w2 = dr * grad[2] - dc * grad[3]
    return torch.stack([1.0 - w1 - w2, w1, w2])


def _normalise(w: Tensor) -> Tensor:
    """Clamp each weight to [0, 1], then divide by their sum (3 x K)."""
    w = w.clamp(0.0, 1.0)
    return w / w.sum(0, keepdim=True)


def _chunks(count: Tensor, budget: int) -> list[tuple[int, int]]:
    """Split faces (in order) into [start, end) runs whose candidate counts sum to <= budget."""
    csum = torch.cumsum(count, 0)
    total = int(csum[-1]) if csum.numel() else 0
    if total <= budget:
        return [(0, count.numel())]
    bounds = [0]
    while bounds[-1] < count.numel():
        base = int(csum[bounds[-1] - 1]) if bounds[-1] > 0 else 0
        end = int(torch.searchsorted(csum, base + budget, right=True))
        bounds.append(max(end, bounds[-1] + 1))
    return list(zip(bounds[:-1], bounds[1:]))


def rasterize(f2verts: Tensor, size: int, z_offset: float = EYE_DISTANCE) -> Raster:
    """Face-index and weight maps of meshes given as per-face corners.

    f2verts: B x F x 3 x 3  (X, Y) normalized y-down image coords, z = SMPL depth
             (the z-buffer uses z + z_offset)
    size:    N, output resolution
    returns  Raster(face_index B x N x N int64, weights B x N x N x 3 float32)
    """
    if not 1 <= size <= MAX_SIZE:
        raise UsageError(f"Cannot rasterize at {size}x{size} pixels",
                         hint=f"Use an image size between 1 and {MAX_SIZE}.")
    B, F = f2verts.shape[:2]
    faces = _face_setup(f2verts, size, z_offset)
    faces = faces.take(torch.nonzero(faces.count).squeeze(1))
    zbuf = torch.full((B * size * size,), _NO_HIT, dtype=torch.int64, device=f2verts.device)
    for a, b in _chunks(faces.count, max(CHUNK_CANDIDATES, size * size)):
        _scatter_chunk(zbuf, faces.take(torch.arange(a, b, device=zbuf.device)), size)
    return _resolve(zbuf, faces, B, F, size)


def _scatter_chunk(zbuf: Tensor, faces: _FaceTable, size: int) -> None:
    """Enumerate the (face, pixel) candidates of some faces and min-reduce their keys into zbuf."""
    count = faces.count
    total = int(count.sum())
    owner = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count,
                                    output_size=total)
    start = (torch.cumsum(count, 0) - count).to(torch.float32)
    P = faces.table.index_select(1, owner)
    local = torch.arange(total, device=count.device, dtype=torch.float32) - start[owner]
    dy = torch.floor((local + 0.5) * P[14])            # exact: local < 2^22, see CHUNK_CANDIDATES
    dx = local - dy * P[13]
    pixel = faces.first[owner] + (dy * size + dx).long()
    w = _weights(P[4:8], (dx + P[0]) - P[2], (dy + P[1]) - P[3])
    inside = torch.amin(w, 0) >= -_INSIDE_EPS
    w = _normalise(w)
    zp = 1.0 / (w[0] * P[10] + w[1] * P[11] + w[2] * P[12])
    ok = inside & (zp > NEAR) & (zp < FAR)
    key = (zp.view(torch.int32).to(torch.int64) << 32) | P[15].long()
    zbuf.scatter_reduce_(0, pixel, torch.where(ok, key, _NO_HIT), "amin")


def _resolve(zbuf: Tensor, faces: _FaceTable, B: int, F: int, size: int) -> Raster:
    """Winning face per pixel and its weights, from the reduced z-buffer keys."""
    pix = torch.nonzero(zbuf != _NO_HIT).squeeze(1)
    win = zbuf[pix] & 0xFFFFFFFF                                  # face index within the batch
    face = torch.full_like(zbuf, -1).index_copy_(0, pix, win)
    weights = torch.zeros(zbuf.numel(), 3, dtype=torch.float32, device=zbuf.device)
    if pix.numel():
        batch = torch.div(pix, size * size, rounding_mode="floor")
        row_of = torch.empty(B * F, dtype=torch.int64, device=zbuf.device)
        row_of[faces.flat] = torch.arange(faces.flat.numel(), device=zbuf.device)
        P = faces.table[2:10].index_select(1, row_of.index_select(0, win + batch * F))
        rc = pix - batch * (size * size)
        r = torch.div(rc, size, rounding_mode="floor")
        c = (rc - r * size).to(torch.float32)
        w = _weights(P[2:6], (c - P[6]) - P[0], (r.to(torch.float32) - P[7]) - P[1])
        weights.index_copy_(0, pix, _normalise(w).T)
    return Raster(face.view(B, size, size), weights.view(B, size, size, 3), pix)
