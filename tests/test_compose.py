"""Stage 2 written once (pipeline/compose.flow_composition): flows, warped sources, target cond."""

from __future__ import annotations

import math

import torch

from impersonator_cli.pipeline.compose import flow_composition
from impersonator_cli.render.body_view import view_body
from impersonator_cli.render.flow import swap_flows, transformation_flow, warp

N = 48


def _views(smpl, arms_deg):
    pose = torch.zeros(len(arms_deg), 72)
    pose[:, 0] = math.pi  # upright in the y-down image
    pose[:, 16 * 3 + 2] = torch.tensor([math.radians(a) for a in arms_deg])
    return view_body(smpl, torch.tensor([[0.9, 0.0, 0.25]]).expand(len(arms_deg), 3), pose, torch.zeros(1, 10), N)


def test_one_source_is_the_transformation_flow_and_its_warp(mannequin_kit):
    smpl, maps, _, _ = mannequin_kit
    src, tgt = _views(smpl, [-60]), _views(smpl, [0, 40])
    image = torch.rand(1, 3, N, N) * 2 - 1
    stage2 = flow_composition(maps, [image], [src], tgt)
    T = transformation_flow(src.p2verts, tgt.raster)
    assert len(stage2.flows) == 1 and torch.equal(stage2.flows[0], T)
    assert torch.equal(stage2.warped, warp(image.expand(2, -1, -1, -1), T))
    assert torch.equal(stage2.cond, maps.render_cond(tgt.raster.face_index))


def test_given_flows_and_masks_are_the_masked_sum_of_swap(mannequin_kit):
    smpl, maps, _, _ = mannequin_kit
    src, ref = _views(smpl, [-60]), _views(smpl, [30])
    a, b = (torch.rand(1, 3, N, N) * 2 - 1 for _ in range(2))
    f = swap_flows(src.raster, maps.render_parts(src.raster.face_index), ref.p2verts, "upper", maps.face_part,
                   maps.part_names)
    stage2 = flow_composition(maps, [b, a], [ref, src], src, flows=[f.T21, f.T11],
                              masks=[f.src_part_mask, f.src_left_mask])
    assert torch.equal(stage2.warped, warp(b, f.T21) * f.src_part_mask + warp(a, f.T11) * f.src_left_mask)
    assert stage2.flows == (f.T21, f.T11)
