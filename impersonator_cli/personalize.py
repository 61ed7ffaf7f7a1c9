"""Personalization: the official few-step fine-tuning of the generator on one source ("post-tune").

Spec §5.2. The official code imitates every 40th image of a folder of prior images (``A_priors``,
shipped in samples.zip, not with the weights), saves the predictions and trains 5 epochs on the
resulting (source, target) pairs. We build the pairs from target POSES instead: the source body
(its camera and shape) put into a built-in set of 8 diverse poses (front/back/side turns, arms
up/down/out, a walking step), or poses sampled from the driver's motion when the caller has it
(`targets_from_motion`). Everything after the pairs is the official objective:

* init_pred: the un-tuned generator's prediction for each pair, quantised to uint8 and back (the
  official re-reads its saved images);
* per batch: ``infer_front`` on (source, pair) -> fake source, fake target; a cycle back to the
  source; losses cycle / struct / face / mask, total = 10 cycle + 10 struct + face + 5 mask;
* Adam(lr 2e-4, betas (0.5, 0.999)) over all generator parameters, constant lr; the background is
  the fixed source background, so the BG stream gets no gradient and is left untouched.

There is no perceptual (VGG) term in this objective; VGG-19 is only needed for training. The face
term needs SphereFace weights; without them it is skipped (the report says which file is missing)
unless it was asked for explicitly. Tuned weights are cached by a hash of the source, the pairs,
the generator weights and the settings.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from .body.smpl import SMPL
from .errors import WeightsError
from .flow import FT_KS, Masks, condition_masks, erode, transformation_flow, warp
from .gan.generator import LiquidWarpingGenerator, compose
from .gan.losses import FaceLoss, l1, load_sphereface, mask_loss
from .render.body_view import BodyView, view_body
from .render.maps import MeshMaps
from .render.rasterize import Raster
from .personalize_cache import (ENV_CACHE_DIR, TUNED_PREFIXES, apply_cached, default_cache_dir,  # noqa: F401
                                load_cached, module_fingerprint, personalization_cache_key, save_cached,
                                tensor_digest)

LAMBDA_CYCLE, LAMBDA_STRUCT, LAMBDA_FACE, LAMBDA_MASK = 10.0, 10.0, 1.0, 5.0
Progress = Callable[[int, "int | None", float], None]


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True, eq=False)
class PersonalizeSource:
    """The source person, everything at N x N (batch 1).

    image: 1 x 3 x N x N in [-1, 1]; view: its BodyView; cond: 1 x 3 x N x N; masks: Masks of cond;
    background: 1 x 3 x N x N (inpainted, fixed); j2d: 1 x 19 x 2; cam: 1 x 3; pose: 1 x 72;
    shape: 1 x 10.
    """

    image: Tensor
    view: BodyView
    cond: Tensor
    masks: Masks
    background: Tensor
    j2d: Tensor
    cam: Tensor
    pose: Tensor
    shape: Tensor


def prepare_source(smpl: SMPL, maps: MeshMaps, image: Tensor, background: Tensor, cam: Tensor,
                   pose: Tensor, shape: Tensor, ft_ks: int = FT_KS, bg_ks: int = 13) -> PersonalizeSource:
    """Render the source body and derive cond, masks and j2d (spec §3.2, §5.2)."""
    size = image.shape[-1]
    view = view_body(smpl, cam, pose, shape, size)
    cond = maps.render_cond(view.raster.face_index).to(image)
    return PersonalizeSource(image, view, cond, condition_masks(cond, bg_ks, ft_ks), background,
                             _j2d(smpl, cam, pose, shape).to(image), cam, pose, shape)


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
    not_back: K x 1 x N x N 1 - back-of-head map of the target; pseudo: K x 1 x N x N
    erode(bgInd_tgt, ft_ks); j2d: K x 19 x 2 driving joints.
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


@dataclass(frozen=True)
class Budget:
    """Stop at `steps` or after `seconds` (from the start, init predictions included), whichever
    comes first. Neither given: the official `epochs` x floor(K / batch) steps."""

    steps: int | None = None
    seconds: float | None = None
    epochs: int = 5


class StepLosses(NamedTuple):
    cycle: float
    struct: float
    face: float
    mask: float
    total: float


@dataclass(frozen=True)
class PersonalizeReport:
    steps: int
    seconds: float
    losses: tuple[float, ...]          # total loss per step
    terms: tuple[StepLosses, ...] = ()
    cache_hit: bool = False
    cache_key: str | None = None
    face_used: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


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


def _rotvec_to_matrix(r: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return np.eye(3)
    k = r / angle
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def _matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Via a unit quaternion (Shepperd's branch choice): exact also near 180 degrees."""
    tr, d = np.trace(R), np.diag(R)
    if tr >= d.max():
        w = math.sqrt(1 + tr) / 2
        v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (4 * w)
    else:
        i = int(np.argmax(d))
        j, k = (i + 1) % 3, (i + 2) % 3
        v = np.zeros(3)
        v[i] = math.sqrt(1 + d[i] - d[j] - d[k]) / 2
        w = (R[k, j] - R[j, k]) / (4 * v[i])
        v[j], v[k] = (R[j, i] + R[i, j]) / (4 * v[i]), (R[k, i] + R[i, k]) / (4 * v[i])
    if w < 0:
        w, v = -w, -v
    s = float(np.linalg.norm(v))
    return v * (2 * math.atan2(s, w) / s) if s > 1e-12 else 2 * v


