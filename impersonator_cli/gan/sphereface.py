"""SphereFace-20a and the face identity loss (spec §4.9).

Layer structure, read off the 62 manifest entries of ``face_sphere20a`` (names and shapes):

* every ``convS_k`` is a 3x3 convolution with bias followed by ``reluS_k``, a PReLU with one slope
  per channel (``reluS_k.weight`` has C entries);
* ``convS_1`` opens stage S and changes the width (3->64, 64->128, 128->256, 256->512, shapes
  ``[C_out, C_in, 3, 3]``); it must halve the resolution, since ``fc5`` reads 512 x 7 x 6 = 21504
  values from a 112 x 96 input (112 x 96 -> 56 x 48 -> 28 x 24 -> 14 x 12 -> 7 x 6): stride 2,
  padding 1;
* the remaining convs of a stage keep the width (stride 1, padding 1) and come in pairs, each pair a
  residual unit ``x + prelu(conv(prelu(conv(x))))``: stage 1 has 1 unit (1_2, 1_3), stage 2 has 2
  (2_2..2_5), stage 3 has 4 (3_2..3_9), stage 4 has 1 (4_2, 4_3) -- 1 + 2x(1+2+4+1) = 20 layers;
* ``fc5`` maps the flattened (C, H, W order) 512 x 7 x 6 map to the 512-d embedding. The ``fc6``
  classifier of the file is not part of the loss network (dropped on load).

``forward`` returns the output of each of the 4 stages and the fc5 embedding; the face loss sums the
L1 distances of all 5 with equal weights. Inputs: B x 3 x 112 x 96 in [-1, 1], no extra scaling.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

FACE_SIZE = (112, 96)                 # H x W of the network input
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_UNITS = (1, 2, 4, 1)            # residual units per stage
HEAD_JOINTS = slice(12, 19)           # COCO-plus joints 12..18 (head/neck) select the head box


class Sphere20a(nn.Module):
    """SphereFace-20a feature network (official state-dict names: ``convS_k``, ``reluS_k``, ``fc5``).

    ``widths`` may be reduced for tests; the official network is the default.
    forward: B x 3 x 112 x 96 -> [B x w1 x 56 x 48, B x w2 x 28 x 24, B x w3 x 14 x 12,
    B x w4 x 7 x 6, B x 512].
    """

    def __init__(self, widths: Sequence[int] = STAGE_WIDTHS, units: Sequence[int] = STAGE_UNITS,
                 embedding: int = 512, input_size: tuple[int, int] = FACE_SIZE):
        super().__init__()
        self.stages: list[list[str]] = []
        c_in = 3
        for s, (width, n_units) in enumerate(zip(widths, units), start=1):
            names = [f"{s}_{k}" for k in range(1, 2 + 2 * n_units)]
            for k, name in enumerate(names):
                stride, cin = (2, c_in) if k == 0 else (1, width)
                setattr(self, f"conv{name}", nn.Conv2d(cin, width, 3, stride, 1))
                setattr(self, f"relu{name}", nn.PReLU(width))
            self.stages.append(names)
            c_in = width
        h, w = input_size
        for _ in widths:
            h, w = (h + 1) // 2, (w + 1) // 2
        self.fc5 = nn.Linear(c_in * h * w, embedding)

    def _layer(self, name: str, x: Tensor) -> Tensor:
        return getattr(self, f"relu{name}")(getattr(self, f"conv{name}")(x))

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for names in self.stages:
            x = self._layer(names[0], x)
            for a, b in zip(names[1::2], names[2::2]):
                x = x + self._layer(b, self._layer(a, x))
            outs.append(x)
        outs.append(self.fc5(x.flatten(1)))
        return outs


# ------------------------------------------------------------------------------ head crops


def head_boxes(j2d: Tensor, size: int) -> Tensor:
    """Head rectangle from COCO-plus joints (official rule, spec §4.9).

    j2d: B x 19 x 2 normalised (x, y) in [-1, 1]  ->  B x 4 int64 pixel box (x0, y0, x1, y1), the
    crop being ``img[..., y0:y1, x0:x1]``. Over joints 12..18 mapped to [0, 1]:
    x in [min - 0.05, max + 0.05], y in [min - 0.05, max], each clipped to [0, 1], times `size`,
    truncated to integers.
    """
    p = (j2d[:, HEAD_JOINTS].detach().double() + 1.0) / 2.0
    lo, hi = p.min(dim=1).values, p.max(dim=1).values          # B x 2
    x0, x1 = lo[:, 0] - 0.05, hi[:, 0] + 0.05
    y0, y1 = lo[:, 1] - 0.05, hi[:, 1]
    box = torch.stack([x0, y0, x1, y1], dim=1).clamp(0.0, 1.0) * size
    return box.long()


def crop_heads(images: Tensor, boxes: Tensor, out_size: tuple[int, int] = FACE_SIZE) -> Tensor:
    """Cut each box and resize it to 112 x 96 (bilinear, align_corners=True).

    images: B x 3 x N x N, boxes: B x 4 (x0, y0, x1, y1) -> B x 3 x 112 x 96. A box with no area
    (all head joints outside the frame) is widened to one pixel inside the image, where the official
    code would fail.
    """
    n_h, n_w = images.shape[-2:]
    crops = []
    for img, (x0, y0, x1, y1) in zip(images, boxes.tolist()):
        x0, y0 = min(x0, n_w - 1), min(y0, n_h - 1)
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        crop = img[None, :, y0:y1, x0:x1]
        crops.append(F.interpolate(crop, size=out_size, mode="bilinear", align_corners=True))
    return torch.cat(crops, dim=0)


class FaceLoss(nn.Module):
    """Identity loss: sum over the 5 SphereFace outputs of mean |f(crop(x)) - f(crop(y))|.

    x, y: B x 3 x N x N in [-1, 1]; j2d_boxes: B x 19 x 2 joints (the same head box is cut from both
    images) or B x 4 pixel boxes from `head_boxes`. -> scalar. The network is frozen; gradients flow
    to whichever image requires them.
    """

    def __init__(self, net: Sphere20a):
        super().__init__()
        self.net = net
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> "FaceLoss":
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor, j2d_boxes: Tensor) -> Tensor:
        boxes = j2d_boxes if j2d_boxes.dim() == 2 else head_boxes(j2d_boxes, x.shape[-1])
        fx = self.net(crop_heads(x, boxes))
        fy = self.net(crop_heads(y, boxes))
        return sum(F.l1_loss(a, b) for a, b in zip(fx, fy))
