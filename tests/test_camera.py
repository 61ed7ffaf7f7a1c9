"""Camera math of the body stage against hand-computed values and geometric invariants."""

from __future__ import annotations

import math

import pytest
import torch

from impersonator_cli.body import camera, rotation
from impersonator_cli.errors import UsageError

D = torch.float64


def test_weak_perspective_projection_of_known_points():
    pts = torch.tensor([[[1.0, 2.0, 3.0], [-0.5, 0.25, -7.0]]], dtype=D)
    cam = torch.tensor([[2.0, 0.5, -1.0]], dtype=D)
    expected = torch.tensor([[[3.0, 2.0, 3.0], [0.0, -1.5, -7.0]]], dtype=D)
    assert torch.equal(camera.project(pts, cam), expected)
    assert torch.equal(camera.project_2d(pts, cam), expected[..., :2])


def test_pixel_centres():
    assert torch.equal(camera.pixel_centres(4, D), torch.tensor([-0.75, -0.25, 0.25, 0.75], dtype=D))
    c = camera.pixel_centres(256, D)
    assert c[0] == -1 + 1 / 256 and c[-1] == 1 - 1 / 256


def test_pixel_camera_puts_pixel_centres_at_half_integers():
    n = 256
    cam = torch.tensor([[0.8, 0.1, -0.3]], dtype=D)
    cols = torch.tensor([0, 17, 255], dtype=D)
    # body points whose projection lands exactly on the centres of these pixel columns/rows
    x = camera.pixel_centres(n, D)[cols.long()] / cam[0, 0] - cam[0, 1]
    y = camera.pixel_centres(n, D)[cols.long()] / cam[0, 0] - cam[0, 2]
    pts = torch.stack([x, y, torch.zeros_like(x)], dim=-1)[None]
    px = camera.cam_to_pixels(cam, n)
    u = px[:, None, :1] * (pts[..., :2] + px[:, None, 1:])
    assert torch.allclose(u, torch.stack([cols, cols], dim=-1)[None] + 0.5, atol=1e-10)
    assert torch.allclose(camera.cam_from_pixels(px, n), cam, atol=1e-14)


def test_crop_frame_round_trip_exact():
    cam = torch.tensor([0.5, 0.25, -0.125], dtype=D)  # dyadic values: every step is exact
    box = (64.0, 32.0, 128.0)
    frame = camera.cam_crop_to_frame(cam, box)
    assert torch.equal(camera.cam_frame_to_crop(frame, box), cam)
    assert torch.equal(frame, torch.tensor([32.0, 2.25 + 2.0, 1.875 + 1.0], dtype=D))
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(50, 3, generator=g, dtype=D) * torch.tensor([2, 1, 1], dtype=D) + torch.tensor(
        [0.2, -0.5, -0.5], dtype=D)
    boxes = torch.rand(50, 3, generator=g, dtype=D) * 500 + 10
    back = camera.cam_frame_to_crop(camera.cam_crop_to_frame(cams, boxes), boxes)
    assert torch.allclose(back, cams, rtol=0, atol=1e-12)


def test_crop_to_frame_geometry():
    """A point's frame pixel = x0 + size * (X + 1) / 2 where X is its normalized crop coordinate."""
    cam = torch.tensor([[0.7, 0.1, 0.2]], dtype=D)
    box = torch.tensor([[100.0, 40.0, 300.0]], dtype=D)
    pts = torch.tensor([[[0.3, -0.4, 1.0], [-0.9, 0.8, 0.0]]], dtype=D)
    crop_xy = camera.project_2d(pts, cam)
    expected = box[:, None, :2] + box[:, None, 2:] * (crop_xy + 1) / 2
    assert torch.allclose(camera.project_2d(pts, camera.cam_crop_to_frame(cam, box)), expected,
                          atol=1e-10)
    # a crop at the origin of its own size is the crop-pixel camera
    assert torch.allclose(camera.cam_crop_to_frame(cam, (0.0, 0.0, 256.0)),
                          camera.cam_to_pixels(cam, 256), atol=1e-12)


def test_drive_camera_strategies():
    src = torch.tensor([0.9, 0.1, -0.2])
    tgt = torch.tensor([[1.2, 0.3, 0.4], [1.5, 0.5, 0.1], [0.7, -0.1, 0.4]])
    assert torch.equal(camera.drive_cameras(src, tgt, "copy"), tgt)
    assert torch.equal(camera.drive_cameras(src, tgt, "source"), src.expand(3, 3))
    smooth = camera.drive_cameras(src, tgt, "smooth")
    assert torch.equal(smooth[:, 0], torch.full((3,), 0.9))  # source scale
    assert torch.allclose(smooth[0], src)  # first frame: no offset
    expected_t = src[1:] + tgt[:, 1:] - tgt[0, 1:]
    assert torch.allclose(smooth[:, 1:], expected_t, atol=1e-7)
    with pytest.raises(UsageError, match="smooth"):
        camera.drive_cameras(src, tgt, "orbit")


def test_euler_rotations_by_hand():
    h = math.pi / 2
    rx = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    ry = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]
    rz = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    for angles, expected in (((h, 0, 0), rx), ((0, h, 0), ry), ((0, 0, h), rz),
                             ((h, h, 0), [[0, 1, 0], [0, 0, -1], [-1, 0, 0]]),
                             ((h, h, h), [[0, 0, 1], [0, 1, 0], [-1, 0, 0]])):
        got = rotation.euler_to_matrix(*angles, dtype=D)
        assert torch.allclose(got, torch.tensor(expected, dtype=D), atol=1e-15), angles


def test_rotation_applied_to_row_vectors():
    rz = rotation.euler_to_matrix(0, 0, math.pi / 2, dtype=D)
    v = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]], dtype=D)
    t = torch.tensor([0.5, 0.0, -1.0], dtype=D)
    out = camera.rotate_vertices(v, rz, t)  # V R + t: (1,0,0) R = first row of R
    assert torch.allclose(out, torch.tensor([[[0.5, -1.0, -1.0], [2.5, 0.0, -1.0]]], dtype=D),
                          atol=1e-15)


def test_rotation_preserves_edge_lengths():
    g = torch.Generator().manual_seed(3)
    verts = torch.randn(2, 50, 3, generator=g, dtype=D)
    edges = torch.randint(0, 50, (80, 2), generator=g)
    rot = rotation.euler_to_matrix(0.3, -1.1, 2.0, dtype=D)
    assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=D), atol=1e-14)
    assert torch.isclose(torch.linalg.det(rot), torch.tensor(1.0, dtype=D))
    moved = camera.rotate_vertices(verts, rot, torch.tensor([1.0, -2.0, 0.5], dtype=D))

    def lengths(v):
        return (v[:, edges[:, 0]] - v[:, edges[:, 1]]).norm(dim=-1)

    assert torch.allclose(lengths(moved), lengths(verts), atol=1e-12)


def test_orbit_angles():
    a = camera.orbit_angles(180)
    assert a.shape == (180, 3)
    assert torch.allclose(a[1], torch.tensor([0.0, math.radians(2), 0.0], dtype=D))
    g = camera.orbit_angles(16, alpha=math.radians(10), gamma=math.radians(10))
    assert torch.allclose(g[:, 1], torch.arange(16, dtype=D) * math.radians(22.5))
    assert torch.allclose(g[:, 0], torch.full((16,), math.radians(10), dtype=D))
