"""Layers shared by the stage-3 networks, and the training-time weight initialisation.

The generator's layers are bias-free convolutions followed by InstanceNorm2d(affine=True) and ReLU;
their positions inside ``nn.Sequential`` containers fix the official state-dict indices
(``<conv>.0.weight``, ``<norm>.1.weight`` / ``.bias``), so the helpers below return plain lists that
callers wrap in ``nn.Sequential`` in a fixed order.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_norm_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Bias-free ``kernel x kernel`` conv ('same' padding for odd kernels) -> IN(affine) -> ReLU."""
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.ReLU(inplace=True),
    ]


def deconv_norm_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """Bias-free 3x3 stride-2 transposed conv (doubles H and W exactly) -> IN(affine) -> ReLU."""
    return [
        nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.ReLU(inplace=True),
    ]


class ResidualBlock(nn.Module):
    """x + main(x), main = conv3x3 -> IN -> ReLU -> conv3x3 -> IN (keys ``main.0/1/3/4``).

    B x C x H x W -> B x C x H x W; no activation after the sum.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(channels, affine=True),
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
