"""Timing of the render stage (rasterize + maps + flow) on a closed 13776-face synthetic body.

`bench_render` is for humans and the lead's performance notes; nothing in the product imports it.
The synthetic mesh helpers here are also used by the tests.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from impersonator_cli.render.flow import condition_masks, transformation_flow, warp
from impersonator_cli.render.maps import MeshMaps
from impersonator_cli.render.rasterize import face_vertices, rasterize


def uv_sphere(n_lat: int = 83, n_lon: int = 84) -> tuple[Tensor, Tensor]:
    """Closed unit UV sphere with outward-facing corner order (for y-down X, Y and depth z).

    Returns vertices V x 3 (V = 2 + n_lon (n_lat - 1)) float64 and faces F x 3 int64
    (F = 2 n_lon (n_lat - 1)); the defaults give SMPL's counts, V = 6890, F = 13776.
    """
    theta = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)[1:-1]
    phi = torch.arange(n_lon, dtype=torch.float64) * (2 * math.pi / n_lon)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    ring = torch.stack([t.sin() * p.cos(), -t.cos(), t.sin() * p.sin()], -1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64), ring,
                       torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)])
    faces = []
    idx = lambda i, j: 1 + i * n_lon + (j % n_lon)  # noqa: E731
    last = verts.shape[0] - 1
    for j in range(n_lon):
        faces.append((0, idx(0, j), idx(0, j + 1)))
        faces.append((last, idx(n_lat - 2, j + 1), idx(n_lat - 2, j)))
        for i in range(n_lat - 2):
            a, b, c, d = idx(i, j), idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)
            faces += [(a, c, b), (b, c, d)]
    faces = torch.tensor(faces, dtype=torch.int64)
    return verts, _orient_outward(verts, faces)


def _orient_outward(verts: Tensor, faces: Tensor) -> Tensor:
    """Flip faces whose right-handed normal points towards the centroid (star-shaped meshes)."""
    tri = verts[faces]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    inward = (normal * (tri.mean(1) - verts.mean(0))).sum(-1) < 0
    out = faces.clone()
    out[inward] = faces[inward][:, [0, 2, 1]]
    return out


def synthetic_body(scale=(0.32, 0.85, 0.2)) -> tuple[Tensor, Tensor]:
    """A body-sized closed mesh (13776 faces): an ellipsoid with a bumpy surface, in image units."""
    verts, faces = uv_sphere()
    bump = 1.0 + 0.08 * torch.sin(5 * verts[:, 0]) * torch.cos(7 * verts[:, 1])
    return verts * bump[:, None] * torch.tensor(scale, dtype=torch.float64), faces


def _timed(fn, repeats: int, sync) -> tuple[float, float, float]:
    """(median wall, min wall, median process-CPU) milliseconds of fn, after one warm-up run.

    Process CPU time does not count time spent waiting for a core, so on a busy machine it is the
    better estimate of the unloaded wall time (single thread); on CUDA it is only host time.
    """
    fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.process_time() - start_cpu) * 1000.0)
    wall.sort()
    cpu.sort()
    return wall[len(wall) // 2], wall[0], cpu[len(cpu) // 2]


def bench_render(size: int = 256, device: str = "cpu", batch: int = 1, repeats: int = 20) -> dict:
    """Milliseconds per frame of the per-frame render work: median and minimum wall-clock time and
    median process CPU time over `repeats` runs (keys `<stage>_ms`, `_min_ms`, `_cpu_ms`).

    rasterize: face-index + weight maps of a 13776-face closed body-sized mesh (`synthetic_body`);
    maps: cond + front map; flow: transformation flow T + warping a 3-channel image with it;
    masks: bg/body/ft masks (bg_ks 13, ft_ks 3; once per source in imitation, not per frame).
    Source and target differ by a 10 degree turn.
    """
    dev = torch.device(device)
    verts, faces = synthetic_body()
    faces = faces.to(dev)
    tgt = face_vertices(_rotate_y(verts, 10.0).float().to(dev).expand(batch, -1, -1), faces)
    src_p2 = face_vertices(verts.float().to(dev).expand(batch, -1, -1), faces)[..., :2]
    maps = _bench_maps(faces.shape[0]).to(dev)
    image = torch.rand(batch, 3, size, size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    raster = rasterize(tgt, size)
    cond = maps.render_cond(raster.face_index)
    stages = {
        "rasterize": lambda: rasterize(tgt, size),
        "maps": lambda: (maps.render_cond(raster.face_index), maps.render_front(raster.face_index)),
        "flow": lambda: warp(image, transformation_flow(src_p2, raster)),
        "masks": lambda: condition_masks(cond),
    }
    out = {"size": size, "device": str(dev), "batch": batch, "faces": int(faces.shape[0]),
           "threads": torch.get_num_threads()}
    for name, fn in stages.items():
        med, best, cpu = _timed(fn, repeats, sync)
        out[f"{name}_ms"], out[f"{name}_min_ms"] = med / batch, best / batch
        out[f"{name}_cpu_ms"] = cpu / batch
    for suffix in ("ms", "min_ms", "cpu_ms"):
        out[f"total_{suffix}"] = sum(out[f"{k}_{suffix}"] for k in ("rasterize", "maps", "flow"))
    return out


def _rotate_y(verts: Tensor, degrees: float) -> Tensor:
    a = math.radians(degrees)
    R = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]],
                     dtype=verts.dtype)
    return verts @ R


def _bench_maps(num_faces: int) -> MeshMaps:
    """Maps with arbitrary UVs and a 10-part split (timing only)."""
    g = torch.Generator().manual_seed(0)
    face_part = torch.arange(num_faces) * 10 // num_faces
    return MeshMaps.from_tables(
        face_uv=torch.rand(num_faces, 2, generator=g, dtype=torch.float64),
        face_part=face_part, part_names=[f"{i:02d}_part" for i in range(10)],
        front_faces=torch.arange(0, 100), head_faces=torch.arange(0, 300))
