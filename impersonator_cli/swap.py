"""Appearance transfer (spec §3.7): the source person, in the source pose and background, wearing the
reference person's selected body parts."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .body.model import BodyModel
from .flow import swap_flows, warp
from .source import PreparedSource


def swap_image(body: BodyModel, synth, src: PreparedSource, ref: PreparedSource, src_feats, ref_feats,
               parts: str | Sequence[str], use_front_warp: bool = False) -> Tensor:
    """One swapped image, 1 x 3 x N x N in [-1, 1]. parts: body | all | head | upper | lower | names."""
    fim = src.view.raster.face_index
    part_map = body.maps.render_parts(fim)
    flows = swap_flows(src.view.raster, part_map, ref.view.p2verts, parts, body.maps.face_part,
                       body.maps.part_names)
    warped = warp(ref.image, flows.T21) * flows.src_part_mask + warp(src.image, flows.T11) * flows.src_left_mask
    frames = synth.render([ref_feats, src_feats], warped, src.cond, [flows.T21, flows.T11], src.background)
    if not use_front_warp:
        return frames.image
    front = body.maps.render_front(fim)  # the official swap copies the SOURCE's own front face
    return (1 - front) * frames.image + src.image * front * (1 - frames.attention)
