"""The two post-tune objectives (they differ on purpose and follow the official code) and their
initial predictions.

Imitate / novel view (spec §5.2): init_pred is the un-tuned generator's prediction of each pair,
quantised to uint8 and back (the official re-reads its saved images). Per batch: ``infer_front`` on
(source, pair) -> fake source, fake target; a cycle back to the source; losses cycle / struct / face /
mask, total = 10 cycle + 10 struct + face + 5 mask. The structure term masks the back of the head.

Swap (spec §5.3): the same with two changes: the structure term has no head mask, and the second face
term compares the fake target with the warped input I_syn (not with the initial prediction). The
initial predictions are made once, in memory (no uint8 round trip), front warp included when asked.

There is no perceptual (VGG) term; VGG-19 is only needed for training.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from impersonator_cli.gan.generator import LiquidWarpingGenerator, compose
from impersonator_cli.gan.losses import FaceLoss, l1, mask_loss
from impersonator_cli.pipeline.synth import Frames, front_warp
from impersonator_cli.render.flow import warp
from impersonator_cli.tune.pairs import TuningSet

LAMBDA_CYCLE, LAMBDA_STRUCT, LAMBDA_FACE, LAMBDA_MASK = 10.0, 10.0, 1.0, 5.0


class StepLosses(NamedTuple):
    cycle: float
    struct: float
    face: float
    mask: float
    total: float


def quantize(image: Tensor) -> Tensor:
    """Save/re-read round trip of the official: uint8((x + 1) / 2 * 255) (truncation), back to
    [-1, 1]. B x 3 x N x N -> same."""
    q = torch.floor(((image + 1.0) / 2.0 * 255.0).clamp(0.0, 255.0))
    return q / 255.0 * 2.0 - 1.0


def src_input(data: TuningSet, idx: Tensor | None = None) -> Tensor:
    """SID input concat(I * ft_mask, cond) of the source sides (all, or `idx`): -> S x 6 x N x N."""
    image, ft_mask, cond = data.image, data.ft_mask, data.cond
    if idx is not None:
        image, ft_mask, cond = image[idx], ft_mask[idx], cond[idx]
    return torch.cat([image * ft_mask, cond], dim=1)


def _front(data: TuningSet, side: int, idx, image: Tensor, warped: Tensor, attention: Tensor) -> Tensor:
    """`image` with the front warp (spec §3.5) of `side` (0 source, 1 target) when the set asks for it."""
    if data.front is None:
        return image
    return front_warp(Frames(image, attention), warped, data.front[side][idx])


def _face_term(face: FaceLoss | None, device, first: tuple, second: tuple) -> Tensor:
    """face(*first) + face(*second), each (real B x 3 x N x N, fake, j2d B x 19 x 2); 0 without a face net."""
    if face is None:
        return torch.zeros((), device=device)
    return face(*first) + face(*second)


def _weigh(cycle: Tensor, struct: Tensor, face_term: Tensor, attentions: Sequence[Tensor],
           pseudo: Sequence[Tensor]) -> tuple[Tensor, StepLosses]:
    """The mask term (BCE of the attentions against the pseudo masks) and the weighted total."""
    mask = mask_loss(torch.cat(list(attentions)), torch.cat(list(pseudo)), bce=True)
    total = LAMBDA_CYCLE * cycle + LAMBDA_STRUCT * struct + LAMBDA_FACE * face_term + LAMBDA_MASK * mask
    return total, StepLosses(*(float(t.detach()) for t in (cycle, struct, face_term, mask, total)))


# ------------------------------------------------------------------------------ imitate (§5.2)


@torch.no_grad()
def imitate_initial(generator: LiquidWarpingGenerator, data: TuningSet, batch_size: int = 4) -> Tensor:
    """The un-tuned generator's (quantised) prediction of every pair: -> K x 3 x N x N."""
    p = data.pairs
    feats = generator.encode_source(src_input(data))
    out = []
    for i in range(0, len(p), batch_size):
        sl = slice(i, i + batch_size)
        x = generator.transfer(feats, torch.cat([p.warped[sl], p.cond[sl]], dim=1), p.T[sl])
        out.append(quantize(compose(x.color, x.attention, data.background)))
    return torch.cat(out, dim=0)


