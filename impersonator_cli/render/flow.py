"""Flow composition (spec §0, §3.1, §3.2, §3.7, §3.8): transformation flows, warping, masks.

Flows are B x H x W x 2 grids of normalized (x, y) source positions (x right, y down), in the
`grid_sample(align_corners=True)` convention the official checkpoints were trained with; -2 marks
"no correspondence" (zero padding then samples 0). All functions are pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from impersonator_cli.errors import UsageError
from impersonator_cli.defaults import BG_KS, FT_KS
from impersonator_cli.render.rasterize import Raster

NO_FLOW = -2.0


def p2verts_from_f2verts(f2verts: Tensor) -> Tensor:
    """Per-face 2D positions: B x F x 3 x 3 (X, Y y-down, z) -> B x F x 3 x 2.

    Our f2verts are already y-down (the official negates Y for its rasterizer and back).
    """
    return f2verts[..., :2]


def transformation_flow(src_p2verts: Tensor, tgt: Raster) -> Tensor:
    """T[b, r, c] = sum_k w_tgt[b, r, c, k] P_src[b, fim_tgt[b, r, c], k]; -2 on background (§3.1).

    src_p2verts: B x F x 3 x 2 (or 1 x F x 3 x 2: one source for every target); tgt: Raster
    (B x N x N) -> B x N x N x 2 in the weights' dtype.

    As in the official code, T holds renderer positions (pixel (r, c) of a body seen identically in
    both images maps to its centre ((2c+1)/N - 1, (2r+1)/N - 1)) that grid_sample then reads with
    align_corners=True: identical poses give identity_grid * (N-1)/N, not the identity (<= 0.5 px).
    """
    Bs, Fn = src_p2verts.shape[:2]
    B = tgt.face_index.shape[0]
    if Bs not in (1, B):
        raise ValueError(f"source batch {Bs} does not match target batch {B}")
    fim = tgt.face_index.reshape(-1)
    pix = tgt.foreground_pixels()
    face = fim.index_select(0, pix)
    if Bs > 1:
        face = face + torch.div(pix, fim.numel() // B, rounding_mode="floor") * Fn
    corners = src_p2verts.reshape(Bs * Fn, 6).index_select(0, face).to(tgt.weights.dtype)
    w = tgt.weights.reshape(-1, 3).index_select(0, pix)
    T = torch.full((fim.numel(), 2), NO_FLOW, dtype=w.dtype, device=w.device)
    # Autocast off: under bf16 autocast bmm would round positions to 8 bits (up to half a pixel at
    # 256 x 256, and a dtype index_copy_ refuses); jobs call this outside autocast anyway.
    with torch.autocast(w.device.type, enabled=False):
        T.index_copy_(0, pix, torch.bmm(w.unsqueeze(1), corners.view(-1, 3, 2)).squeeze(1))
    return T.view(*tgt.face_index.shape, 2)


def warp(image: Tensor, T: Tensor) -> Tensor:
    """grid_sample, bilinear, zero padding, align_corners=True: B x C x H x W, B x h x w x 2."""
    return F.grid_sample(image, T.to(image.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


def identity_grid(size: int, device=None, dtype=torch.float32) -> Tensor:
    """1 x N x N x 2 identity flow, align_corners=True: pixel c -> x = -1 + 2c/(N-1)."""
    lin = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([x, y], -1).unsqueeze(0)


def resize_flow(T: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=True) resize of B x H x W x 2 flows; -2 is interpolated too (§4.4).
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(T.shape[1:3]) == size:
        return T
    out = F.interpolate(T.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=True)
    return out.permute(0, 2, 3, 1)


def _window_sums(mask: Tensor, ks: int, pad: float) -> Tensor:
    """Sum of every ks x ks window (B x 1 x H x W -> same size), border padded with `pad`.

    Integral image (integers, exact in float32 below 2^24 pixels, else float64): the cost does not
    grow with ks.
    """
    p = ks // 2
    H, W = mask.shape[-2:]
    dtype = torch.float32 if (H + ks) * (W + ks) < 2**24 else torch.float64
    x = F.pad(mask.to(dtype), (p, ks - 1 - p, p, ks - 1 - p), value=pad)
    c = F.pad(x.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    return c[..., ks:, ks:] - c[..., :-ks, ks:] - c[..., ks:, :-ks] + c[..., :-ks, :-ks]


def erode(mask: Tensor, ks: int) -> Tensor:
    """Binary erosion of a 0/1 B x 1 x H x W map with a ks x ks box; the border counts as 1."""
    return (_window_sums(mask, ks, 1.0) == ks * ks).to(mask.dtype)


def dilate(mask: Tensor, ks: int) -> Tensor:
    """Binary dilation of a 0/1 B x 1 x H x W map with a ks x ks box; the border counts as 0."""
    return (_window_sums(mask, ks, 0.0) > 0).to(mask.dtype)


@dataclass(frozen=True)
class Masks:
    """Masks from a condition map (§3.2), each B x 1 x N x N float (1 = true).

    bg_mask:   erode(bgInd, bg_ks)   background for inpainting
    body_mask: 1 - bg_mask           silhouette dilated by bg_ks // 2
    ft_mask:   1 - erode(bgInd, ft_ks)  source crop for the identity stream
    """

    bg_mask: Tensor
    body_mask: Tensor
    ft_mask: Tensor


def condition_masks(cond: Tensor, bg_ks: int = BG_KS, ft_ks: int = FT_KS) -> Masks:
    """cond: B x 3 x N x N uv_seg map (channel 2 = background indicator) -> Masks."""
    bg_ind = cond[:, 2:3]
    bg = erode(bg_ind, bg_ks)
    return Masks(bg_mask=bg, body_mask=1.0 - bg, ft_mask=1.0 - erode(bg_ind, ft_ks))


# --- appearance transfer (§3.7) -----------------------------------------------------------------

# --swap_part groups. `all` and `body` are the official values, by index in the sorted part list
# (index 0 is the head). `head`, `upper` and `lower` go beyond the official code and are resolved by
# part name (official layout: 00_head 01_torso 02/03_*_leg 04/05_*_arm 06/07_*_foot 08/09_*_hand).
PART_GROUPS = ("all", "body", "head", "upper", "lower")
_GROUP_WORDS = {"head": ("head",), "upper": ("torso", "arm", "hand"), "lower": ("leg", "foot")}


def _short(name: str) -> str:
    """'04_left_arm' -> 'left_arm' (a leading 'NN_' order prefix is optional in part names)."""
    head, _, rest = name.partition("_")
    return rest if head.isdigit() and rest else name


def _group(item: str, part_names: Sequence[str]) -> list[int]:
    if item == "all":
        return list(range(len(part_names)))
    if item == "body":
        return list(range(1, len(part_names)))
    words = _GROUP_WORDS[item]
    return [i for i, n in enumerate(part_names) if any(w in _short(n).split("_") for w in words)]


def resolve_parts(parts: str | Sequence[str], part_names: Sequence[str]) -> list[int]:
    """Part indices selected by group or part names (a list, or one comma-separated string)."""
    items = [p.strip() for p in parts.split(",")] if isinstance(parts, str) else list(parts)
    by_name = {n: i for i, n in enumerate(part_names)}
    by_name.update({_short(n): i for i, n in enumerate(part_names)})
    chosen: set[int] = set()
    for item in items:
        found = _group(item, part_names) if item in PART_GROUPS else [by_name.get(item, -1)]
        if not found or found == [-1]:
            valid = list(dict.fromkeys([*PART_GROUPS, *(_short(n) for n in part_names)]))
            raise UsageError(f"Unknown body part {item!r}",
                             hint=f"Use one or more (comma-separated) of: {', '.join(valid)}.")
        chosen.update(found)
    return sorted(chosen)


@dataclass(frozen=True)
class SwapFlows:
    """Flows of appearance transfer, in the SOURCE image frame.

    T11:            B x N x N x 2  identity on the kept (left) source parts, -2 elsewhere
    T21:            B x N x N x 2  source pixel of a selected part -> reference image position
    src_part_mask:  B x 1 x N x N  source pixels of the selected parts
    src_left_mask:  B x 1 x N x N  source pixels of the other parts
    """

    T11: Tensor
    T21: Tensor
    src_part_mask: Tensor
    src_left_mask: Tensor


def swap_flows(src_raster: Raster, src_part_map: Tensor, ref_p2verts: Tensor,
               parts: str | Sequence[str], face_part: Tensor,
               part_names: Sequence[str]) -> SwapFlows:
    """Flows for taking `parts` from the reference person onto the source (§3.7).

    src_part_map: B x (P+1) x N x N one-hot part map of the source; ref_p2verts: B x F x 3 x 2;
    face_part: F part index per face (`MeshMaps.face_part`).
    """
    sel = resolve_parts(parts, part_names)
    left = [i for i in range(len(part_names)) if i not in sel]
    src_part_mask = (src_part_map[:, sel].sum(1, keepdim=True) > 0).to(src_part_map.dtype)
    src_left_mask = (src_part_map[:, left].sum(1, keepdim=True) > 0).to(src_part_map.dtype)
    N = src_raster.size
    ident = identity_grid(N, src_raster.weights.device, src_raster.weights.dtype)
    T11 = torch.where(src_left_mask.permute(0, 2, 3, 1) > 0, ident, torch.full_like(ident, NO_FLOW))
    left_faces = torch.isin(face_part, torch.tensor(left, dtype=face_part.dtype,
                                                    device=face_part.device))
    ref = ref_p2verts.clone()
    ref[:, left_faces] = NO_FLOW
    T21 = transformation_flow(ref, src_raster).clamp(NO_FLOW, -NO_FLOW)
    return SwapFlows(T11, T21, src_part_mask, src_left_mask)


# --- several source images (paper's multi-source LWB; not in the official release, §3.7b) --------

@dataclass(frozen=True)
class MultiSourceFlows:
    """Per-source flows into one target frame.

    flows:     S tensors B x N x N x 2; -2 wherever that source was not chosen
    masks:     S tensors B x 1 x N x N; 1 where that source was chosen (disjoint)
    uncovered: B x 1 x N x N; target body pixels whose surface point no source sees
    """

    flows: tuple[Tensor, ...]
    masks: tuple[Tensor, ...]
    uncovered: Tensor


def face_pixel_counts(raster: Raster, num_faces: int) -> Tensor:
    """Pixels each face covers: Raster (B x N x N) -> B x F int64 (0 = face not visible)."""
    B = raster.face_index.shape[0]
    idx = raster.face_index + 1 + torch.arange(B, device=raster.face_index.device).view(B, 1, 1) * (
        num_faces + 1)
    counts = torch.bincount(idx.reshape(-1), minlength=B * (num_faces + 1))
    return counts.view(B, num_faces + 1)[:, 1:]


def multi_source_flows(src_p2verts: Sequence[Tensor], src_rasters: Sequence[Raster], tgt: Raster,
                       rule: str = "coverage") -> MultiSourceFlows:
    """Flows from S sources to a target, each target pixel served by one source that SEES it.

    A source may serve a target pixel only if the pixel's face is visible in that source's own
    raster.
    Among those, rule 'coverage' picks the source where the face covers the most pixels (the most
    frontal, least foreshortened view; ties to the earlier source); rule 'first' picks the earliest.
    Summing warp(feature_i, flows[i]) over sources fuses them (unchosen pixels warp to 0). Faces
    seen by no source (e.g. at grazing angles in all of them) are reported in `uncovered`; the
    caller may fill them from one source with `transformation_flow` (the single-source behaviour).
    src_p2verts: S tensors B x F x 3 x 2 (or batch 1); src_rasters: S Rasters (B or 1); tgt: B.
    """
    if rule not in ("coverage", "first"):
        raise UsageError(f"Unknown multi-source rule {rule!r}", hint="Use 'coverage' or 'first'.")
    S, Fn = len(src_p2verts), src_p2verts[0].shape[1]
    counts = torch.stack([face_pixel_counts(r, Fn) for r in src_rasters])          # S x B x F
    score = counts if rule == "coverage" else (counts > 0) * torch.arange(
        S, 0, -1, device=counts.device).view(S, 1, 1)
    choice = torch.where((counts > 0).any(0), score.argmax(0), torch.full_like(score[0], -1))
    fim = tgt.face_index
    choice = choice.expand(fim.shape[0], -1)                          # sources of batch 1 broadcast
    per_pixel = torch.gather(choice, 1, fim.clamp(min=0).reshape(fim.shape[0], -1)).view_as(fim)
    per_pixel = torch.where(fim < 0, torch.full_like(per_pixel, -1), per_pixel)
    flows, masks = [], []
    for i in range(S):
        chosen = (per_pixel == i).unsqueeze(-1)
        T = transformation_flow(src_p2verts[i], tgt)
        flows.append(torch.where(chosen, T, torch.full_like(T, NO_FLOW)))
        masks.append(chosen.permute(0, 3, 1, 2).to(T.dtype))
    uncovered = ((fim >= 0) & (per_pixel < 0)).unsqueeze(1).to(tgt.weights.dtype)
    return MultiSourceFlows(tuple(flows), tuple(masks), uncovered)
