"""The mannequin's front disk: the silhouette field, its traced outline and the quad blocks.

The front silhouette is the zero set of the soft-union field phi(x, y) (`silhouette_field`). Its
outline is traced by marching squares, projected onto phi = 0 and cut at 19 corners into pieces;
six structured quad blocks (torso, 2 legs, 2 arms, head) are filled in with transfinite (Coons)
interpolation into the planar disk that `mannequin.mannequin_mesh` doubles into a closed surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LSE_K = 10.0  # sharpness of the soft union (fillets at crotch, armpits, neck)

# Tapered capsules of the body's left side (x > 0) and the neck:
# (ax, ay, bx, by, r_a, r_b, depth ratio). Half-depth in z = ratio * radius.
_CAPSULES_LEFT = np.array(
    [
        (0.15, 0.22, 0.43, 0.22, 0.055, 0.045, 1.0),  # upper arm
        (0.43, 0.22, 0.68, 0.22, 0.045, 0.035, 1.0),  # forearm
        (0.70, 0.22, 0.835, 0.22, 0.042, 0.042, 0.55),  # hand (flat)
        (0.09, -0.30, 0.105, -0.69, 0.08, 0.055, 1.0),  # thigh
        (0.105, -0.69, 0.095, -1.09, 0.055, 0.04, 1.0),  # shin
        (0.095, -1.10, 0.10, -1.13, 0.045, 0.045, 2.4),  # foot (deep in z)
    ]
)
_MIDLINE = np.array([(0.0, 0.24, 0.0, 0.36, 0.05, 0.05, 1.0),  # neck
                     (-0.15, 0.22, 0.15, 0.22, 0.055, 0.055, 1.0)])  # shoulder line
_TORSO_HALF_DEPTH = 0.10
_HEAD = (0.0, 0.43, 0.085, 0.11, 0.095)  # centre x, y, semi-axes x, y, half-depth

# Block resolution: quads across (u) and along (v); they give exactly 3444 front quads.
_N_LEG, _N_ARM, _N_NECK, _N_SHOULDER = 12, 9, 12, 6
_N_SIDE, _L_LEG, _L_ARM, _L_HEAD = 32, 56, 50, 18
NUM_FRONT_QUADS = 3444


# ----------------------------------------------------------------------------- silhouette field
def _all_capsules() -> np.ndarray:
    mirrored = _CAPSULES_LEFT.copy()
    mirrored[:, [0, 2]] *= -1.0
    return np.concatenate([_CAPSULES_LEFT, mirrored, _MIDLINE])


def _part_fields(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-primitive fields. p: N x 2 -> (phi_i: N x P, half-depth_i: N x P)."""
    caps = _all_capsules()
    x, y = p[:, 0:1], p[:, 1:2]
    abx, aby = caps[:, 2] - caps[:, 0], caps[:, 3] - caps[:, 1]
    rx, ry = x - caps[:, 0], y - caps[:, 1]
    t = np.clip((rx * abx + ry * aby) / (abx * abx + aby * aby), 0.0, 1.0)
    r = caps[:, 4] + t * (caps[:, 5] - caps[:, 4])
    d2 = (rx - t * abx) ** 2 + (ry - t * aby) ** 2
    phis = [1.0 - d2 / r**2]
    depths = [caps[:, 6] * r]
    x, y = x[:, 0], y[:, 0]
    half_w = 0.16 - 0.025 * np.exp(-(((y + 0.06) / 0.1) ** 2))
    phis.append((1.0 - (x / half_w) ** 4 - ((y + 0.045) / 0.315) ** 4)[:, None])
    depths.append(np.full((len(p), 1), _TORSO_HALF_DEPTH))
    cx, cy, sx, sy, hd = _HEAD
    phis.append((1.0 - ((x - cx) / sx) ** 2 - ((y - cy) / sy) ** 2)[:, None])
    depths.append(np.full((len(p), 1), hd))
    return np.concatenate(phis, 1), np.concatenate(depths, 1)