def default_targets(source: PersonalizeSource,
                    poses: Sequence[tuple[float, tuple]] = DEFAULT_POSES) -> TargetBodies:
    """The built-in poses on the source body: source camera and shape, the source's global rotation
    turned about the body's vertical axis."""
    base = _rotvec_to_matrix(source.pose[0, :3].detach().double().cpu().numpy())
    rows = []
    for turn, joints in poses:
        t = math.radians(turn)
        ry = np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])
        pose = np.zeros(72)
        pose[:3] = _matrix_to_rotvec(base @ ry)
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


def _j2d(smpl: SMPL, cam: Tensor, pose: Tensor, shape: Tensor) -> Tensor:
    """COCO-plus joints projected with the weak-perspective camera: -> B x 19 x 2 float32."""
    shape = shape.expand(pose.shape[0], -1)
    with torch.no_grad():
        theta = torch.cat([cam.to(pose), pose, shape.to(pose)], dim=1)
        return smpl.get_details(theta).j2d.float()


def _repeat(raster: Raster, k: int) -> Raster:
    return Raster(raster.face_index.expand(k, -1, -1).contiguous(),
                  raster.weights.expand(k, -1, -1, -1).contiguous())


def build_pairs(source: PersonalizeSource, smpl: SMPL, maps: MeshMaps,
                targets: TargetBodies | None = None, ft_ks: int = FT_KS) -> PairSet:
    """Render the targets and derive flows, warped sources, conds and masks of every pair."""
    targets = default_targets(source) if targets is None else targets
    size, like = source.image.shape[-1], source.image
    views = view_body(smpl, targets.cam, targets.pose, targets.shape, size)
    k = views.f2verts.shape[0]
    T = transformation_flow(source.view.p2verts, views.raster).to(like)
    T_cycle = transformation_flow(views.p2verts, _repeat(source.view.raster, k)).to(like)
    cond = maps.render_cond(views.raster.face_index).to(like)
    not_back = 1.0 - maps.render_back(views.raster.face_index).to(like)
    return PairSet(T=T, T_cycle=T_cycle, warped=warp(source.image.expand(k, -1, -1, -1), T),
                   cond=cond, not_back=not_back, pseudo=erode(cond[:, 2:3], ft_ks),
                   j2d=_j2d(smpl, targets.cam, targets.pose, targets.shape).to(like))


# ------------------------------------------------------------------------------ objective


def quantize(image: Tensor) -> Tensor:
    """Save/re-read round trip of the official: uint8((x + 1) / 2 * 255) (truncation), back to
    [-1, 1]. B x 3 x N x N -> same."""
    q = torch.floor(((image + 1.0) / 2.0 * 255.0).clamp(0.0, 255.0))
    return q / 255.0 * 2.0 - 1.0


def _src_input(source: PersonalizeSource, k: int) -> Tensor:
    """SID input concat(I_src * ft_mask, cond_src), repeated: -> k x 6 x N x N."""
    x = torch.cat([source.image * source.masks.ft_mask, source.cond], dim=1)
    return x.expand(k, -1, -1, -1)


