"""What personalization trains on: target bodies, and the (source -> target) pairs built from them.

Imitate and novel view (spec §5.2): the official code imitates every 40th image of a folder of prior
images (``A_priors``, shipped in samples.zip, not with the weights). We build the pairs from target
POSES instead: the source body (its camera and shape) put into a built-in set of 8 diverse poses
(front/back/side turns, arms up/down/out, a walking step), or poses sampled from the driver's motion
when the caller has it (`targets_from_motion`).

Swap (spec §5.3): no prior images; the pair itself in both directions. Direction s->t puts the
source person into the reference's body (its own camera, pose and shape) over the source background;
direction t->s does the same the other way.

Both come out as one `TuningSet`; stage 2 (flows, warped inputs, target conds) is `flow_composition`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from impersonator_cli.body.rotation import euler_to_matrix, matrix_to_rotvec, rotvec_to_matrix
from impersonator_cli.body.smpl import SMPL
from impersonator_cli.pipeline.compose import flow_composition
from impersonator_cli.pipeline.rig import BodyModel
from impersonator_cli.pipeline.source import PreparedSource
from impersonator_cli.render.body_view import BodyView, view_body
from impersonator_cli.defaults import FT_KS
from impersonator_cli.render.flow import erode, transformation_flow
from impersonator_cli.render.rasterize import Raster


@dataclass(frozen=True, eq=False)
class TargetBodies:
    """K driving bodies: cam K x 3, pose K x 72, shape K x 10 (or 1 x 10)."""

    cam: Tensor
    pose: Tensor
    shape: Tensor


@dataclass(frozen=True, eq=False)
class PairSet:
    """K (source -> target) training pairs (spec §5.2 step 2-3), all K x ... at N x N.

    T: K x N x N x 2 source->target flow; T_cycle: K x N x N x 2 target->source flow;
    warped: K x 3 x N x N I_syn = warp(I_src, T); cond: K x 3 x N x N target cond;
    not_back: K x 1 x N x N 1 - back-of-head map of the target (all ones: no head mask);
    pseudo: K x 1 x N x N erode(bgInd_tgt, ft_ks); j2d: K x 19 x 2 driving joints.
    """

    T: Tensor
    T_cycle: Tensor
    warped: Tensor
    cond: Tensor
    not_back: Tensor
    pseudo: Tensor
    j2d: Tensor

    def __len__(self) -> int:
        return int(self.T.shape[0])

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True, eq=False)
class TuningSet:
    """The source side of S directions and K pairs (imitate: S = 1, the one source of every pair;
    swap: S = K = 2, pair i starts from side i).

    image / background / cond: S x 3 x N x N; ft_mask: S x 1 x N x N; j2d: S x 19 x 2;
    front: (source-side, target-side) K x 1 x N x N front-face maps when the front warp is on, else None.
    """

    image: Tensor
    background: Tensor
    cond: Tensor
    ft_mask: Tensor
    j2d: Tensor
    pairs: PairSet
    front: tuple[Tensor, Tensor] | None = None

    def tensors(self) -> tuple[Tensor, ...]:
        """Everything the tuning reads (the cache's content hash)."""
        sides = (self.image, self.background, self.cond, self.ft_mask, self.j2d)
        return sides + (self.front or ()) + self.pairs.tensors()


# ------------------------------------------------------------------------------ targets

# Joint rotations (SMPL joint, axis 0/1/2 = x/y/z, degrees) on top of a turn about the body's own
# vertical axis (degrees). SMPL joints: 1/2 hips, 4/5 knees, 16/17 shoulders, 18/19 elbows.
_DOWN = ((16, 2, -65), (17, 2, 65))
DEFAULT_POSES: tuple[tuple[float, tuple], ...] = (
    (0, _DOWN),                                                      # front, arms down
    (0, ((16, 2, 50), (17, 2, -50))),                                # front, arms up
    (45, ((16, 2, -55), (17, 2, 55), (18, 1, -30))),                 # three-quarter left
    (-45, ((1, 0, -20), (5, 0, 25))),                                # three-quarter right, arms out
    (90, _DOWN + ((1, 0, -25), (2, 0, 20), (4, 0, 20))),             # side, stepping
    (180, _DOWN),                                                    # back
    (20, ((16, 2, -60), (17, 2, 70), (18, 1, -40), (19, 1, 40), (1, 0, -30), (2, 0, 20), (5, 0, 30))),
    (-90, ((16, 2, 45), (17, 2, 70), (19, 1, 40))),                  # other side, one arm up
)


def default_targets(source: PreparedSource,
                    poses: Sequence[tuple[float, tuple]] = DEFAULT_POSES) -> TargetBodies:
    """The built-in poses on the source body: source camera and shape, the source's global rotation
    turned about the body's vertical axis."""
    base = rotvec_to_matrix(source.pose[0, :3].detach().double().cpu().numpy())
    rows = []
    for turn, joints in poses:
        pose = np.zeros(72)
        pose[:3] = matrix_to_rotvec(base @ euler_to_matrix(0.0, math.radians(turn), 0.0, torch.float64).numpy())
        for joint, axis, deg in joints:
            pose[3 * joint + axis] = math.radians(deg)
        rows.append(pose)
    pose = torch.tensor(np.stack(rows), dtype=source.pose.dtype, device=source.pose.device)
    k = pose.shape[0]
    return TargetBodies(source.cam.expand(k, 3).clone(), pose, source.shape.expand(k, -1).clone())


def targets_from_motion(cams: Tensor, poses: Tensor, shape: Tensor, count: int = 8) -> TargetBodies:
    """`count` evenly spaced frames of a driver's motion (cams T x 3 already chosen by the camera
    strategy, poses T x 72), with the source `shape` (1 x 10)."""
    idx = torch.linspace(0, poses.shape[0] - 1, min(count, poses.shape[0])).round().long()
    return TargetBodies(cams[idx], poses[idx], shape.expand(len(idx), -1).clone())


def body_j2d(smpl: SMPL, cam: Tensor, pose: Tensor, shape: Tensor) -> Tensor:
    """COCO-plus joints projected with the weak-perspective camera: B x 3, B x 72, B (or 1) x 10 ->
    B x 19 x 2 float32."""
    shape = shape.expand(pose.shape[0], -1)
    with torch.no_grad():
        theta = torch.cat([cam.to(pose), pose, shape.to(pose)], dim=1)
        return smpl.get_details(theta).j2d.float()


# ------------------------------------------------------------------------------ pairs


def _repeat(raster: Raster, k: int) -> Raster:
    return Raster(raster.face_index.expand(k, -1, -1).contiguous(),
                  raster.weights.expand(k, -1, -1, -1).contiguous())


def _pairs(body: BodyModel, source: PreparedSource, targets: BodyView, j2d: Tensor, head_mask: bool) -> PairSet:
    """The source person put into K target bodies: stage 2 forth, the cycle flow back (spec §3.1)."""
    k = targets.f2verts.shape[0]
    stage2 = flow_composition(body.maps, [source.image], [source.view], targets)
    T_cycle = transformation_flow(targets.p2verts, _repeat(source.view.raster, k))
    cond = stage2.cond
    not_back = (1.0 - body.maps.render_back(targets.raster.face_index) if head_mask
                else torch.ones_like(cond[:, :1]))
    return PairSet(T=stage2.flows[0], T_cycle=T_cycle, warped=stage2.warped, cond=cond, not_back=not_back,
                   pseudo=erode(cond[:, 2:3], FT_KS), j2d=j2d)


def _source_side(source: PreparedSource) -> dict:
    return {"image": source.image, "background": source.background, "cond": source.cond,
            "ft_mask": source.masks.ft_mask}


def imitate_set(body: BodyModel, source: PreparedSource, targets: TargetBodies | None = None) -> TuningSet:
    """The source in K target bodies (default: `default_targets`), spec §5.2."""
    targets = default_targets(source) if targets is None else targets
    views = view_body(body.smpl, targets.cam, targets.pose, targets.shape, source.image.shape[-1], body.rasterizer)
    pairs = _pairs(body, source, views, body_j2d(body.smpl, targets.cam, targets.pose, targets.shape), True)
    return TuningSet(**_source_side(source), j2d=body_j2d(body.smpl, source.cam, source.pose, source.shape),
                     pairs=pairs)


def swap_set(body: BodyModel, source: PreparedSource, reference: PreparedSource,
             front_warp: bool = False) -> TuningSet:
    """Both directions [s->t, t->s] between two people, each keeping its own body (spec §5.3)."""
    j2d = [body_j2d(body.smpl, p.cam, p.pose, p.shape) for p in (source, reference)]
    s2t = _pairs(body, source, reference.view, j2d[1], head_mask=False)  # no head mask in the swap objective
    t2s = _pairs(body, reference, source.view, j2d[0], head_mask=False)
    pairs = PairSet(*(torch.cat([x, y]) for x, y in zip(s2t.tensors(), t2s.tensors())))
    sides = [_source_side(p) for p in (source, reference)]
    front = None
    if front_warp:
        f = body.maps.render_front(torch.cat([source.view.raster.face_index, reference.view.raster.face_index]))
        front = (f, f.flip(0))
    return TuningSet(**{name: torch.cat([sides[0][name], sides[1][name]]) for name in sides[0]},
                     j2d=torch.cat(j2d), pairs=pairs, front=front)
