"""Personalization for appearance transfer: the official swap post-tune (spec §5.3).

No prior images: the generator is fine-tuned on the (source, reference) pair itself, in both
directions. Direction s->t puts the source person into the reference's body (its own camera, pose
and shape) over the source background and cycles back; direction t->s does the same the other way.
With batch_size > 1 both directions form one batch of 2, otherwise the steps alternate
(s->t, t->s, ...). Adam(2e-4, betas (0.5, 0.999)), 50 steps; the lr is constant up to the official
0-based step 26 and drops by (2e-4 - 1e-5) / 25 after every later step (`swap_lr`).

The objective is §5.2's with two changes: the structure term has no head mask, and the second face
term compares the fake target with the warped input I_syn (not with the initial prediction). The
initial predictions are made once by the un-tuned generator (front warp included when asked), in
memory (no uint8 round trip). Building blocks (sources, flows, losses, cache) come from
`personalize.py` / `personalize_cache.py`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .flow import FT_KS, erode, transformation_flow, warp
from .gan.generator import LiquidWarpingGenerator, compose
from .gan.losses import FaceLoss, l1, mask_loss
from .personalize import (LAMBDA_CYCLE, LAMBDA_FACE, LAMBDA_MASK, LAMBDA_STRUCT, Budget, PairSet,
                          PersonalizeReport, PersonalizeSource, Progress, StepLosses, _face_or_note,
                          flush_denormals)
from .personalize_cache import (apply_cached, load_cached, module_fingerprint, personalization_cache_key,
                                save_cached, tensor_digest)
from .render.maps import MeshMaps

SWAP_STEPS = 50
LR_INIT, LR_FINAL, LR_FIX_STEPS = 2e-4, 1e-5, 25


def swap_lr(step: int, lr: float = LR_INIT, final: float = LR_FINAL, fix: int = LR_FIX_STEPS) -> float:
    """The lr used by the 0-based optimizer step `step`.

    The official loop lowers the lr by (lr - final) / fix after every step whose 0-based index is
    > fix, so steps 0..fix+1 use `lr`, step fix+2 uses lr - d, ... (step 49, the last: lr - 23 d).
    Clamped at `final` for budgets longer than the official 50 steps.
    """
    decays = max(0, step - (fix + 1))
    return max(final, lr - decays * (lr - final) / fix)


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True, eq=False)
class SwapPair:
    """Both directions [s->t, t->s] of a (source, reference) pair, all 2 x ... at N x N.

    image / background / cond / ft_mask / j2d: each direction's SOURCE side (2 x 3 / 3 / 3 / 1 x N x N,
    2 x 19 x 2); pairs: PairSet of K = 2 (flows, warped inputs, target conds, pseudo masks, target
    j2d); front_src / front_tgt: 2 x 1 x N x N front-face maps of each direction's source / target
    render (used only with front warp).
    """

    image: Tensor
    background: Tensor
    cond: Tensor
    ft_mask: Tensor
    j2d: Tensor
    pairs: PairSet
    front_src: Tensor
    front_tgt: Tensor


def _direction(a: PersonalizeSource, b: PersonalizeSource, ft_ks: int) -> PairSet:
    """a's person put into b's body: T = a -> b frame, T_cycle = b -> a frame (spec §3.1)."""
    T = transformation_flow(a.view.p2verts, b.view.raster).to(a.image)
    T_cycle = transformation_flow(b.view.p2verts, a.view.raster).to(a.image)
    return PairSet(T=T, T_cycle=T_cycle, warped=warp(a.image, T), cond=b.cond,
                   not_back=torch.ones_like(b.cond[:, :1]),  # no head mask in the swap objective
                   pseudo=erode(b.cond[:, 2:3], ft_ks), j2d=b.j2d)


def build_swap_pair(source: PersonalizeSource, reference: PersonalizeSource, maps: MeshMaps,
                    ft_ks: int = FT_KS) -> SwapPair:
    """The two training directions between two different people (each keeps its own body)."""
    s2t, t2s = _direction(source, reference, ft_ks), _direction(reference, source, ft_ks)
    pairs = PairSet(*(torch.cat([x, y]) for x, y in zip(_fields(s2t), _fields(t2s))))
    cat = lambda name: torch.cat([getattr(source, name), getattr(reference, name)])  # noqa: E731
    fims = torch.cat([source.view.raster.face_index, reference.view.raster.face_index])
    front = maps.render_front(fims).to(source.image)
    return SwapPair(image=cat("image"), background=cat("background"), cond=cat("cond"),
                    ft_mask=torch.cat([source.masks.ft_mask, reference.masks.ft_mask]), j2d=cat("j2d"),
                    pairs=pairs, front_src=front, front_tgt=front.flip(0))


def _fields(p: PairSet) -> tuple[Tensor, ...]:
    return (p.T, p.T_cycle, p.warped, p.cond, p.not_back, p.pseudo, p.j2d)


def _src_input(pair: SwapPair, idx: Tensor) -> Tensor:
    """SID input concat(I * ft_mask, cond) of each direction's source: -> B x 6 x N x N."""
    return torch.cat([pair.image[idx] * pair.ft_mask[idx], pair.cond[idx]], dim=1)


