"""The Liquid Warping GAN generator: background, source-identity and transfer streams with the
additive Liquid Warping Block (LWB).

State-dict layout equals the official ``ImpersonatorGenerator`` (prefixes ``bg_model.``,
``src_model.``, ``tsf_model.``; the attention head keeps the official key spelling
``attetion_reg``), so official checkpoints load with ``strict=True``.

Flows ``T`` are B x H x W x 2 sampling grids in normalised (x, y) image coordinates, y down, sampled
with bilinear ``grid_sample``, zero padding and ``align_corners=True``; -2 marks "no correspondence".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from impersonator_cli.gan import cpu_kernels as ck
from impersonator_cli.gan.blocks import Conv2d, ResidualBlock, conv_norm_relu, deconv_norm_relu, merged_heads
from impersonator_cli.render.flow import resize_flow

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------- warping (W)

def _sample(f: Tensor, grid: Tensor) -> Tensor:
    """grid_sample(f, grid), bilinear, zero padding, align_corners=True.

    f: B' x C x h x w with B' = B or 1 (a batch-1 source is broadcast over the frames, no copy);
    grid: B x h' x w' x 2 -> B x C x h' x w'. Sampling runs in float32 (exact grid coordinates even
    under bf16 autocast); the result has f's dtype.
    """
    dtype, f = f.dtype, f.float()
    if f.shape[0] == 1 and grid.shape[0] > 1:
        f = f.expand(grid.shape[0], -1, -1, -1)
    out = F.grid_sample(f, grid.float(), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.to(dtype)


def lwb_warp(f: Tensor, T: Tensor) -> Tensor:
    """W(f, T): warp features B' x C x h x w with the flow T (B x H x W x 2) resized to h x w."""
    return _sample(f, resize_flow(T, tuple(f.shape[-2:])))


def _warp_fused_rows(feats_list: Sequence["SourceFeatures"], flows_list: Sequence[Tensor]) -> list[Tensor]:
    """sum_k W(feats_k, T_k) for every fusion point, batch-1 sources, CPU sampler: one set of
    bilinear taps per resolution and flow serves all maps of that resolution."""
    total: list[Tensor] = []
    for feats, T in zip(feats_list, flows_list):
        warped: list[Tensor] = []
        for rows, chans, (h, w) in feats.fused_rows:
            taps = ck.bilinear_taps(resize_flow(T, (h, w)), (h, w))
            warped.extend(ck.sample_rows(rows, taps, (T.shape[0], h, w)).split(chans, dim=1))
        total = warped if not total else [a + b for a, b in zip(total, warped)]
    return total


# ------------------------------------------------------------------------------------- streams

