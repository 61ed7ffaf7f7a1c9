"""DeepFillv2-style background inpaintor (official ``InpaintSANet(c_dim=4)`` layout).

Gated convolutions (feature branch x gate branch, then BatchNorm) in a coarse network and a refine
network with self-attention at 1/4 resolution. Keys and shapes equal the official checkpoint
``deepfillv2/net_epoch_50_id_G.pth`` so it loads with ``strict=True``.
Images are B x 3 x H x W in [-1, 1]; masks B x 1 x H x W with 1 = hole (the body to remove);
H and W must be divisible by 4.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class GatedConv(nn.Module):
    """BN(act(conv(x)) * sigmoid(mask_conv(x))); act = LeakyReLU(0.2), or none for output layers.

    Keys ``conv2d``, ``mask_conv2d``, ``batch_norm2d``. Padding is 'same'-style: 2 for 5x5, 1 for
    3x3 and for 4x4 stride 2 (halves H and W), ``dilation`` for dilated 3x3.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 activation: bool = True):
        super().__init__()
        padding = dilation * (kernel - 1) // 2 if stride == 1 else (kernel - stride + 1) // 2
        args = dict(stride=stride, padding=padding, dilation=dilation)
        self.conv2d = nn.Conv2d(c_in, c_out, kernel, **args)
        self.mask_conv2d = nn.Conv2d(c_in, c_out, kernel, **args)
        self.batch_norm2d = nn.BatchNorm2d(c_out)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        feature = self.conv2d(x)
        if self.activation:
            feature = F.leaky_relu(feature, 0.2)
        return self.batch_norm2d(feature * torch.sigmoid(self.mask_conv2d(x)))


class GatedDeconv(nn.Module):
    """Nearest x2 upsampling followed by a 3x3 gated conv (keys ``conv2d.<gated conv keys>``)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv2d = GatedConv(c_in, c_out, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _dilated(c: int) -> list[nn.Module]:
    return [GatedConv(c, c, 3, dilation=d) for d in (2, 4, 8, 16)]


def _upsample_tail(c: int) -> list[nn.Module]:
    """4C at 1/4 -> 3 channels at full resolution (C = cnum)."""
    return [GatedDeconv(4 * c, 2 * c), GatedConv(2 * c, 2 * c), GatedDeconv(2 * c, c),
            GatedConv(c, c // 2), GatedConv(c // 2, 3, activation=False)]


def attention_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Slow, obvious self-attention: out[:, :, i] = sum_j softmax_j(q_i . k_j) v[:, :, j].

    q, k: B x Cq x N; v: B x C x N -> B x C x N (materialises the B x N x N attention matrix).
    """
    attn = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # B x N(query) x N(key)
    return torch.bmm(v, attn.transpose(1, 2))


def attention_fast(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Same as :func:`attention_reference` via fused (memory-efficient) attention, no scaling."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         scale=1.0)
    return out.transpose(1, 2)


class SelfAttention(nn.Module):
    """x + gamma * attention(x); query/key 1x1 convs C -> C/8, value C -> C, scalar gamma (init 0).

    B x C x H x W -> B x C x H x W. Attention over the H*W positions: O((HW)^2) time; the fused
    path does not store the HW x HW matrix (the reference path would: 4096^2 floats = 64 MiB per
    image at 256 input, 1 GiB at 512).
    """

    def __init__(self, channels: int, fast: bool = True):
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.fast = fast

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = (conv(x).flatten(2) for conv in (self.query_conv, self.key_conv, self.value_conv))
        out = (attention_fast if self.fast else attention_reference)(q, k, v)
        return self.gamma * out.view(b, c, h, w) + x


class Inpainted(NamedTuple):
    """Refined output (used as the background, un-composited) and the coarse stage, both
    B x 3 x H x W clamped to [-1, 1]."""

    refined: Tensor
    coarse: Tensor


class InpaintSANet(nn.Module):
    """Coarse gated-conv net (17 blocks) + refine net (11 blocks, self-attention, 7 blocks)."""

    def __init__(self, c_dim: int = 4, cnum: int = 32):
        super().__init__()
        c = cnum
        self.coarse_net = nn.Sequential(
            GatedConv(c_dim, c, 5), GatedConv(c, 2 * c, 4, stride=2), GatedConv(2 * c, 2 * c),
            GatedConv(2 * c, 4 * c, 4, stride=2), GatedConv(4 * c, 4 * c), GatedConv(4 * c, 4 * c),
            *_dilated(4 * c), GatedConv(4 * c, 4 * c), GatedConv(4 * c, 4 * c),
            *_upsample_tail(c))
        self.refine_conv_net = nn.Sequential(
            GatedConv(c_dim, c, 5), GatedConv(c, c, 4, stride=2), GatedConv(c, 2 * c),
            GatedConv(2 * c, 2 * c, 4, stride=2), GatedConv(2 * c, 4 * c),
            GatedConv(4 * c, 4 * c), GatedConv(4 * c, 4 * c), *_dilated(4 * c))
        self.refine_attn = SelfAttention(4 * c)
        self.refine_upsample_net = nn.Sequential(
            GatedConv(4 * c, 4 * c), GatedConv(4 * c, 4 * c), *_upsample_tail(c))

    def forward(self, img: Tensor, mask: Tensor) -> Inpainted:
        """img B x 3 x H x W in [-1, 1], mask B x 1 x H x W (1 = hole) -> Inpainted."""
        keep = img * (1.0 - mask)
        coarse = self.coarse_net(torch.cat([keep + mask, mask], dim=1)).clamp(-1.0, 1.0)
        x = self.refine_conv_net(torch.cat([keep + coarse * mask, mask], dim=1))
        x = self.refine_upsample_net(self.refine_attn(x))
        return Inpainted(x.clamp(-1.0, 1.0), coarse)