@torch.no_grad()
def initial_predictions(generator: LiquidWarpingGenerator, source: PersonalizeSource,
                        pairs: PairSet, batch_size: int = 4) -> Tensor:
    """The un-tuned generator's (quantised) prediction of every pair: -> K x 3 x N x N."""
    feats = generator.encode_source(_src_input(source, 1))
    out = []
    for i in range(0, len(pairs), batch_size):
        sl = slice(i, i + batch_size)
        p = generator.transfer(feats, torch.cat([pairs.warped[sl], pairs.cond[sl]], dim=1), pairs.T[sl])
        out.append(quantize(compose(p.color, p.attention, source.background)))
    return torch.cat(out, dim=0)


def post_tune_loss(generator: LiquidWarpingGenerator, source: PersonalizeSource, pairs: PairSet,
                   idx: Tensor, init_pred: Tensor, face: FaceLoss | None) -> tuple[Tensor, StepLosses]:
    """The §5.2 objective on the pairs `idx` (B of them); init_pred: B x 3 x N x N."""
    b = len(idx)
    img, bg = source.image.expand(b, -1, -1, -1), source.background.expand(b, -1, -1, -1)
    cond_src, cond_tgt = source.cond.expand(b, -1, -1, -1), pairs.cond[idx]
    T, T_cyc = pairs.T[idx], pairs.T_cycle[idx]
    # infer_front on B identical sources, with the source stream run once and broadcast: the same
    # values and gradients (instance norm is per sample; expand sums the copies' gradients).
    feats = generator.encode_source(_src_input(source, 1))
    src, tsf = generator.decode_source(feats), generator.transfer(
        feats, torch.cat([pairs.warped[idx], cond_tgt], 1), T)
    A_src = src.attention.expand(b, -1, -1, -1)
    fake_src = compose(src.color, src.attention, source.background).expand(b, -1, -1, -1)
    fake_tsf = compose(tsf.color, tsf.attention, bg)
    # Official quirk, kept: the cycle's SID input is the fake target times the BACKGROUND indicator
    # of the target cond (not its body mask).
    cyc_src_in = torch.cat([fake_tsf * cond_tgt[:, 2:3], cond_tgt], dim=1)
    back_warped = warp(fake_tsf, T_cyc)
    cyc = generator.transfer(generator.encode_source(cyc_src_in),
                             torch.cat([back_warped, cond_src], dim=1), T_cyc)
    fake_cyc = compose(cyc.color, cyc.attention, bg)

    cycle = l1(img, fake_src) + l1(img, fake_cyc)
    body_src = 1.0 - source.cond[:, 2:3]
    # As in the official code, the head mask H comes from the TARGET's fim although the compared
    # images are in the source frame.
    H = pairs.not_back[idx]
    struct = l1(init_pred, fake_tsf) + 2.0 * l1(img * body_src * H, back_warped * H)
    face_term = torch.zeros((), device=img.device)
    if face is not None:
        face_term = (face(img, fake_cyc, source.j2d.expand(b, -1, -1))
                     + face(init_pred, fake_tsf, pairs.j2d[idx]))
    pseudo_src = (1.0 - source.masks.ft_mask).expand(b, -1, -1, -1)  # erode(bgInd_src, ft_ks)
    mask = mask_loss(torch.cat([A_src, tsf.attention]),
                     torch.cat([pseudo_src, pairs.pseudo[idx]]), bce=True)
    total = LAMBDA_CYCLE * cycle + LAMBDA_STRUCT * struct + LAMBDA_FACE * face_term + LAMBDA_MASK * mask
    terms = StepLosses(*(float(t.detach()) for t in (cycle, struct, face_term, mask, total)))
    return total, terms


def _batches(k: int, batch_size: int):
    """Official DataLoader order: no shuffle, batch min(K, bs), drop_last; repeats forever."""
    bs = min(k, batch_size)
    while True:
        for i in range(0, k - bs + 1, bs):
            yield torch.arange(i, i + bs)


