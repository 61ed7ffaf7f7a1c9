"""Stage 2, flow composition (spec §3), written once: source bodies + a target body -> flows, warped
sources and the target condition map; and the per-frame core shared by imitate and novel view.

Every user of stage 2 calls `flow_composition`: the jobs (imitate and novel view through
`synthesize`, swap with its per-part flows), personalization pairs, evaluation, the training inputs
and the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from impersonator_cli.pipeline.rig import BodyModel
from impersonator_cli.pipeline.source import PreparedSource
from impersonator_cli.pipeline.synth import front_warp
from impersonator_cli.render.body_view import BodyView
from impersonator_cli.render.flow import multi_source_flows, transformation_flow, warp
from impersonator_cli.render.maps import MeshMaps


@dataclass(frozen=True)
class FlowComposition:
    """Stage 2 for B target bodies and S sources.

    flows:  S tensors B x N x N x 2  source -> target flow T (-2: no correspondence)
    warped: B x 3 x N x N            I_syn, the sum of the sources warped by their flows
    cond:   B x 3 x N x N            uv_seg condition map of the target
    """

    flows: tuple[Tensor, ...]
    warped: Tensor
    cond: Tensor


def source_flows(views: Sequence[BodyView], target: BodyView) -> list[Tensor]:
    """One flow per source (B x N x N x 2). With several sources each target pixel is served by the
    first source that sees its surface point (rule 'first': coherent regions, no per-face flicker
    between sources); points no source sees come from the first source."""
    if len(views) == 1:
        return [transformation_flow(views[0].p2verts, target.raster)]
    msf = multi_source_flows([v.p2verts for v in views], [v.raster for v in views], target.raster, rule="first")
    flows = list(msf.flows)
    fallback = transformation_flow(views[0].p2verts, target.raster)
    flows[0] = torch.where(msf.uncovered.permute(0, 2, 3, 1) > 0, fallback, flows[0])
    return flows


def warp_sources(images: Sequence[Tensor], flows: Sequence[Tensor],
                 masks: Sequence[Tensor] | None = None) -> Tensor:
    """sum_i warp(image_i, T_i) [* mask_i]: images 1 (or B) x 3 x N x N, flows B x N x N x 2 (-2 where
    a source was not chosen), masks B x 1 x N x N -> B x 3 x N x N."""
    out = None
    for i, (image, T) in enumerate(zip(images, flows)):
        w = warp(image.expand(T.shape[0], -1, -1, -1), T)
        w = w if masks is None else w * masks[i]
        out = w if out is None else out + w
    return out


def flow_composition(maps: MeshMaps, images: Sequence[Tensor], views: Sequence[BodyView], target: BodyView,
                     flows: Sequence[Tensor] | None = None,
                     masks: Sequence[Tensor] | None = None) -> FlowComposition:
    """Flows from each source (image_i 1 or B x 3 x N x N seen as views_i) to the B target bodies,
    the warped sources and the target's condition map (spec §3.1, §3.3).

    flows: precomputed flows (e.g. swap's per-part flows, §3.7) instead of `source_flows`;
    masks: B x 1 x N x N per source, multiplied into its warped image before the sum.
    """
    flows = source_flows(views, target) if flows is None else flows
    warped = warp_sources(images, flows, masks)
    cond = maps.render_cond(target.raster.face_index)
    return FlowComposition(tuple(flows), warped, cond)


def synthesize(body: BodyModel, synth, sources: Sequence[PreparedSource], feats: Sequence[object],
               target: BodyView, background: Tensor, use_front_warp: bool = False) -> Tensor:
    """Frames for a batch of target bodies: B x 3 x N x N in [-1, 1]."""
    stage2 = flow_composition(body.maps, [s.image for s in sources], [s.view for s in sources], target)
    fim = target.raster.face_index
    bg = background.expand(fim.shape[0], -1, -1, -1)
    frames = synth.render(feats, stage2.warped, stage2.cond, stage2.flows, bg)
    if use_front_warp:
        return front_warp(frames, stage2.warped, body.maps.render_front(fim))
    return frames.image