def silhouette_field(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft-union field and blended half-depth. p: N x 2 -> (phi: N, A: N); body = phi > 0."""
    phi_i, depth_i = _part_fields(p)
    m = phi_i.max(1, keepdims=True)
    e = np.exp(_LSE_K * (phi_i - m))
    phi = m[:, 0] + np.log(e.sum(1)) / _LSE_K
    return phi, (e * depth_i).sum(1) / e.sum(1)


def _project_to_outline(p: np.ndarray, steps: int = 4) -> np.ndarray:
    """Newton steps along the field gradient onto phi = 0. p: N x 2 -> N x 2."""
    h = 1e-6
    for _ in range(steps):
        f = silhouette_field(p)[0]
        gx = (silhouette_field(p + [h, 0])[0] - silhouette_field(p - [h, 0])[0]) / (2 * h)
        gy = (silhouette_field(p + [0, h])[0] - silhouette_field(p - [0, h])[0]) / (2 * h)
        g = np.stack([gx, gy], 1)
        p = p - (f / (g * g).sum(1))[:, None] * g
    return p

# ----------------------------------------------------------------------------- outline
def _cell_segments(s: np.ndarray, centre_inside, nx: int) -> list[tuple[int, int]]:
    """Marching-squares segments as pairs of grid-edge ids. s: ny x nx inside flags;
    centre_inside(j, i) says whether the centre of cell (j, i) is inside (saddles only)."""
    ny = s.shape[0]
    bl, br, tr, tl = s[:-1, :-1], s[:-1, 1:], s[1:, 1:], s[1:, :-1]
    j, i = np.mgrid[0 : ny - 1, 0 : nx - 1]
    off = ny * nx
    edges = np.stack([j * nx + i, (j + 1) * nx + i, off + j * nx + i, off + j * nx + i + 1], -1)
    cut = np.stack([bl != br, tl != tr, bl != tl, br != tr], -1)  # bottom, top, left, right
    segs = []
    two = cut.sum(-1) == 2
    e2 = edges[two][cut[two]].reshape(-1, 2)
    segs.extend(map(tuple, e2.tolist()))
    for jj, ii in zip(*np.nonzero(cut.sum(-1) == 4)):  # saddles: cut off corners unlike the centre
        b, t, l, r = edges[jj, ii]
        if bl[jj, ii] != centre_inside(jj, ii):
            segs += [(b, l), (t, r)]
        else:
            segs += [(b, r), (t, l)]
    return segs


def _longest_loop(segs: list[tuple[int, int]]) -> list[int]:
    adj: dict[int, list[int]] = {}
    for a, b in segs:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    seen: set[int] = set()
    best: list[int] = []
    for start in adj:
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = adj[cur][0] if adj[cur][0] != prev else adj[cur][1]
            if nxt == start:
                break
            loop.append(nxt)
            seen.add(nxt)
            prev, cur = cur, nxt
        best = loop if len(loop) > len(best) else best
    return best


def _trace_outline(step: float = 0.008) -> np.ndarray:
    """The silhouette outline as a dense CCW polyline starting at the crotch. -> N x 2."""
    xs = np.arange(-0.95, 0.95 + 1e-9, step) + step / 3  # offset: no samples exactly at x = 0
    ys = np.arange(-1.25, 0.62 + 1e-9, step)
    gx, gy = np.meshgrid(xs, ys)
    phi = silhouette_field(np.stack([gx.ravel(), gy.ravel()], 1))[0].reshape(gx.shape)

    def centre_inside(j: int, i: int) -> bool:
        return bool(silhouette_field(np.array([[xs[i] + step / 2, ys[j] + step / 2]]))[0][0] > 0)

    ids = np.array(_longest_loop(_cell_segments(phi > 0, centre_inside, len(xs))))
    off = phi.size
    horiz = ids < off
    e = ids % off
    j, i = e // len(xs), e % len(xs)
    j2, i2 = j + (~horiz), i + horiz
    f1, f2 = phi[j, i], phi[j2, i2]
    w = f1 / (f1 - f2)
    pts = np.stack([xs[i] + w * (xs[i2] - xs[i]), ys[j] + w * (ys[j2] - ys[j])], 1)
    pts = _project_to_outline(pts)
    if np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1]) < 0:
        pts = pts[::-1]
    return _start_at_crotch(pts)


def _start_at_crotch(pts: np.ndarray) -> np.ndarray:
    """Roll the loop so it starts at the lower crossing of x = 0, inserting that exact point."""
    nxt = np.roll(pts, -1, 0)
    cross = np.nonzero((pts[:, 0] < 0) & (nxt[:, 0] >= 0))[0]
    k = cross[np.argmin(pts[cross, 1])]
    w = pts[k, 0] / (pts[k, 0] - nxt[k, 0])
    crotch = _project_to_outline((pts[k] + w * (nxt[k] - pts[k]))[None] * [0, 1])
    crotch[:, 0] = 0.0
    return np.concatenate([crotch, np.roll(pts, -(k + 1), 0)])


# ----------------------------------------------------------------------------- front disk
_CORNERS_LEFT = [(0.05, -1.13), (0.145, -1.13), (0.19, -0.36), (0.20, 0.15), (0.835, 0.17),
                 (0.835, 0.27), (0.17, 0.31), (0.065, 0.29), (0.07, 0.52)]


def _corner_points() -> np.ndarray:
    """Design points near the 18 block corners after the crotch, in CCW outline order. -> 18 x 2"""
    left = np.array(_CORNERS_LEFT)
    right = left[::-1] * [-1.0, 1.0]
    return np.concatenate([left, right])


_CONCAVE = {3, 7, 10, 14}  # armpits and neck bases (indices into _corner_points)


def _corner_index(dense: np.ndarray, design: np.ndarray, k: int) -> int:
    """Outline index of a corner: nearest to the design point, or, for a concave corner,
    the sharpest right turn within 2.5 cm of it."""
    dist = np.linalg.norm(dense - design, axis=1)
    if k not in _CONCAVE:
        return int(np.argmin(dist))
    closed = np.concatenate([dense, dense[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])

    def at(a: np.ndarray) -> np.ndarray:
        a = np.mod(a, arc[-1])
        return np.stack([np.interp(a, arc, closed[:, 0]), np.interp(a, arc, closed[:, 1])], 1)

    e_in = dense - at(arc[:-1] - 0.015)
    e_out = at(arc[:-1] + 0.015) - dense
    turn = (e_in[:, 0] * e_out[:, 1] - e_in[:, 1] * e_out[:, 0]) / (
        np.linalg.norm(e_in, axis=1) * np.linalg.norm(e_out, axis=1))
    return int(np.argmin(np.where(dist < 0.025, turn, np.inf)))


def _piece_counts() -> list[int]:
    """Segments on each of the 19 outline pieces, crotch -> L leg ... R leg -> crotch."""
    left = [_L_LEG, _N_LEG, _L_LEG, _N_SIDE, _L_ARM, _N_ARM, _L_ARM, _N_SHOULDER, _L_HEAD]
    return left + [_N_NECK] + left[::-1]


def _outline_samples() -> tuple[np.ndarray, np.ndarray]:
    """Boundary vertices (n x 2, CCW from the crotch) and the index of each of the 19 corners."""
    dense = _trace_outline()
    seg = np.linalg.norm(np.diff(dense, axis=0, append=dense[:1]), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    closed = np.concatenate([dense, dense[:1]])
    corner_idx = [0] + [_corner_index(dense, c, k) for k, c in enumerate(_corner_points())]
    if np.any(np.diff(corner_idx) <= 0):
        raise RuntimeError("mannequin outline corners are out of order")
    bounds = corner_idx + [len(dense)]
    pieces, starts = [], []
    for k, count in enumerate(_piece_counts()):
        a = np.linspace(arc[bounds[k]], arc[bounds[k + 1]], count + 1)[:-1]
        starts.append(sum(len(p) for p in pieces))
        pieces.append(np.stack([np.interp(a, arc, closed[:, 0]), np.interp(a, arc, closed[:, 1])], 1))
    pts = np.concatenate(pieces)
    moved = np.ones(len(pts), bool)
    moved[starts] = False
    pts[moved] = _project_to_outline(pts[moved])
    return pts, np.array(starts + [len(pts)])


def _cluster(s: np.ndarray) -> np.ndarray:
    """Parameter spacing denser near both ends (rounder cross-sections near the outline)."""
    return 0.5 * s + 0.25 * (1.0 - np.cos(np.pi * s))


def _arc_param(pts: np.ndarray) -> np.ndarray:
    c = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    return c / c[-1]


def _coons(bottom, top, left, right) -> np.ndarray:
    """Transfinite interpolation. bottom/top: (nu+1) x 2, left/right: (nv+1) x 2 -> nv+1 x nu+1 x 2."""
    s = (0.5 * (_arc_param(bottom) + _arc_param(top)))[None, :, None]
    t = (0.5 * (_arc_param(left) + _arc_param(right)))[:, None, None]
    corners = ((1 - s) * (1 - t) * bottom[0] + s * (1 - t) * bottom[-1]
               + (1 - s) * t * top[0] + s * t * top[-1])
    return ((1 - s) * left[:, None] + s * right[:, None] + (1 - t) * bottom[None]
            + t * top[None] - corners)


@dataclass(frozen=True)
class _FrontDisk:
    """The planar front disk: xy: (n + k) x 2 (boundary first), tri: 2Q x 3 CCW triangles."""

    xy: np.ndarray
    tri: np.ndarray
    n_boundary: int
    block_of_tri: np.ndarray  # 2Q, 0 torso, 1/2 legs L/R, 3/4 arms L/R, 5 head


class _Registry:
    """Collects disk vertices; ids of the boundary come first."""

    def __init__(self, boundary: np.ndarray):
        self.xy = [boundary]
        self.count = len(boundary)

    def add(self, pts: np.ndarray) -> np.ndarray:
        ids = np.arange(self.count, self.count + len(pts))
        self.xy.append(pts)
        self.count += len(pts)
        return ids


def _shared_line(reg: _Registry, xy: np.ndarray, a: int, b: int, count: int) -> np.ndarray:
    """Ids of a straight interior edge from boundary vertex a to b with `count` segments."""
    s = _cluster(np.linspace(0.0, 1.0, count + 1))[1:-1, None]
    return np.concatenate([[a], reg.add(xy[a] + s * (xy[b] - xy[a])), [b]])


def _block(reg: _Registry, xy_of, bottom, top, left, right) -> np.ndarray:
    """Fill a block given the ids of its 4 sides; returns the (nv+1) x (nu+1) id grid."""
    grid = _coons(xy_of(bottom), xy_of(top), xy_of(left), xy_of(right))
    ids = np.empty(grid.shape[:2], np.int64)
    ids[0], ids[-1], ids[:, 0], ids[:, -1] = bottom, top, left, right
    inner = grid[1:-1, 1:-1]
    ids[1:-1, 1:-1] = reg.add(inner.reshape(-1, 2)).reshape(inner.shape[:2])
    return ids


def _grid_triangles(ids: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Split each quad of an id grid along the diagonal that keeps both triangles fatter. -> 2Q x 3"""
    a, b = ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel()
    c, d = ids[1:, 1:].ravel(), ids[1:, :-1].ravel()
    if _signed_area(xy, np.stack([a, b, c], 1)).sum() < 0:
        b, d = d, b  # this block's parameterisation is mirrored: keep triangles CCW
    split1 = np.minimum(_signed_area(xy, np.stack([a, b, c], 1)), _signed_area(xy, np.stack([a, c, d], 1)))
    split2 = np.minimum(_signed_area(xy, np.stack([a, b, d], 1)), _signed_area(xy, np.stack([b, c, d], 1)))
    use1 = (split1 >= split2)[:, None]
    t1 = np.where(use1, np.stack([a, b, c], 1), np.stack([a, b, d], 1))
    t2 = np.where(use1, np.stack([a, c, d], 1), np.stack([b, c, d], 1))
    return np.concatenate([t1, t2])


def _signed_area(xy: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Signed area of 2D triangles. xy: N x 2, tri: T x 3 -> T (positive = CCW)."""
    p0, p1, p2 = xy[tri[:, 0]], xy[tri[:, 1]], xy[tri[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    return 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


def _front_disk() -> _FrontDisk:
    boundary, starts = _outline_samples()
    n = len(boundary)
    reg = _Registry(boundary)

    def piece(k: int) -> np.ndarray:
        return np.arange(starts[k], starts[k + 1] + 1) % n

    def xy_of(ids: np.ndarray) -> np.ndarray:
        return np.concatenate(reg.xy)[ids]

    c = starts[:19]  # corner vertex ids, CCW from the crotch
    leg_l = _shared_line(reg, boundary, c[0], c[3], _N_LEG)
    leg_r = _shared_line(reg, boundary, c[16], c[0], _N_LEG)
    arm_l = _shared_line(reg, boundary, c[4], c[7], _N_ARM)
    arm_r = _shared_line(reg, boundary, c[15], c[12], _N_ARM)
    neck = _shared_line(reg, boundary, c[11], c[8], _N_NECK)
    blocks = [
        (np.concatenate([leg_r, leg_l[1:]]),
         np.concatenate([piece(11)[::-1], neck[1:], piece(7)[::-1][1:]]),
         np.concatenate([piece(15)[::-1], arm_r[1:]]), np.concatenate([piece(3), arm_l[1:]])),
        (leg_l, piece(1), piece(0), piece(2)[::-1]),
        (leg_r, piece(17), piece(16), piece(18)[::-1]),
        (arm_l, piece(5), piece(4), piece(6)[::-1]),
        (arm_r, piece(13)[::-1], piece(14)[::-1], piece(12)),
        (neck, piece(9)[::-1], piece(10)[::-1], piece(8)),
    ]
    grids = [_block(reg, xy_of, *sides) for sides in blocks]
    xy = np.concatenate(reg.xy)
    tris = [_grid_triangles(g, xy) for g in grids]
    owner = np.concatenate([np.full(len(t), k) for k, t in enumerate(tris)])
    return _FrontDisk(xy=xy, tri=np.concatenate(tris), n_boundary=n, block_of_tri=owner)