def imitate_loss(generator: LiquidWarpingGenerator, data: TuningSet, idx: Tensor, init_pred: Tensor,
                 face: FaceLoss | None) -> tuple[Tensor, StepLosses]:
    """The §5.2 objective on the pairs `idx` (B of them), one source; init_pred: B x 3 x N x N."""
    b, p = len(idx), data.pairs
    img, bg = data.image.expand(b, -1, -1, -1), data.background.expand(b, -1, -1, -1)
    cond_src, cond_tgt = data.cond.expand(b, -1, -1, -1), p.cond[idx]
    T, T_cyc = p.T[idx], p.T_cycle[idx]
    # infer_front on B identical sources, with the source stream run once and broadcast: the same
    # values and gradients (instance norm is per sample; expand sums the copies' gradients).
    feats = generator.encode_source(src_input(data))
    src, tsf = generator.decode_source(feats), generator.transfer(feats, torch.cat([p.warped[idx], cond_tgt], 1), T)
    A_src = src.attention.expand(b, -1, -1, -1)
    fake_src = compose(src.color, src.attention, data.background).expand(b, -1, -1, -1)
    fake_tsf = compose(tsf.color, tsf.attention, bg)
    # Official quirk, kept: the cycle's SID input is the fake target times the BACKGROUND indicator
    # of the target cond (not its body mask).
    cyc_src_in = torch.cat([fake_tsf * cond_tgt[:, 2:3], cond_tgt], dim=1)
    back_warped = warp(fake_tsf, T_cyc)
    cyc = generator.transfer(generator.encode_source(cyc_src_in), torch.cat([back_warped, cond_src], dim=1), T_cyc)
    fake_cyc = compose(cyc.color, cyc.attention, bg)

    cycle = l1(img, fake_src) + l1(img, fake_cyc)
    body_src = 1.0 - data.cond[:, 2:3]
    # As in the official code, the head mask H comes from the TARGET's fim although the compared
    # images are in the source frame.
    H = p.not_back[idx]
    struct = l1(init_pred, fake_tsf) + 2.0 * l1(img * body_src * H, back_warped * H)
    face_term = _face_term(face, img.device, (img, fake_cyc, data.j2d.expand(b, -1, -1)),
                           (init_pred, fake_tsf, p.j2d[idx]))
    pseudo_src = (1.0 - data.ft_mask).expand(b, -1, -1, -1)  # erode(bgInd_src, ft_ks)
    return _weigh(cycle, struct, face_term, [A_src, tsf.attention], [pseudo_src, p.pseudo[idx]])


# ------------------------------------------------------------------------------ swap (§5.3)


@torch.no_grad()
def swap_initial(generator: LiquidWarpingGenerator, data: TuningSet, batch_size: int = 2) -> Tensor:
    """The un-tuned generator's prediction of both directions (no quantisation): -> 2 x 3 x N x N."""
    p = data.pairs
    out = generator.transfer(generator.encode_source(src_input(data)), torch.cat([p.warped, p.cond], dim=1), p.T)
    pred = compose(out.color, out.attention, data.background)
    return _front(data, 1, slice(None), pred, p.warped, out.attention)


def swap_loss(generator: LiquidWarpingGenerator, data: TuningSet, idx: Tensor, init_pred: Tensor,
              face: FaceLoss | None) -> tuple[Tensor, StepLosses]:
    """The §5.3 objective on the directions `idx` (B of them); init_pred: B x 3 x N x N."""
    p = data.pairs
    img, bg, cond_src, cond_tgt = data.image[idx], data.background[idx], data.cond[idx], p.cond[idx]
    T, T_cyc, warped = p.T[idx], p.T_cycle[idx], p.warped[idx]
    src_in = src_input(data, idx)
    out = generator.infer_front(src_in, torch.cat([warped, cond_tgt], 1), T)
    fake_src = compose(out.color_src, out.attention_src, bg)
    fake_tsf = _front(data, 1, idx, compose(out.color_tsf, out.attention_tsf, bg), warped, out.attention_tsf)
    # Official quirk, kept (as in §5.2): the cycle's SID input is the fake target times the target's
    # BACKGROUND indicator.
    back_warped = warp(fake_tsf, T_cyc)
    cyc = generator.transfer(generator.encode_source(torch.cat([fake_tsf * cond_tgt[:, 2:3], cond_tgt], 1)),
                             torch.cat([back_warped, cond_src], 1), T_cyc)  # its source head is unused
    fake_cyc = _front(data, 0, idx, compose(cyc.color, cyc.attention, bg), src_in[:, :3], out.attention_src)

    cycle = l1(img, fake_src) + l1(img, fake_cyc)
    struct = l1(init_pred, fake_tsf) + 2.0 * l1(img * (1.0 - cond_src[:, 2:3]), back_warped)
    face_term = _face_term(face, img.device, (img, fake_cyc, data.j2d[idx]), (warped, fake_tsf, p.j2d[idx]))
    pseudo_src = 1.0 - data.ft_mask[idx]  # erode(bgInd_src, ft_ks)
    return _weigh(cycle, struct, face_term, [out.attention_src, out.attention_tsf], [pseudo_src, p.pseudo[idx]])
