"""Transformation flows, warping, masks, swap and multi-source flows, checked against geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from impersonator_cli.errors import UsageError
from impersonator_cli.render.flow import (
    condition_masks, dilate, erode, identity_grid, multi_source_flows, p2verts_from_f2verts,
    resize_flow, swap_flows, transformation_flow, warp,
)
from support.render_bench import uv_sphere
from impersonator_cli.render.maps import MeshMaps
from impersonator_cli.render.rasterize import face_vertices, rasterize

N = 64
SPHERE = uv_sphere(24, 32)


def _rot_y(degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    return torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]],
                        dtype=torch.float64)


def _pose(degrees: float, shift=(0.0, 0.0, 0.0), radius: float = 0.6):
    """Sphere rotated about the vertical axis and translated: (f2verts 1 x F x 3 x 3, raster)."""
    verts, faces = SPHERE
    posed = (verts * radius) @ _rot_y(degrees) + torch.tensor(shift, dtype=torch.float64)
    f2v = face_vertices(posed.float()[None], faces)
    return f2v, rasterize(f2v, N)


def _texture(verts: torch.Tensor) -> torch.Tensor:
    """Smooth per-vertex RGB in [0, 1] from the canonical (unposed) position: V x 3."""
    x, y, z = verts.float().unbind(-1)
    return torch.stack([0.5 + 0.4 * torch.sin(2.5 * x + 1.0 * y), 0.5 + 0.4 * torch.cos(2.0 * z),
                        0.5 + 0.4 * torch.sin(1.5 * y - 2.0 * z)], -1)


def _render_colours(raster, faces, colours) -> torch.Tensor:
    """Textured render: per pixel sum_k w_k colour(corner k) of the visible face, 0 on bg (1x3xNxN).
    """
    corner = colours[faces][raster.face_index[0].clamp(min=0)]        # N x N x 3 corners x 3 rgb
    img = (raster.weights[0].unsqueeze(-1) * corner).sum(-2)
    img = img * raster.foreground[0].unsqueeze(-1)
    return img.permute(2, 0, 1)[None]


def test_identical_poses_map_every_body_pixel_to_its_own_centre():
    f2v, raster = _pose(20.0, (0.1, -0.05, 0.0))
    T = transformation_flow(p2verts_from_f2verts(f2v), raster)
    body = raster.foreground[0]
    centre = (2 * torch.arange(N) + 1) / N - 1
    grid = torch.stack(torch.meshgrid(centre, centre, indexing="xy"), -1)  # pixel-centre (x, y)
    assert body.sum() > 1000
    assert torch.allclose(T[0][body], grid[body], atol=1e-5)
    assert (T[0][~body] == -2).all()
    # the renderer's pixel centres vs grid_sample(align_corners=True): a (N-1)/N scale (official)
    assert torch.allclose(T[0][body], identity_grid(N)[0][body] * (N - 1) / N, atol=1e-5)


def test_warp_reproduces_the_target_view_of_a_rotated_textured_sphere():
    verts, faces = SPHERE
    colours = _texture(verts)
    f2v_src, src = _pose(0.0)
    f2v_tgt, tgt = _pose(8.0, (0.06, -0.04, 0.0))
    img_src = _render_colours(src, faces, colours)
    img_tgt = _render_colours(tgt, faces, colours)
    T = transformation_flow(p2verts_from_f2verts(f2v_src), tgt)
    warped = warp(img_src, T)
    seen = torch.zeros(faces.shape[0] + 1, dtype=torch.bool)
    seen[src.face_index[src.foreground]] = True
    fg_src = src.foreground[:, None].float()
    ok = tgt.foreground[0] & seen[tgt.face_index[0]] & (warp(fg_src, T)[0, 0] > 0.999)
    assert ok.sum() > 0.8 * tgt.foreground.sum()
    err = (warped - img_tgt)[0].abs().mean(0)[ok]
    assert err.mean() < 0.01          # bilinear sampling + the half-pixel convention of §0
    assert err.max() < 0.06
    # sampling the same flow in the renderer's own pixel-centre convention is much tighter
    exact = torch.nn.functional.grid_sample(img_src, T, align_corners=False)
    err_exact = (exact - img_tgt)[0].abs().mean(0)[ok]
    assert err_exact.mean() < 0.004 and err_exact.mean() < err.mean()
    # a wrong flow (identity) is far worse on the same pixels
    err_id = (img_src - img_tgt)[0].abs().mean(0)[ok]
    assert err_id.mean() > 3 * err.mean()


def test_warp_with_identity_grid_is_identity_and_resize_keeps_identity():
    img = torch.rand(2, 3, 16, 16)
    assert torch.allclose(warp(img, identity_grid(16).expand(2, -1, -1, -1)), img, atol=1e-5)
    assert torch.allclose(resize_flow(identity_grid(64), 16), identity_grid(16), atol=1e-6)
    T = torch.full((1, 64, 64, 2), -2.0)
    assert torch.equal(resize_flow(T, (8, 8)), torch.full((1, 8, 8, 2), -2.0))
    assert (warp(img[:1], T[:, :16, :16]) == 0).all()  # -2: zero padding


def _morph_reference(mask: np.ndarray, ks: int, pad: float, op) -> np.ndarray:
    p = ks // 2
    padded = np.pad(mask, ((p, p), (p, p)), constant_values=pad)
    out = np.zeros_like(mask)
    for r in range(mask.shape[0]):
        for c in range(mask.shape[1]):
            out[r, c] = op(padded[r:r + ks, c:c + ks])
    return out


@pytest.mark.parametrize("ks", [3, 5])
def test_erode_and_dilate_match_a_literal_box_filter(ks):
    rng = np.random.default_rng(ks)
    mask = (rng.random((13, 11)) > 0.25).astype(np.float32)
    mask[0, 0] = 0.0
    got_e = erode(torch.from_numpy(mask)[None, None], ks)[0, 0].numpy()
    got_d = dilate(torch.from_numpy(mask)[None, None], ks)[0, 0].numpy()
    assert np.array_equal(got_e, _morph_reference(mask, ks, 1.0, lambda w: float(w.min() == 1)))
    assert np.array_equal(got_d, _morph_reference(mask, ks, 0.0, lambda w: float(w.max() == 1)))
    ones = torch.ones(1, 1, 9, 9)
    assert torch.equal(erode(ones, ks), ones)  # the border counts as background (pad with 1)


def test_condition_masks_dilate_the_silhouette():
    _, raster = _pose(0.0)
    maps = _sphere_maps()
    cond = maps.render_cond(raster.face_index)
    m = condition_masks(cond, bg_ks=7, ft_ks=3)
    body = raster.foreground[:, None].float()
    assert torch.equal(m.body_mask, dilate(body, 7))
    assert torch.equal(m.bg_mask, 1 - dilate(body, 7))
    assert torch.equal(m.ft_mask, dilate(body, 3))
    assert m.body_mask.sum() > m.ft_mask.sum() > body.sum()


def _sphere_maps() -> MeshMaps:
    """10 parts by latitude band (part 0 = top cap = 'head')."""
    verts, faces = SPHERE
    height = verts[faces].mean(1)[:, 1]                               # -1 (top, y-down) .. 1
    face_part = ((height + 1) / 2 * 10).long().clamp(0, 9)
    uv = torch.rand(faces.shape[0], 2, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    names = ["00_head", "01_torso", "02_left_leg", "03_right_leg", "04_left_arm", "05_right_arm",
             "06_left_foot", "07_right_foot", "08_left_hand", "09_right_hand"]
    head = torch.nonzero(face_part == 0).squeeze(1)
    return MeshMaps.from_tables(uv, face_part, names, head[:10], head)


def test_swap_all_is_a_plain_flow_and_body_keeps_the_head():
    maps = _sphere_maps()
    f2v_ref, _ = _pose(30.0, (0.1, 0.0, 0.0))
    _, src = _pose(0.0)
    par = maps.render_parts(src.face_index)
    ref_p2 = p2verts_from_f2verts(f2v_ref)
    sw = swap_flows(src, par, ref_p2, "all", maps.face_part, maps.part_names)
    assert torch.equal(sw.T21, transformation_flow(ref_p2, src).clamp(-2, 2))
    assert (sw.T11 == -2).all() and (sw.src_left_mask == 0).all()
    assert torch.equal(sw.src_part_mask[:, 0], src.foreground.float())
    sw = swap_flows(src, par, ref_p2, "body", maps.face_part, maps.part_names)
    head = par[:, 0] > 0
    assert head.sum() > 20
    assert torch.allclose(sw.T21[head], torch.tensor(-2.0), atol=1e-6)
    assert torch.equal(sw.T11[head], identity_grid(N).expand(1, -1, -1, -1)[head])
    assert torch.equal(sw.src_part_mask + sw.src_left_mask, src.foreground[:, None].float())
    assert (sw.T21[(par[:, 1:10].sum(1) > 0)] > -1.5).all()


def test_part_names_and_groups():
    maps = _sphere_maps()
    _, src = _pose(0.0)
    par = maps.render_parts(src.face_index)
    args = (src, par, torch.zeros(1, maps.num_faces, 3, 2))
    upper = swap_flows(*args, "upper", maps.face_part, maps.part_names)
    listed = swap_flows(*args, ["torso", "04_left_arm", "right_arm", "left_hand", "right_hand"],
                        maps.face_part, maps.part_names)
    assert torch.equal(upper.src_part_mask, listed.src_part_mask)
    lower = swap_flows(*args, "lower", maps.face_part, maps.part_names)
    assert torch.equal(lower.src_part_mask, par[:, [2, 3, 6, 7]].sum(1, keepdim=True))
    with pytest.raises(UsageError, match="left_arm"):
        swap_flows(*args, "tail", maps.face_part, maps.part_names)


def test_front_and_back_sources_cover_more_of_a_turned_target():
    f2v_front, front = _pose(0.0)
    f2v_back, back = _pose(180.0)
    _, tgt = _pose(90.0)
    p2 = [p2verts_from_f2verts(f2v_front), p2verts_from_f2verts(f2v_back)]
    both = multi_source_flows(p2, [front, back], tgt)
    alone = [multi_source_flows([p], [r], tgt) for p, r in zip(p2, [front, back])]
    body = tgt.foreground[:, None].float()
    cover_both = sum(both.masks).sum()
    cover_alone = [a.masks[0].sum() for a in alone]
    assert cover_both > 1.6 * max(cover_alone)
    assert torch.equal(sum(both.masks) + both.uncovered, body)        # disjoint, within the body
    # faces at a grazing angle in both sources cover no pixel centre there: a thin strip stays
    # uncovered
    assert both.uncovered.sum() < 0.25 * body.sum()
    for i, (ras, T) in enumerate(zip([front, back], both.flows)):
        chosen = both.masks[i][:, 0] > 0
        visible = torch.zeros(SPHERE[1].shape[0], dtype=torch.bool)
        visible[ras.face_index[ras.foreground]] = True
        assert visible[tgt.face_index[chosen]].all()                   # only where it sees it
        full = transformation_flow(p2[i], tgt)
        assert torch.equal(T[chosen], full[chosen]) and (T[~chosen] == -2).all()
    first = multi_source_flows(p2, [front, back], tgt, rule="first")
    assert torch.equal(sum(first.masks), sum(both.masks))
    assert first.masks[0].sum() >= both.masks[0].sum()


def test_one_source_broadcasts_over_a_batch_of_targets():
    f2v_src, _ = _pose(0.0)
    f2v_a, tgt_a = _pose(15.0)
    f2v_b, tgt_b = _pose(-25.0, (0.05, 0.0, 0.0))
    both = rasterize(torch.cat([f2v_a, f2v_b]), N)
    p2 = p2verts_from_f2verts(f2v_src)
    T = transformation_flow(p2, both)
    assert torch.equal(T[0], transformation_flow(p2, tgt_a)[0])
    assert torch.equal(T[1], transformation_flow(p2, tgt_b)[0])
    T2 = transformation_flow(p2.expand(2, -1, -1, -1), both)
    assert torch.equal(T, T2)
