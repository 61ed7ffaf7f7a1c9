"""The per-frame core shared by imitate and novel view: target bodies in, synthesized frames out.

For each target body (already rendered as a BodyView at N): the flow from every source, the warped
sources, the target condition map, the generator (or warp-only) and the optional front-face warp.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .body.model import BodyModel
from .flow import multi_source_flows, transformation_flow
from .render.body_view import BodyView
from .source import PreparedSource
from .synth import front_warp, warp_sources


def source_flows(sources: Sequence[PreparedSource], target: BodyView) -> list[Tensor]:
    """One flow per source (B x N x N x 2). With several sources each target pixel is served by the
    first source that sees its surface point (rule 'first': coherent regions, no per-face flicker
    between sources); points no source sees come from the first source."""
    if len(sources) == 1:
        return [transformation_flow(sources[0].view.p2verts, target.raster)]
    msf = multi_source_flows([s.view.p2verts for s in sources], [s.view.raster for s in sources],
                             target.raster, rule="first")
    flows = list(msf.flows)
    fallback = transformation_flow(sources[0].view.p2verts, target.raster)
    flows[0] = torch.where(msf.uncovered.permute(0, 2, 3, 1) > 0, fallback, flows[0])
    return flows


def synthesize(body: BodyModel, synth, sources: Sequence[PreparedSource], feats: Sequence[object],
               target: BodyView, background: Tensor, use_front_warp: bool = False) -> Tensor:
    """Frames for a batch of target bodies: B x 3 x N x N in [-1, 1]."""
    flows = source_flows(sources, target)
    warped = warp_sources([s.image for s in sources], flows)
    fim = target.raster.face_index
    cond = body.maps.render_cond(fim)
    bg = background.expand(fim.shape[0], -1, -1, -1)
    frames = synth.render(feats, warped, cond, flows, bg)
    if use_front_warp:
        return front_warp(frames, warped, body.maps.render_front(fim))
    return frames.image

