"""Faster CPU inference kernels for the generator, computing the same functions as the plain layers.

On a CPU the transfer stream is compute-bound (53 GMAC per 256 x 256 frame, 55% of it in the twelve
512-channel 3x3 convolutions of the res-blocks). In its fast mode (``LiquidWarpingGenerator.fast_cpu``)
the generator feeds its layers channels-last float32 CPU tensors under ``torch.no_grad()``; oneDNN's
channels-last convolutions are up to 3x faster there on the high-resolution layers, and the layers
below take over where PyTorch's own kernels are slow or do more work than needed:

* **Winograd F(4x4, 3x3)** for wide 3x3 stride-1 convolutions: 36 matrix products over 6 x 6 input
  tiles replace the 144 multiply-adds per 4 x 4 output tile and channel pair by 36 (Lavin & Gray,
  2016). Filters are transformed once per weight version; results differ from direct convolution
  by float32 rounding only (relative 1e-5, tested against a float64 reference).
* **Instance norm on channels-last maps** in two passes (statistics, then one fused scale-shift),
  where PyTorch's own kernel converts the layout back and forth.
* **One bilinear sampler for many maps**: corner rows and weights of a flow are computed once per
  resolution and applied to all the source maps of that resolution at once, as a weighted sum of
  four rows per output pixel (``grid_sample`` semantics: bilinear, zero padding,
  align_corners=True).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
CL = torch.channels_last

# Winograd F(4x4, 3x3) transforms: input B^T (6 x 6), filter G (6 x 3), output A^T (4 x 6).
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
_M, _A = 4, 6  # output tile, input tile
_CHUNK_TILES = 256  # tiles transformed together (4 images of a 32 x 32 map)
_NORM_ROWS = 2048   # pixels per block of the instance-norm variance pass


def fast_eligible(x: Tensor) -> bool:
    """Float32 CPU 4-d input, gradients off and no autocast: what these kernels are written for."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and not torch.is_grad_enabled() and not _cpu_autocast())


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def fast_path(x: Tensor) -> bool:
    """Whether ``x`` takes these kernels: :func:`fast_eligible` and laid out channels-last."""
    return fast_eligible(x) and x.is_contiguous(memory_format=CL)


# --------------------------------------------------------------------------------- Winograd conv

