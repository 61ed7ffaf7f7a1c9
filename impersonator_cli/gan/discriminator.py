"""PatchGAN discriminators (official ``PatchDiscriminator`` / ``GlobalLocalDiscriminator`` layouts).

Training only; inference never loads them. Convs are 4x4 with bias and padding 1, the norm is
InstanceNorm2d(affine=False) (no parameters), activations LeakyReLU(0.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class PatchDiscriminator(nn.Module):
    """B x input_nc x H x W -> B x 1 x h x w patch scores (unbounded; LSGAN targets +1/-1/0).

    n_layers stride-2 convs (the first without norm), one stride-1 conv, a stride-1 1-channel conv:
    256 input -> 1 x 14 x 14 with n_layers = 4 (H / 16 - 2 in general).
    """

    def __init__(self, input_nc: int = 6, ndf: int = 64, n_layers: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        c = ndf
        for n in range(1, n_layers + 1):
            c_out = ndf * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(c, c_out, 4, stride=stride, padding=1),
                       nn.InstanceNorm2d(c_out, affine=False), nn.LeakyReLU(0.2, inplace=True)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def crop_resize(x: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Cut box b = (x0, y0, x1, y1) (pixels, end-exclusive) from image b and resize it to ``size``
    bilinearly with align_corners=True. x: B x C x H x W, boxes: B x 4 -> B x C x size."""
    crops = [F.interpolate(x[b:b + 1, :, int(y0):int(y1), int(x0):int(x1)], size=size,
                           mode="bilinear", align_corners=True)
             for b, (x0, y0, x1, y1) in enumerate(boxes.tolist())]
    return torch.cat(crops, dim=0)


class GlobalLocalDiscriminator(nn.Module):
    """Global D on the (inpainted) background + mask (4 channels) and local D on the body crop
    of (image, condition) (6 channels); scores concatenated along the batch axis."""

    def __init__(self, global_nc: int = 4, local_nc: int = 6, ndf: int = 64, n_layers: int = 4):
        super().__init__()
        self.global_model = PatchDiscriminator(global_nc, ndf, n_layers)
        self.local_model = PatchDiscriminator(local_nc, ndf, n_layers)

    def forward(self, global_in: Tensor, local_in: Tensor) -> Tensor:
        """global_in B x 4 x H x W, local_in B' x 6 x H x W (already cropped, see crop_resize)
        -> (B + B') x 1 x h x w."""
        return torch.cat([self.global_model(global_in), self.local_model(local_in)], dim=0)
