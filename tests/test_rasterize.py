"""The fast rasterizer against the slow literal reference; the spec's pixel rules one by one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from support.fp import gamma
from impersonator_cli.render import rasterize as R
from support.render_bench import synthetic_body, uv_sphere
from impersonator_cli.render.rasterize import EYE_DISTANCE, face_vertices, rasterize
from support.render_reference import rasterize_reference


def _weight_bound(f2verts: torch.Tensor, fim: np.ndarray, size: int) -> np.ndarray:
    """Per pixel (B x N x N x 1), how far float32 barycentrics may be from the float64 reference's.

    A barycentric is a ratio of signed areas in pixel units: w_i = A_i / A, A = twice the face's area.
    Float32 puts each vertex coordinate off by ~u n pixels (the NDC -> pixel mapping) and each area,
    a difference of two products of coordinate differences (<= L, the face's perimeter), off by
    ~u L^2; so |dA_i|, |dA| <= c u (L^2 + n L) and |dw_i| <= |dA_i| / |A| + w_i |dA| / |A|
    <= 2 c u (L^2 + n L) / |A|. c = 16 allows for the renormalisation and the depth test's
    perspective terms."""
    v = f2verts.detach().double().numpy()
    b = np.arange(v.shape[0])[:, None, None]
    corners = v[b, np.maximum(fim, 0)]                          # B x N x N x 3 x 3
    px, py = 0.5 * (corners[..., 0] * size + size - 1), 0.5 * (corners[..., 1] * size + size - 1)
    area = np.abs((px[..., 1] - px[..., 0]) * (py[..., 2] - py[..., 0])
                  - (px[..., 2] - px[..., 0]) * (py[..., 1] - py[..., 0]))
    perimeter = sum(np.hypot(px[..., i] - px[..., j], py[..., i] - py[..., j]) for i, j in ((0, 1), (1, 2), (2, 0)))
    with np.errstate(divide="ignore"):
        bound = 2 * gamma(16) * (perimeter ** 2 + size * perimeter) / area
    return bound[..., None]


def _compare(f2verts: torch.Tensor, size: int) -> tuple[float, float, int]:
    """(fraction of agreeing pixels, max weight error where they agree relative to the float32
    bound of _weight_bound (<= 1 passes), #foreground pixels)."""
    fast = rasterize(f2verts, size)
    fim, wim = rasterize_reference(f2verts, size)
    agree = fast.face_index.numpy() == fim
    both = agree & (fim >= 0)
    ratio = np.abs(fast.weights.numpy() - wim) / _weight_bound(f2verts, fim, size)
    err = float(ratio[both].max()) if both.any() else 0.0
    assert (fast.weights[fast.face_index < 0] == 0).all()
    sums = fast.weights[fast.face_index >= 0].sum(-1)
    assert ((sums - 1).abs() <= gamma(3)).all()  # normalised: two additions and a division
    return float(agree.mean()), err, int((fim >= 0).sum())


def _random_mesh(batch: int, faces: int, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(batch, faces, 1, 3, generator=g) * 2.4 - 1.2
    f2v = centre + torch.randn(batch, faces, 3, 3, generator=g) * spread
    f2v[..., 2] = torch.rand(batch, faces, 3, generator=g) * 2 - 1
    return f2v


@pytest.mark.parametrize("spread,size,seed", [(0.25, 48, 0), (0.05, 64, 1), (0.8, 32, 2)])
def test_agrees_with_reference_on_random_meshes(spread, size, seed):
    agree, err, fg = _compare(_random_mesh(2, 80, spread, seed), size)
    assert fg > 50
    assert agree >= 0.999
    assert err <= 1.0


def test_agrees_with_reference_on_closed_13776_face_mesh():
    verts, faces = synthetic_body()
    a = math.radians(25)
    R_y = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]],
                       dtype=verts.dtype)
    f2v = face_vertices((verts @ R_y).float()[None], faces)
    assert f2v.shape == (1, 13776, 3, 3)
    agree, err, fg = _compare(f2v, 64)
    assert fg > 500
    assert agree >= 0.999
    assert err <= 1.0


def _triangle(points, z=0.0) -> torch.Tensor:
    """One face (1 x 1 x 3 x 3) from three (X, Y) points at depth z."""
    return torch.tensor([[[[x, y, z] for x, y in points]]], dtype=torch.float32)


def _centre(i: int, n: int) -> float:
    return (2 * i + 1) / n - 1


def test_winding_decides_culling():
    # Spec rule (y-down): keep iff (Y2-Y0)(X1-X0) <= (Y1-Y0)(X2-X0).
    tri = [(-0.8, -0.8), (0.8, -0.8), (-0.8, 0.8)]  # (1.6)(1.6) > 0 * 0: culled
    (x0, y0), (x1, y1), (x2, y2) = tri
    assert not (y2 - y0) * (x1 - x0) <= (y1 - y0) * (x2 - x0)
    assert (rasterize(_triangle(tri), 16).face_index == -1).all()
    kept = rasterize(_triangle(tri[::-1]), 16).face_index
    assert (kept == 0).sum() > 50
    assert kept[0, 2, 2] == 0 and kept[0, 13, 13] == -1  # covers the top-left half