def winograd_eligible(weight: Tensor, stride, padding, dilation, groups: int) -> bool:
    """3x3, stride 1, 'same' padding, no dilation or groups, at least 256 channels in and out:
    narrower layers spend more in the (memory-bound) tile transforms than they save in the
    products (measured here: 256 -> 128 channels breaks even, 128 -> 64 runs twice as slow)."""
    return (tuple(weight.shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1
            and weight.shape[0] >= 256 and weight.shape[1] >= 256)


def winograd_filter(weight: Tensor) -> Tensor:
    """Co x Ci x 3 x 3 -> 36 x Ci x Co transformed filters G g G^T (float32: the entries of G are
    exact to 2^-24 relative, so the filters match a float64 transform to rounding)."""
    co, ci = weight.shape[:2]
    g = torch.tensor(_G, dtype=weight.dtype, device=weight.device)
    t = weight.detach().permute(2, 3, 1, 0).reshape(3, -1)           # k x (l, Ci, Co)
    t = (g @ t).view(_A, 3, ci * co)                                  # a x l x (Ci, Co)
    return torch.einsum("bl,aln->abn", g, t).reshape(_A * _A, ci, co)


def _input_transform(d: Sequence[Tensor], out: Sequence[Tensor]) -> None:
    """out[a] = sum_i B^T[a, i] d[i] for the six rows of B^T (Lavin's shared sub-expressions)."""
    t0 = torch.add(d[4], d[2], alpha=-4)
    t1 = torch.add(d[3], d[1], alpha=-4)
    t2 = torch.sub(d[4], d[2])
    t3 = torch.sub(d[3], d[1])
    torch.add(d[4], d[0], alpha=4, out=out[0]).add_(d[2], alpha=-5)
    torch.add(t0, t1, out=out[1])
    torch.sub(t0, t1, out=out[2])
    torch.add(t2, t3, alpha=2, out=out[3])
    torch.add(t2, t3, alpha=-2, out=out[4])
    torch.add(d[5], d[1], alpha=4, out=out[5]).add_(d[3], alpha=-5)


def _output_transform(m: Sequence[Tensor], out: Sequence[Tensor]) -> None:
    """out[i] = sum_a A^T[i, a] m[a] for the four rows of A^T."""
    s12, d12 = torch.add(m[1], m[2]), torch.sub(m[1], m[2])
    s34, d34 = torch.add(m[3], m[4]), torch.sub(m[3], m[4])
    torch.add(s12, s34, out=out[0]).add_(m[0])
    torch.add(d12, d34, alpha=2, out=out[1])
    torch.add(s12, s34, alpha=4, out=out[2])
    torch.add(d12, d34, alpha=8, out=out[3]).add_(m[5])


def winograd_conv3x3(x: Tensor, u: Tensor) -> Tensor:
    """3x3 stride-1 zero-padded convolution of channels-last ``x`` (B x Ci x H x W) with filters
    transformed by :func:`winograd_filter`; returns B x Co x H x W, channels-last.

    Tiles go through in groups of at most ``_CHUNK_TILES`` (whole images, or bands of tile rows of
    one image), so that the transformed tiles of a group stay in cache while the 36 products
    stream the filters."""
    b, _, h, w = x.shape
    th, tw = -(-h // _M), -(-w // _M)
    xh = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, _M * tw + 1 - w, 1, _M * th + 1 - h))
    out = x.new_empty(b, th, _M, tw, _M, u.shape[2])
    if th * tw <= _CHUNK_TILES:  # whole images per group
        step = _CHUNK_TILES // (th * tw)
        for b0 in range(0, b, step):
            _winograd_tiles(xh[b0:b0 + step], u, out[b0:b0 + step])
    else:  # bands of tile rows, one image at a time
        rows = max(1, _CHUNK_TILES // tw)
        for i in range(b):
            for t0 in range(0, th, rows):
                t1 = min(th, t0 + rows)
                _winograd_tiles(xh[i:i + 1, _M * t0:_M * t1 + 2], u, out[i:i + 1, t0:t1])
    out = out.view(b, _M * th, _M * tw, -1)[:, :h, :w, :]
    return out.permute(0, 3, 1, 2).contiguous(memory_format=CL)


def _winograd_tiles(xh: Tensor, u: Tensor, out: Tensor) -> None:
    """Padded NHWC images -> output tiles written into ``out`` (b x th x 4 x tw x 4 x Co)."""
    b, th, _, tw, _, co = out.shape
    c = xh.shape[3]
    rows = xh.new_empty(_A, b, th, xh.shape[2], c)           # B^T applied down each tile column
    _input_transform([xh[:, i:i + _M * th:_M] for i in range(_A)], list(rows))
    v = xh.new_empty(_A, _A, b, th, tw, c)                   # ... and along each tile row
    for a in range(_A):
        _input_transform([rows[a][:, :, j:j + _M * tw:_M] for j in range(_A)], list(v[a]))
    m = torch.bmm(v.view(_A * _A, -1, c), u).view(_A, _A, b, th, tw, co)
    cols = xh.new_empty(_M, _A, b, th, tw, co)               # A^T applied over the first index
    _output_transform(list(m), list(cols))
    for i in range(_M):
        _output_transform(list(cols[i]), [out[:, :, i, :, j, :] for j in range(_M)])


# ------------------------------------------------------------------------------- instance norm

def instance_norm_cl(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """InstanceNorm2d (biased variance, per sample and channel) of a channels-last map.

    Two-pass statistics (mean, then squared deviations summed over cache-sized row blocks), then
    one fused scale-and-shift."""
    b, c, h, w = x.shape
    v = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    mean = v.mean(dim=1, keepdim=True)
    m2 = torch.zeros_like(mean)
    for block in v.split(_NORM_ROWS, dim=1):
        m2 += (block - mean).square_().sum(dim=1, keepdim=True)
    scale = torch.rsqrt(m2 / (h * w) + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return torch.addcmul(shift, v, scale).view(b, h, w, c).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------ sampling

def bilinear_taps(grid: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Corner rows and weights of ``grid_sample`` (bilinear, zeros, align_corners=True).

    grid: B x h' x w' x 2 (x, y in [-1, 1]); size: (h, w) of the sampled maps.
    Returns index (B*h'*w' x 4, int64, rows of a flattened h x w map, clamped) and weight
    (B*h'*w' x 4, float32, zero for corners outside the map).
    """
    h, w = size
    g = grid.reshape(-1, 2).double()
    fx, fy = (g[:, 0] + 1) * (w - 1) / 2, (g[:, 1] + 1) * (h - 1) / 2
    x0, y0 = fx.floor(), fy.floor()
    ax, ay = fx - x0, fy - y0
    index, weight = [], []
    for dy, wy in ((0, 1 - ay), (1, ay)):
        for dx, wx in ((0, 1 - ax), (1, ax)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            index.append((yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long())
            weight.append(torch.where(inside, wx * wy, torch.zeros_like(wx)))
    return torch.stack(index, dim=1), torch.stack(weight, dim=1).float()


def flatten_maps(maps: Sequence[Tensor]) -> Tensor:
    """Batch-1 maps (1 x C_k x h x w, any layout) -> one (h*w) x sum(C_k) row matrix to sample."""
    return torch.cat([m[0].permute(1, 2, 0).reshape(-1, m.shape[1]) for m in maps], dim=1)


def sample_rows(flat: Tensor, taps: tuple[Tensor, Tensor], out_shape: tuple[int, int, int]) -> Tensor:
    """Bilinear samples of a :func:`flatten_maps` matrix at precomputed taps of a B-frame flow, as
    one weighted four-row sum per output pixel (``embedding_bag``: a single pass, no temporaries);
    out_shape = (B, h', w') -> B x sum(C_k) x h' x w' (a channels-last view)."""
    index, weight = taps
    b, ho, wo = out_shape
    rows = F.embedding_bag(index, flat, per_sample_weights=weight.to(flat.dtype), mode="sum")
    return rows.view(b, ho, wo, flat.shape[1]).permute(0, 3, 1, 2)