def _front_warp(image: Tensor, warped: Tensor, front: Tensor, attention: Tensor) -> Tensor:
    """(1 - F) * image + warped * F * (1 - A) (spec §3.5)."""
    return (1.0 - front) * image + warped * front * (1.0 - attention)


# ------------------------------------------------------------------------------ objective


@torch.no_grad()
def swap_initial_predictions(generator: LiquidWarpingGenerator, pair: SwapPair,
                             front_warp: bool = False) -> Tensor:
    """The un-tuned generator's prediction of both directions (no quantisation): -> 2 x 3 x N x N."""
    p = pair.pairs
    out = generator.transfer(generator.encode_source(_src_input(pair, torch.arange(2))),
                             torch.cat([p.warped, p.cond], dim=1), p.T)
    pred = compose(out.color, out.attention, pair.background)
    return _front_warp(pred, p.warped, pair.front_tgt, out.attention) if front_warp else pred


def swap_tune_loss(generator: LiquidWarpingGenerator, pair: SwapPair, idx: Tensor, init_pred: Tensor,
                   face: FaceLoss | None, front_warp: bool = False) -> tuple[Tensor, StepLosses]:
    """The §5.3 objective on the directions `idx` (B of them); init_pred: B x 3 x N x N."""
    p = pair.pairs
    img, bg, cond_src, cond_tgt = pair.image[idx], pair.background[idx], pair.cond[idx], p.cond[idx]
    T, T_cyc, warped = p.T[idx], p.T_cycle[idx], p.warped[idx]
    src_in = _src_input(pair, idx)
    out = generator.infer_front(src_in, torch.cat([warped, cond_tgt], 1), T)
    fake_src = compose(out.color_src, out.attention_src, bg)
    fake_tsf = compose(out.color_tsf, out.attention_tsf, bg)
    if front_warp:
        fake_tsf = _front_warp(fake_tsf, warped, pair.front_tgt[idx], out.attention_tsf)
    # Official quirk, kept (as in §5.2): the cycle's SID input is the fake target times the target's
    # BACKGROUND indicator.
    back_warped = warp(fake_tsf, T_cyc)
    cyc = generator.transfer(generator.encode_source(torch.cat([fake_tsf * cond_tgt[:, 2:3], cond_tgt], 1)),
                             torch.cat([back_warped, cond_src], 1), T_cyc)  # its source head is unused
    fake_cyc = compose(cyc.color, cyc.attention, bg)
    if front_warp:
        fake_cyc = _front_warp(fake_cyc, src_in[:, :3], pair.front_src[idx], out.attention_src)

    cycle = l1(img, fake_src) + l1(img, fake_cyc)
    struct = l1(init_pred, fake_tsf) + 2.0 * l1(img * (1.0 - cond_src[:, 2:3]), back_warped)
    face_term = torch.zeros((), device=img.device)
    if face is not None:
        face_term = face(img, fake_cyc, pair.j2d[idx]) + face(warped, fake_tsf, p.j2d[idx])
    pseudo_src = 1.0 - pair.ft_mask[idx]  # erode(bgInd_src, ft_ks)
    mask = mask_loss(torch.cat([out.attention_src, out.attention_tsf]),
                     torch.cat([pseudo_src, p.pseudo[idx]]), bce=True)
    total = LAMBDA_CYCLE * cycle + LAMBDA_STRUCT * struct + LAMBDA_FACE * face_term + LAMBDA_MASK * mask
    terms = StepLosses(*(float(t.detach()) for t in (cycle, struct, face_term, mask, total)))
    return total, terms


