"""Layers shared by the stage-3 networks, and the training-time weight initialisation.

The generator's layers are bias-free convolutions followed by InstanceNorm2d(affine=True) and ReLU;
their positions inside ``nn.Sequential`` containers fix the official state-dict indices
(``<conv>.0.weight``, ``<norm>.1.weight`` / ``.bias``), so the helpers below return plain lists that
callers wrap in ``nn.Sequential`` in a fixed order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from impersonator_cli.gan import cpu_kernels as ck


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) that runs wide 3x3 layers through the
    Winograd kernel when given a channels-last float32 CPU input without gradients."""

    #: Whether this layer may use Winograd (its transformed filters are kept: 4x the weight's
    #: memory, worth it for layers that run every frame, not for run-once ones).
    winograd: bool = True
    _winograd: tuple[tuple[int, int], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.winograd and self.bias is None and ck.fast_path(x) and ck.winograd_eligible(
                self.weight, self.stride, self.padding, self.dilation, self.groups):
            return ck.winograd_conv3x3(x, self._filters())
        return super().forward(x)

    def _filters(self) -> torch.Tensor:
        key = (self.weight._version, self.weight.data_ptr())
        if self._winograd is None or self._winograd[0] != key:
            self._winograd = (key, ck.winograd_filter(self.weight))
        return self._winograd[1]


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (same state-dict keys) with a channels-last CPU inference path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if ck.fast_path(x) and not self.track_running_stats:
            return ck.instance_norm_cl(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def merged_heads(x: torch.Tensor, convs: list[nn.Conv2d]) -> list[torch.Tensor]:
    """Several same-shaped bias-free convs of one input as a single conv (split afterwards)."""
    conv = convs[0]
    weight = torch.cat([c.weight for c in convs])
    y = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return list(y.split([c.out_channels for c in convs], dim=1))


def conv_norm_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Bias-free ``kernel x kernel`` conv ('same' padding for odd kernels) -> IN(affine) -> ReLU."""
    return [
        Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        InstanceNorm2d(c_out, affine=True),
        nn.ReLU(inplace=True),
    ]


def deconv_norm_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """Bias-free 3x3 stride-2 transposed conv (doubles H and W exactly) -> IN(affine) -> ReLU."""
    return [
        nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False),
        InstanceNorm2d(c_out, affine=True),
        nn.ReLU(inplace=True),
    ]


class ResidualBlock(nn.Module):
    """x + main(x), main = conv3x3 -> IN -> ReLU -> conv3x3 -> IN (keys ``main.0/1/3/4``).

    B x C x H x W -> B x C x H x W; no activation after the sum.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.main = nn.Sequential(
            Conv2d(channels, channels, 3, padding=1, bias=False),
            InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            Conv2d(channels, channels, 3, padding=1, bias=False),
            InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Training initialisation: conv weights ~ N(0, std), conv biases 0, BatchNorm weights ~ N(1, std)
    and biases 0. Other layers keep PyTorch's defaults. Returns ``module`` (modified in place)."""
    for m in module.modules():
        if isinstance(m, _CONVS):
            m.weight.normal_(0.0, std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, _BATCH_NORMS) and m.affine:
            m.weight.normal_(1.0, std)
            m.bias.zero_()
    return module
