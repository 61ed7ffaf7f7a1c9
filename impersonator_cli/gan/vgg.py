"""VGG-19 feature extractor and the perceptual loss of training (spec §4.9).

The module list has torchvision's ``vgg19().features`` layout (``features.<idx>.weight/bias``,
conv/ReLU/max-pool at the same indices), so the ImageNet file ``vgg19-dcbb9e9d.pth`` or its
converted safetensors loads with ``strict=True`` once the ``classifier.*`` keys are dropped.

Features are taken after the ReLU of conv1_1, conv2_1, conv3_1, conv4_1 and conv5_1, i.e. the
slices ``features[0:2]``, ``[2:7]``, ``[7:12]``, ``[12:21]``, ``[21:30]``; layers 30..36 exist only so
the file loads strictly and are never run. Inputs are images in [-1, 1] fed as they are: no ImageNet
mean/std normalisation (as the official loss does).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

# Conv output widths of VGG-19 ("E"); "M" = 2x2 max-pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M")
SLICE_ENDS = (2, 7, 12, 21, 30)  # after ReLU of conv1_1, conv2_1, conv3_1, conv4_1, conv5_1
PERCEPTUAL_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


def vgg19_layers(cfg: Sequence = VGG19_CFG) -> list[nn.Module]:
    """torchvision's layer list: Conv3x3(p1)+ReLU per width, MaxPool(2, 2) per "M"."""
    layers: list[nn.Module] = []
    c = 3
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c = int(item)
    return layers


class VGG19Features(nn.Module):
    """Frozen VGG-19 ``features`` (torchvision key layout).

    forward: B x 3 x H x W in [-1, 1] -> 5 maps: B x 64 x H x W, B x 128 x H/2 x W/2,
    B x 256 x H/4 x W/4, B x 512 x H/8 x W/8, B x 512 x H/16 x W/16.
    """

    def __init__(self, cfg: Sequence = VGG19_CFG, slice_ends: Sequence[int] = SLICE_ENDS):
        super().__init__()
        self.features = nn.Sequential(*vgg19_layers(cfg))
        self.slice_ends = tuple(slice_ends)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        """Always eval (a loss network); kept frozen under a trainer's ``.train()``."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs, start = [], 0
        for end in self.slice_ends:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs


class PerceptualLoss(nn.Module):
    """sum_i w_i * mean|f_i(x) - f_i(y)| over the 5 VGG maps, w = (1/32, 1/16, 1/8, 1/4, 1).

    x, y: B x 3 x H x W in [-1, 1] -> scalar. Gradients flow to whichever input requires them.
    """

    def __init__(self, vgg: VGG19Features, weights: Sequence[float] = PERCEPTUAL_WEIGHTS):
        super().__init__()
        self.vgg = vgg
        self.weights = tuple(float(w) for w in weights)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx, fy = self.vgg(x), self.vgg(y)
        return sum(w * F.l1_loss(a, b) for w, a, b in zip(self.weights, fx, fy))


def features_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``features.*`` entries of a torchvision VGG-19 state dict (classifier dropped)."""
    return {k: v for k, v in state_dict.items() if k.startswith("features.")}
