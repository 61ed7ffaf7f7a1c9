"""Turning warped sources into frames: the LWB generator, or the warp-only baseline (no GAN weights).

Both share one interface so the jobs (imitate, swap, novel view) never branch on the generator.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from impersonator_cli.devices import Runtime
from impersonator_cli.gan.generator import LiquidWarpingGenerator, compose
from impersonator_cli.render.rasterize import Raster


@dataclass(frozen=True)
class Frames:
    """image: B x 3 x N x N in [-1, 1]; attention: B x 1 x N x N (1 = background)."""

    image: Tensor
    attention: Tensor


class WarpOnly:
    """The paper's texture-warping baseline: the warped source over the background; needs no weights."""

    name = "none"

    def encode(self, image: Tensor, cond: Tensor, ft_mask: Tensor) -> None:
        return None

    def render(self, feats: Sequence[object], warped: Tensor, cond: Tensor, flows: Sequence[Tensor],
               background: Tensor) -> Frames:
        body = 1.0 - cond[:, 2:3]
        return Frames(image=body * warped + (1 - body) * background, attention=1 - body)


class LWBSynthesizer:
    """The Liquid Warping GAN: source features encoded once, then the transfer stream per batch."""

    name = "lwb"

    def __init__(self, generator: LiquidWarpingGenerator, runtime: Runtime) -> None:
        self.generator = generator
        self.runtime = runtime

    def _autocast(self):
        if self.runtime.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.runtime.device.type, dtype=self.runtime.dtype)

    @torch.no_grad()
    def encode(self, image: Tensor, cond: Tensor, ft_mask: Tensor):
        with self._autocast():
            return self.generator.encode_source(torch.cat([image * ft_mask, cond], dim=1))

    @torch.no_grad()
    def render(self, feats: Sequence[object], warped: Tensor, cond: Tensor, flows: Sequence[Tensor],
               background: Tensor) -> Frames:
        with self._autocast():
            synthesis = self.generator.swap(torch.cat([warped, cond], dim=1), list(feats), list(flows))
        color, attention = synthesis.color.float(), synthesis.attention.float()
        return Frames(image=compose(color, attention, background.float()), attention=attention)


def front_warp(frames: Frames, warped: Tensor, front: Tensor) -> Tensor:
    """Official --front_warp (spec §3.5): copy the warped source onto the visible front face."""
    return (1 - front) * frames.image + warped * front * (1 - frames.attention)


def is_body(raster: Raster) -> Tensor:
    """B x 1 x N x N float foreground of a raster."""
    return raster.foreground.unsqueeze(1).float()