class ResNetGenerator(nn.Module):
    """Background stream: encoder, res-blocks, decoder in one Sequential (keys ``model.<idx>``).

    B x c_dim x H x W -> B x 3 x H x W in (-1, 1); H, W divisible by 2**n_down.
    """

    def __init__(self, c_dim: int = 4, conv_dim: int = 64, repeat_num: int = 6, n_down: int = 3):
        super().__init__()
        layers = conv_norm_relu(c_dim, conv_dim, 7)
        c = conv_dim
        for _ in range(n_down):
            layers += conv_norm_relu(c, 2 * c, 3, stride=2)
            c *= 2
        layers += [ResidualBlock(c) for _ in range(repeat_num)]
        for _ in range(n_down):
            layers += deconv_norm_relu(c, c // 2)
            c //= 2
        layers += [nn.Conv2d(c, 3, 7, padding=3, bias=False), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class Synthesis(NamedTuple):
    """Heads of a U-Net stream: colour P (B x 3 x H x W, in (-1, 1)) and attention A
    (B x 1 x H x W, in (0, 1), 1 = take the background)."""

    color: Tensor
    attention: Tensor


class ResUnetGenerator(nn.Module):
    """Source-identity / transfer stream: 4 encoder levels (7x7 stem + n_down stride-2 convs),
    res-blocks, n_down decoder stages with skip convs over concat([skip, up]), two 7x7 heads."""

    def __init__(self, c_dim: int = 6, conv_dim: int = 64, repeat_num: int = 6, n_down: int = 3):
        super().__init__()
        chans = [conv_dim * 2 ** i for i in range(n_down + 1)]  # 64, 128, 256, 512
        self.encoders = nn.ModuleList([nn.Sequential(*conv_norm_relu(c_dim, chans[0], 7))])
        self.encoders.extend(nn.Sequential(*conv_norm_relu(chans[i], chans[i + 1], 3, stride=2))
                             for i in range(n_down))
        self.resnets = nn.ModuleList(ResidualBlock(chans[-1]) for _ in range(repeat_num))
        up = list(reversed(chans))  # 512, 256, 128, 64
        self.decoders = nn.ModuleList(nn.Sequential(*deconv_norm_relu(up[i], up[i + 1]))
                                      for i in range(n_down))
        self.skippers = nn.ModuleList(nn.Sequential(*conv_norm_relu(2 * up[i + 1], up[i + 1], 3))
                                      for i in range(n_down))
        self.img_reg = nn.Sequential(nn.Conv2d(conv_dim, 3, 7, padding=3, bias=False), nn.Tanh())
        self.attetion_reg = nn.Sequential(nn.Conv2d(conv_dim, 1, 7, padding=3, bias=False),
                                          nn.Sigmoid())

    def encode(self, x: Tensor) -> list[Tensor]:
        """B x c_dim x H x W -> n_down+1 maps: B x C x H x W, B x 2C x H/2 x W/2, ..."""
        outs = [self.encoders[0](x)]
        for enc in self.encoders[1:]:
            outs.append(enc(outs[-1]))
        return outs

    def decode(self, x: Tensor, encoder_outs: Sequence[Tensor]) -> Tensor:
        """Bottleneck B x 8C x H/8 x W/8 and encoder maps -> B x C x H x W features."""
        for i, (dec, skip) in enumerate(zip(self.decoders, self.skippers)):
            x = skip(torch.cat([encoder_outs[-2 - i], dec(x)], dim=1))
        return x

    def regress(self, x: Tensor) -> Synthesis:
        if ck.fast_path(x):
            color, attention = merged_heads(x, [self.img_reg[0], self.attetion_reg[0]])
            return Synthesis(torch.tanh(color).contiguous(), torch.sigmoid(attention).contiguous())
        return Synthesis(self.img_reg(x), self.attetion_reg(x))

    def forward(self, x: Tensor) -> Synthesis:
        """Plain stream without fusion: B x c_dim x H x W -> (P, A)."""
        encoder_outs = self.encode(x)
        y = encoder_outs[-1]
        for block in self.resnets:
            y = block(y)
        return self.regress(self.decode(y, encoder_outs))


# ----------------------------------------------------------------------------------- generator

@dataclass(frozen=True, eq=False)
class SourceFeatures:
    """Source-identity stream activations of one (or a batch of) source image(s).

    encoder: n_down+1 maps, B x C x H x W, B x 2C x H/2 x W/2, B x 4C x H/4 x W/4, B x 8C x H/8 x W/8.
    resnet:  repeat_num maps, each B x 8C x H/8 x W/8 (output of each res-block).
    The LWB fuses encoder[1:] and every resnet map; decoding the source itself needs all of them.
    """

    encoder: tuple[Tensor, ...]
    resnet: tuple[Tensor, ...]

    @property
    def fused(self) -> tuple[Tensor, ...]:
        """The maps warped into the transfer stream, in fusion order."""
        return tuple(self.encoder[1:]) + tuple(self.resnet)

    @property
    def batch_size(self) -> int:
        return self.encoder[0].shape[0]

    @cached_property
    def fused_rows(self) -> list[tuple[Tensor, list[int], tuple[int, int]]]:
        """Fused maps grouped by resolution (fusion order kept), each group flattened once for the
        CPU sampler: [(rows, channels per map, (h, w))]. Batch-1 features only."""
        groups: list[list[Tensor]] = []
        for f in self.fused:
            if groups and groups[-1][0].shape[-2:] == f.shape[-2:]:
                groups[-1].append(f)
            else:
                groups.append([f])
        return [(ck.flatten_maps(g), [m.shape[1] for m in g], tuple(g[0].shape[-2:])) for g in groups]


class GeneratorOutputs(NamedTuple):
    """Training forward: inpainted background and both streams' heads (all B x C x H x W)."""

    background: Tensor
    color_src: Tensor
    attention_src: Tensor
    color_tsf: Tensor
    attention_tsf: Tensor


class GeneratorOutputsFront(NamedTuple):
    """``infer_front`` result (all B x C x H x W)."""

    color_src: Tensor
    attention_src: Tensor
    color_tsf: Tensor
    attention_tsf: Tensor


def compose(color: Tensor, attention: Tensor, background: Tensor) -> Tensor:
    """Final image A * BG + (1 - A) * P. color, background: B x 3 x H x W; attention: B x 1 x H x W."""
    return attention * background + (1.0 - attention) * color


class LiquidWarpingGenerator(nn.Module):
    """Three-stream generator (official ``ImpersonatorGenerator`` layout).

    ``bg_stream=False`` builds only ``src_model``/``tsf_model`` (for inference with the separate
    DeepFill background); load official checkpoints into it after dropping ``bg_model.*`` keys.
    """

    #: Run CPU float32 inference (no gradients) channels-last through ``cpu_kernels`` (Winograd
    #: res-block convolutions, fused sampling); False keeps PyTorch's default kernels throughout.
    fast_cpu: bool = True

    def __init__(self, bg_dim: int = 4, src_dim: int = 6, tsf_dim: int = 6, conv_dim: int = 64,
                 repeat_num: int = 6, n_down: int = 3, bg_stream: bool = True):
        super().__init__()
        self.bg_model = ResNetGenerator(bg_dim, conv_dim, repeat_num, n_down) if bg_stream else None
        self.src_model = ResUnetGenerator(src_dim, conv_dim, repeat_num, n_down)
        self.tsf_model = ResUnetGenerator(tsf_dim, conv_dim, repeat_num, n_down)
        once_per_source = [m for m in (self.bg_model, self.src_model) if m is not None]
        for m in nn.ModuleList(once_per_source).modules():  # no kept Winograd filters there
            if isinstance(m, Conv2d):
                m.winograd = False

    def background(self, bg_in: Tensor) -> Tensor:
        """BG stream: B x 4 x H x W (masked image, mask) -> B x 3 x H x W in (-1, 1)."""
        if self.bg_model is None:
            raise RuntimeError("this generator was built with bg_stream=False")
        return self.bg_model(self.compute_layout(bg_in)).contiguous()

    def compute_layout(self, x: Tensor) -> Tensor:
        """Inputs go channels-last where the fast CPU kernels apply (see ``fast_cpu``)."""
        if self.fast_cpu and ck.fast_eligible(x):
            return x.contiguous(memory_format=ck.CL)
        return x

    def encode_source(self, src_in: Tensor) -> SourceFeatures:
        """SID stream encoder + res-blocks: B x 6 x H x W -> SourceFeatures (computed once)."""
        encoder = self.src_model.encode(self.compute_layout(src_in))
        resnet, x = [], encoder[-1]
        for block in self.src_model.resnets:
            x = block(x)
            resnet.append(x)
        return SourceFeatures(tuple(encoder), tuple(resnet))

    def decode_source(self, feats: SourceFeatures) -> Synthesis:
        """SID stream heads from cached features -> (P_src, A_src)."""
        return self.src_model.regress(self.src_model.decode(feats.resnet[-1], feats.encoder))

    def transfer(self, src_feats: SourceFeatures, tsf_in: Tensor, T: Tensor) -> Synthesis:
        """TSF stream with the LWB: tsf_in B x 6 x H x W, T B x H x W x 2 -> (P_tsf, A_tsf).

        src_feats may have batch B or 1 (one source broadcast over B frames).
        """
        return self.swap(tsf_in, [src_feats], [T])

    def swap(self, tsf_in: Tensor, feats_list: Sequence[SourceFeatures],
             flows_list: Sequence[Tensor]) -> Synthesis:
        """TSF stream adding sum_k W(feats_k, T_k) at every fusion point (any number of sources)."""
        if len(feats_list) != len(flows_list) or not feats_list:
            raise ValueError("swap needs one flow per source and at least one source")
        tsf_in = self.compute_layout(tsf_in)
        if ck.fast_path(tsf_in) and all(f.batch_size == 1 for f in feats_list):
            warped = _warp_fused_rows(feats_list, flows_list)
            return self._tsf_stream(tsf_in, lambda x, point: x + warped[point])

        n_enc = len(self.tsf_model.encoders) - 1
        sources = [f.fused for f in feats_list]
        sizes = [tuple(f.shape[-2:]) for f in sources[0][:n_enc]]
        flows = [[resize_flow(T, s) for s in sizes] for T in flows_list]

        def fuse(x: Tensor, point: int) -> Tensor:
            level = min(point, n_enc - 1)
            for feats, grids in zip(sources, flows):
                x = x + _sample(feats[point], grids[level])
            return x
        return self._tsf_stream(tsf_in, fuse)

    def _tsf_stream(self, tsf_in: Tensor, fuse) -> Synthesis:
        """The transfer stream with ``fuse(x, point)`` applied at the 3 + repeat_num fusion points."""
        tsf = self.tsf_model
        n_enc = len(tsf.encoders) - 1
        encoder_outs = [tsf.encoders[0](tsf_in)]
        for i in range(n_enc):
            encoder_outs.append(fuse(tsf.encoders[i + 1](encoder_outs[-1]), i))
        x = encoder_outs[-1]
        for j, block in enumerate(tsf.resnets):
            x = fuse(block(x), n_enc + j)
        return tsf.regress(tsf.decode(x, encoder_outs))

    def infer_front(self, src_in: Tensor, tsf_in: Tensor, T: Tensor) -> GeneratorOutputsFront:
        """Both U-Net streams (used by post-tuning): -> (P_src, A_src, P_tsf, A_tsf)."""
        feats = self.encode_source(src_in)
        src = self.decode_source(feats)
        tsf_out = self.transfer(feats, tsf_in, T)
        return GeneratorOutputsFront(src.color, src.attention, tsf_out.color, tsf_out.attention)

    def forward(self, bg_in: Tensor, src_in: Tensor, tsf_in: Tensor, T: Tensor) -> GeneratorOutputs:
        """Training pass: -> (BG, P_src, A_src, P_tsf, A_tsf)."""
        return GeneratorOutputs(self.background(bg_in), *self.infer_front(src_in, tsf_in, T))

