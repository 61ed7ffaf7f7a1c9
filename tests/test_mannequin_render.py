"""Stage 2 on the SMPL-format mannequin, through the same loaders as the official assets."""

from __future__ import annotations

import math

import pytest
import torch

from impersonator_cli.render.flow import identity_grid, transformation_flow, warp
from impersonator_cli.render.body_view import view_body
from impersonator_cli.render.texture import render_texture

N = 192


@pytest.fixture(scope="module")
def scene(mannequin_kit):
    return mannequin_kit


def pose_vector(turn_deg=0.0, l_shoulder_deg=0.0, r_elbow_deg=0.0, l_knee_deg=0.0):
    pose = torch.zeros(1, 72, dtype=torch.float64)
    # Global rotation: pi about x (upright in the y-down image) then a turn about the body's vertical axis.
    upright = torch.tensor([[1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=torch.float64)
    t = math.radians(turn_deg)
    turn = torch.tensor([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]], dtype=torch.float64)
    pose[0, :3] = _rotvec(upright @ turn)
    pose[0, 16 * 3 + 2] = math.radians(l_shoulder_deg)  # joint 16 = left shoulder, about z
    pose[0, 19 * 3 + 1] = math.radians(r_elbow_deg)  # joint 19 = right elbow, about y
    pose[0, 4 * 3 + 0] = math.radians(l_knee_deg)  # joint 4 = left knee, about x
    return pose.float()


def _rotvec(R):
    angle = torch.arccos(((torch.trace(R) - 1) / 2).clamp(-1, 1))
    if angle < 1e-8:
        return torch.zeros(3, dtype=R.dtype)
    if abs(angle - math.pi) < 1e-6:
        axis = torch.sqrt(((torch.diagonal(R) + 1) / 2).clamp(min=0))
        return axis * angle
    axis = torch.stack([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * torch.sin(angle))
    return axis * angle


CAM = torch.tensor([[0.9, 0.0, 0.25]])
SHAPE = torch.zeros(1, 10)


def test_same_pose_gives_the_pixel_centre_grid(scene):
    smpl, _, _, _ = scene
    view = view_body(smpl, CAM, pose_vector(), SHAPE, N)
    T = transformation_flow(view.p2verts, view.raster)
    body = view.raster.foreground
    assert body.float().mean() > 0.05  # the mannequin fills a good part of the frame
    expected = identity_grid(N) * (N - 1) / N  # renderer pixel centres read with align_corners=True
    assert torch.allclose(T[body], expected.expand_as(T)[body], atol=1e-5)
    assert (T[~body] == -2).all()


def test_warping_the_source_render_reproduces_the_target_render(scene):
    smpl, _, corner_uv, texture = scene
    src = view_body(smpl, CAM, pose_vector(), SHAPE, N)
    tgt = view_body(smpl, CAM, pose_vector(turn_deg=12, l_shoulder_deg=-25, r_elbow_deg=30, l_knee_deg=20), SHAPE, N)
    src_img = render_texture(src.raster, corner_uv, texture)
    tgt_img = render_texture(tgt.raster, corner_uv, texture)
    T = transformation_flow(src.p2verts, tgt.raster)
    # Sample the source render at the renderer's pixel-centre positions (undo the align_corners=True read).
    warped = warp(src_img, T * N / (N - 1))
    both = tgt.raster.foreground & _visible_in_source(src, tgt, T)
    both = both & ~_edges(tgt.raster.foreground)
    assert both.sum() > 0.5 * tgt.raster.foreground.sum()
    err = (warped - tgt_img).abs().mean(dim=1)[both]
    naive = (src_img - tgt_img).abs().mean(dim=1)[both]
    assert err.mean() < 0.02, err.mean()  # measured 0.0085 at N=192
    assert naive.mean() > 4 * err.mean()  # the flow does real work: without it the error is far larger


def _depth(view, raster, corner_z):
    fim = raster.face_index.clamp(min=0)
    return (raster.weights * corner_z[0][fim]).sum(-1)


def _visible_in_source(src, tgt, T, tol=0.02):
    """Shadow-map test: the target pixel's surface point is the closest surface in the source."""
    z_point = _depth(tgt, tgt.raster, src.f2verts[..., 2])  # source depth of each target pixel's point
    z_buffer = _depth(src, src.raster, src.f2verts[..., 2])
    z_buffer = torch.where(src.raster.foreground, z_buffer, torch.full_like(z_buffer, 1e9))
    n = T.shape[1]
    col = ((T[..., 0] + 1) * n / 2 - 0.5).round().long().clamp(0, n - 1)
    row = ((T[..., 1] + 1) * n / 2 - 0.5).round().long().clamp(0, n - 1)
    seen = z_buffer[0][row, col]
    return (z_point - seen).abs() < tol


def _edges(*masks):
    out = torch.zeros_like(masks[0])
    for m in masks:
        f = m.float().unsqueeze(1)
        inner = -torch.nn.functional.max_pool2d(-f, 3, 1, 1)
        out |= (f - inner).squeeze(1) > 0
    return out


def test_part_map_partitions_the_body_pixels(scene):
    smpl, maps, _, _ = scene
    view = view_body(smpl, CAM, pose_vector(turn_deg=30, l_shoulder_deg=40), SHAPE, N)
    parts = maps.render_parts(view.raster.face_index)
    assert parts.shape[1] == 11
    assert torch.equal(parts.sum(dim=1), torch.ones_like(parts.sum(dim=1)))
    assert torch.equal(parts[:, 10].bool(), ~view.raster.foreground)
    head = parts[:, 0].bool()
    ys = torch.nonzero(head[0])[:, 0].float()
    legs = torch.nonzero(parts[0, 2].bool() | parts[0, 3].bool())[:, 0].float()
    assert ys.mean() < legs.mean()  # the head is drawn above the legs: upright in the y-down frame


def test_back_of_head_shows_after_a_half_turn(scene):
    smpl, maps, _, _ = scene
    front = view_body(smpl, CAM, pose_vector(), SHAPE, N)
    back = view_body(smpl, CAM, pose_vector(turn_deg=180), SHAPE, N)
    face_front = maps.render_front(front.raster.face_index).sum()
    face_back = maps.render_front(back.raster.face_index).sum()
    assert face_front > 20 and face_back == 0
    assert maps.render_back(back.raster.face_index).sum() > maps.render_back(front.raster.face_index).sum()