def _directions(step: int, batch_size: int) -> Tensor:
    """Both directions per step with batch_size > 1, else alternating s->t, t->s."""
    return torch.arange(2) if batch_size > 1 else torch.tensor([step % 2])


def tune_swap(generator: LiquidWarpingGenerator, pair: SwapPair, budget: Budget = Budget(),
              lr: float = LR_INIT, betas: tuple[float, float] = (0.5, 0.999), batch_size: int = 2,
              face: FaceLoss | None = None, front_warp: bool = False,
              progress: Progress | None = None) -> PersonalizeReport:
    """The optimisation loop (no cache): fine-tunes `generator` in place. Steps: budget.steps, else
    the official 50 (a seconds budget stops earlier when it runs out)."""
    with flush_denormals():
        start = time.perf_counter()
        init = swap_initial_predictions(generator, pair, front_warp)
        optim = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
        limit = SWAP_STEPS if budget.steps is None else budget.steps
        terms: list[StepLosses] = []
        for step in range(limit):
            if budget.seconds is not None and time.perf_counter() - start >= budget.seconds:
                break
            for group in optim.param_groups:
                group["lr"] = swap_lr(step, lr)
            idx = _directions(step, batch_size)
            optim.zero_grad(set_to_none=True)
            loss, losses = swap_tune_loss(generator, pair, idx, init[idx], face, front_warp)
            loss.backward()
            optim.step()
            terms.append(losses)
            if progress is not None:
                progress(len(terms), limit, losses.total)
    return PersonalizeReport(steps=len(terms), seconds=time.perf_counter() - start,
                             losses=tuple(t.total for t in terms), terms=tuple(terms),
                             face_used=face is not None)


def pair_digest(pair: SwapPair) -> str:
    """Content hash of both people (images, bodies, conds, masks, backgrounds) and the flows."""
    p = pair.pairs
    return tensor_digest(pair.image, pair.background, pair.cond, pair.ft_mask, pair.j2d, pair.front_src,
                         *_fields(p))


# ------------------------------------------------------------------------------ entry point


def personalize_swap(generator: LiquidWarpingGenerator, pair: SwapPair, budget: Budget = Budget(),
                     lr: float = LR_INIT, betas: tuple[float, float] = (0.5, 0.999), batch_size: int = 2,
                     use_face: bool | None = None, face: FaceLoss | None = None, front_warp: bool = False,
                     weights_dir: str | os.PathLike | None = None, progress: Progress | None = None,
                     cache: bool = True, cache_dir: str | os.PathLike | None = None,
                     generator_id: str | None = None) -> PersonalizeReport:
    """Fine-tune `generator` in place on a (source, reference) pair (spec §5.3), reusing a cached
    result. use_face / face / generator_id / cache as in `personalize.personalize`."""
    face, note = _face_or_note(use_face, face, weights_dir)
    notes = (note,) if note else ()
    key = None
    if cache:
        settings = {"kind": "swap", "budget": [budget.steps, budget.seconds], "lr": lr, "betas": list(betas),
                    "batch": 2 if batch_size > 1 else 1, "front_warp": front_warp,
                    "face": module_fingerprint(face) if face is not None else None}
        key = personalization_cache_key(pair_digest(pair), generator_id or module_fingerprint(generator),
                                        settings)
        t0 = time.perf_counter()
        hit = load_cached(key, cache_dir)
        if hit is not None and apply_cached(generator, hit[0]):
            meta = hit[1]
            return PersonalizeReport(steps=int(meta.get("steps", 0)), seconds=time.perf_counter() - t0,
                                     losses=tuple(meta.get("losses", ())), cache_hit=True, cache_key=key,
                                     face_used=face is not None, notes=notes)
    report = tune_swap(generator, pair, budget, lr, betas, batch_size, face, front_warp, progress)
    if key is not None:
        save_cached(key, generator, cache_dir, {"steps": report.steps, "losses": list(report.losses),
                                                "seconds": report.seconds})
    return replace(report, cache_key=key, notes=notes)