def test_flipping_one_face_culls_only_that_face():
    verts, faces = uv_sphere(12, 16)
    f2v = face_vertices((verts * 0.8).float()[None], faces)
    base = rasterize(f2v, 48).face_index
    visible = torch.unique(base[base >= 0])
    victim = int(visible[len(visible) // 2])
    flipped = f2v.clone()
    flipped[0, victim] = f2v[0, victim, [0, 2, 1]]
    out = rasterize(flipped, 48).face_index
    assert (out == victim).sum() == 0 and (base == victim).sum() > 0
    assert torch.equal(out[base != victim], base[base != victim])


def test_pixel_centre_convention_single_pixel():
    n, r, c = 16, 5, 9
    x, y, eps = _centre(c, n), _centre(r, n), 0.3 / n  # a triangle 0.3 px around one pixel centre
    tri = [(x - eps, y - eps), (x + eps, y - eps), (x, y + eps)]
    tri = tri if _cross(tri) <= 0 else tri[::-1]
    out = rasterize(_triangle(tri), n)
    assert out.face_index.sum() == -(n * n) + 1  # exactly one pixel is the face 0
    assert out.face_index[0, r, c] == 0
    assert torch.allclose(out.weights[0, r, c].sum(), torch.tensor(1.0))
    ref_fim, ref_w = rasterize_reference(_triangle(tri), n)
    assert np.array_equal(ref_fim, out.face_index.numpy())
    assert np.allclose(ref_w[0, r, c], out.weights[0, r, c].numpy(), atol=1e-6)


def test_points_on_edges_and_vertices_are_inside():
    n = 8
    # right triangle whose corners sit exactly on pixel centres (2,2), (2,6), (6,2) [row, col]
    tri = [(_centre(2, n), _centre(2, n)), (_centre(6, n), _centre(2, n)),
           (_centre(2, n), _centre(6, n))]
    tri = tri if _cross(tri) <= 0 else tri[::-1]
    fim = rasterize(_triangle(tri), n).face_index[0]
    rows, cols = torch.nonzero(fim == 0, as_tuple=True)
    expected = {(r, c) for r in range(2, 7) for c in range(2, 7) if (r - 2) + (c - 2) <= 4}
    assert set(zip(rows.tolist(), cols.tolist())) == expected


def _cross(tri) -> float:
    (x0, y0), (x1, y1), (x2, y2) = tri
    return (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)


def _big_face(z: float):
    tri = [(-3.0, -3.0), (3.0, -3.0), (-3.0, 3.0)]
    tri = tri if _cross(tri) <= 0 else tri[::-1]
    return _triangle(tri, z)[0, 0]


def test_depth_order_nearest_wins_and_ties_go_to_lower_index():
    near, far = _big_face(-0.5), _big_face(0.5)
    fim = rasterize(torch.stack([far, near])[None], 16).face_index
    assert (fim[0, :4, :4] == 1).all()  # the nearer face (smaller z) wins although it comes later
    fim = rasterize(torch.stack([near, far])[None], 16).face_index
    assert (fim[0, :4, :4] == 0).all()
    tie = rasterize(torch.stack([near, far, near.clone()])[None], 16).face_index
    assert (tie[0, :4, :4] == 0).all()  # exact tie with face 2: the lower index keeps the pixel
    tie = rasterize(torch.stack([far, near, near.clone()])[None], 16).face_index
    assert (tie[0, :4, :4] == 1).all()


def test_near_and_far_planes():
    # z_p = z + EYE_DISTANCE must lie strictly inside (0.1, 100)
    too_near = _big_face(0.05 - EYE_DISTANCE)
    too_far = _big_face(150.0)
    fine = _big_face(10.0)
    assert (rasterize(too_near[None, None], 8).face_index == -1).all()
    assert (rasterize(too_far[None, None], 8).face_index == -1).all()
    assert (rasterize(fine[None, None], 8).face_index[0, :3, :3] == 0).all()


def test_huge_faces_are_chunked(monkeypatch):
    f2v = torch.cat([_random_mesh(1, 30, 1.5, 7), _big_face(0.9)[None, None]], 1)
    whole = rasterize(f2v, 64)
    monkeypatch.setattr(R, "CHUNK_CANDIDATES", 1)  # forces one face per chunk (budget N*N)
    chunked = rasterize(f2v, 64)
    assert torch.equal(whole.face_index, chunked.face_index)
    assert torch.equal(whole.weights, chunked.weights)
    fim, _ = rasterize_reference(f2v, 64)
    assert (fim == whole.face_index.numpy()).mean() >= 0.999


def test_batch_elements_are_independent():
    f2v = _random_mesh(3, 40, 0.3, 11)
    together = rasterize(f2v, 32)
    for b in range(3):
        alone = rasterize(f2v[b:b + 1], 32)
        assert torch.equal(alone.face_index[0], together.face_index[b])
        assert torch.equal(alone.weights[0], together.weights[b])


def test_nan_faces_are_ignored():
    f2v = _random_mesh(1, 20, 0.3, 3)
    bad = f2v.clone()
    bad[0, 5, 1, 0] = float("nan")
    out, ref = rasterize(bad, 32).face_index, rasterize(f2v, 32).face_index
    assert (out == 5).sum() == 0
    assert torch.equal(out[ref != 5], ref[ref != 5])


@pytest.mark.gpu
def test_cuda_matches_cpu():
    verts, faces = synthetic_body()
    f2v = face_vertices(verts.float()[None], faces).expand(2, -1, -1, -1)
    cpu = rasterize(f2v, 256)
    gpu = rasterize(f2v.cuda(), 256)
    assert (gpu.face_index.cpu() == cpu.face_index).float().mean() >= 0.9999
    same = gpu.face_index.cpu() == cpu.face_index
    assert torch.allclose(gpu.weights.cpu()[same], cpu.weights[same], atol=1e-5)


def test_bench_render_reports_every_stage():
    from support.render_bench import bench_render

    out = bench_render(size=32, repeats=1)
    assert out["faces"] == 13776
    for suffix in ("ms", "min_ms", "cpu_ms"):
        parts = [out[f"{k}_{suffix}"] for k in ("rasterize", "maps", "flow")]
        assert all(p > 0 for p in parts)
        assert abs(out[f"total_{suffix}"] - sum(parts)) < 1e-9