def _step_limit(budget: Budget, k: int, batch_size: int) -> int | None:
    if budget.steps is None and budget.seconds is None:
        return budget.epochs * (k // min(k, batch_size))
    return budget.steps


def _face_or_note(use_face: bool | None, face: FaceLoss | None,
                  weights_dir) -> tuple[FaceLoss | None, str | None]:
    if use_face is False:
        return None, None
    if face is not None:
        return face, None
    try:
        return FaceLoss(load_sphereface(None, weights_dir)), None
    except WeightsError as exc:
        if use_face:
            raise
        return None, "Face loss skipped: " + exc.paragraph()


@contextmanager
def flush_denormals():
    """Flush subnormal floats to zero on CPU while tuning, then restore the previous mode.

    Back-propagation through saturated heads produces subnormal products that make CPU kernels
    up to ~70x slower (measured: 10 s instead of 0.14 s per step on the test generator); values
    below 1.2e-38 do not matter to the result. Detected by probing, as torch has no getter.
    """
    was_on = float(torch.tensor([1e-39]) * torch.tensor([1.0])) == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


def tune(generator: LiquidWarpingGenerator, source: PersonalizeSource, pairs: PairSet,
         budget: Budget = Budget(), lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
         batch_size: int = 4, face: FaceLoss | None = None,
         progress: Progress | None = None) -> PersonalizeReport:
    """The optimisation loop (no cache): fine-tunes `generator` in place."""
    with flush_denormals():
        return _tune(generator, source, pairs, budget, lr, betas, batch_size, face, progress)


def _tune(generator, source, pairs, budget, lr, betas, batch_size, face, progress) -> PersonalizeReport:
    start = time.perf_counter()
    init = initial_predictions(generator, source, pairs, batch_size)
    optim = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    limit = _step_limit(budget, len(pairs), batch_size)
    terms: list[StepLosses] = []
    for idx in _batches(len(pairs), batch_size):
        elapsed = time.perf_counter() - start
        if (limit is not None and len(terms) >= limit) or (
                budget.seconds is not None and elapsed >= budget.seconds):
            break
        optim.zero_grad(set_to_none=True)
        loss, step = post_tune_loss(generator, source, pairs, idx, init[idx], face)
        loss.backward()
        optim.step()
        terms.append(step)
        if progress is not None:
            progress(len(terms), limit, step.total)
    return PersonalizeReport(steps=len(terms), seconds=time.perf_counter() - start,
                             losses=tuple(t.total for t in terms), terms=tuple(terms),
                             face_used=face is not None)


# ------------------------------------------------------------------------------ cache key


def source_digest(source: PersonalizeSource, pairs: PairSet) -> str:
    """Content hash of the source (image, body, cond, masks, background) and of its pairs."""
    return tensor_digest(source.image, source.background, source.cond, source.masks.ft_mask,
                         source.view.f2verts, source.j2d, pairs.T, pairs.T_cycle, pairs.warped,
                         pairs.cond, pairs.not_back, pairs.pseudo, pairs.j2d)


# ------------------------------------------------------------------------------ entry point


def personalize(generator: LiquidWarpingGenerator, source: PersonalizeSource, pairs: PairSet,
                budget: Budget = Budget(), lr: float = 2e-4,
                betas: tuple[float, float] = (0.5, 0.999), batch_size: int = 4,
                use_face: bool | None = None, face: FaceLoss | None = None,
                weights_dir: str | os.PathLike | None = None, progress: Progress | None = None,
                cache: bool = True, cache_dir: str | os.PathLike | None = None,
                generator_id: str | None = None) -> PersonalizeReport:
    """Fine-tune `generator` in place on `source` (spec §5.2), reusing a cached result.

    use_face: None = use the face loss when SphereFace weights are found (else a note says which
    file is missing), True = require them (WeightsError), False = off. `face` overrides the lookup.
    generator_id: identity of the generator's weights for the cache key (e.g. the checkpoint's
    sha256); default: a hash of its state dict. The key also covers the source and pair contents,
    the face network and every setting (a seconds budget makes the cached result timing-dependent).
    """
    face, note = _face_or_note(use_face, face, weights_dir)
    notes = (note,) if note else ()
    key = None
    if cache:
        settings = {"budget": [budget.steps, budget.seconds, budget.epochs], "lr": lr,
                    "betas": list(betas), "batch_size": batch_size,
                    "face": module_fingerprint(face) if face is not None else None}
        key = personalization_cache_key(source_digest(source, pairs),
                                        generator_id or module_fingerprint(generator), settings)
        t0 = time.perf_counter()
        hit = load_cached(key, cache_dir)
        if hit is not None and apply_cached(generator, hit[0]):
            meta = hit[1]
            return PersonalizeReport(steps=int(meta.get("steps", 0)), seconds=time.perf_counter() - t0,
                                     losses=tuple(meta.get("losses", ())), cache_hit=True,
                                     cache_key=key, face_used=face is not None, notes=notes)
    report = tune(generator, source, pairs, budget, lr, betas, batch_size, face, progress)
    if key is not None:
        save_cached(key, generator, cache_dir, {"steps": report.steps, "losses": list(report.losses),
                                                "seconds": report.seconds})
    return replace(report, cache_key=key, notes=notes)
