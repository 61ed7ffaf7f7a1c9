"""Backgrounds behind the synthesized person: inpainted (DeepFillv2, the official default), the source
photo itself, or a solid colour. Without DeepFill weights, inpainting falls back to OpenCV's Telea
method (a classical fill, clearly weaker) and says so."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from impersonator_cli.errors import UsageError

_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


@dataclass(frozen=True)
class BackgroundSpec:
    """mode: 'inpaint' | 'source' | 'color'; color: RGB 0..255 for mode 'color'."""

    mode: str = "inpaint"
    color: tuple[int, int, int] = (0, 0, 0)


def parse_background(text: str) -> BackgroundSpec:
    """'inpaint', 'source', a colour name (black/white/gray/green) or '#RRGGBB'."""
    text = (text or "inpaint").strip().lower()
    if text in ("inpaint", "source"):
        return BackgroundSpec(mode=text)
    named = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128), "grey": (128, 128, 128),
             "green": (0, 177, 64)}
    if text in named:
        return BackgroundSpec(mode="color", color=named[text])
    match = _HEX.match(text)
    if match:
        value = match.group(1)
        return BackgroundSpec(mode="color", color=tuple(int(value[i:i + 2], 16) for i in (0, 2, 4)))
    raise UsageError(f"Unknown background '{text}'",
                     hint="Use inpaint, source, black, white, gray, green or a colour like #33aa77.")


def to_uint8_frames(images: Tensor) -> list:
    """B x 3 x H x W in [-1, 1] -> list of H x W x 3 uint8 numpy frames (rounded)."""
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(arr.permute(0, 2, 3, 1).cpu().numpy())


def to_uint8(image: Tensor) -> np.ndarray:
    """[-1, 1] -> uint8 H x W x 3 numpy (rounded), for one image 1 x 3 x H x W."""
    return to_uint8_frames(image[:1])[0]


def from_uint8(rgb: np.ndarray, device, dtype=torch.float32) -> Tensor:
    """uint8 H x W x 3 -> 1 x 3 x H x W in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1).unsqueeze(0)
    return t.to(dtype) / 127.5 - 1


def telea_inpaint(image: Tensor, hole: Tensor) -> Tensor:
    """Classical fill of `hole` (1 x 1 x H x W, 1 = fill) with OpenCV's Telea method."""
    from impersonator_cli.io.images import _cv2

    cv2 = _cv2()
    rgb = to_uint8(image)
    mask = (hole[0, 0] > 0.5).to(torch.uint8).cpu().numpy() * 255
    filled = cv2.inpaint(rgb, mask, 5, cv2.INPAINT_TELEA)
    return from_uint8(filled, image.device, image.dtype)


def make_background(spec: BackgroundSpec, image: Tensor, body_mask: Tensor, inpaintor=None) -> tuple[Tensor, str]:
    """The background for one source.  image: 1 x 3 x N x N in [-1, 1], body_mask: 1 x 1 x N x N.

    Returns (background 1 x 3 x N x N, how it was made) — the note is reported to the user.
    """
    if spec.mode == "source":
        return image, "source photo"
    if spec.mode == "color":
        rgb = torch.tensor(spec.color, dtype=image.dtype, device=image.device).view(1, 3, 1, 1) / 127.5 - 1
        return rgb.expand_as(image).clone(), "solid colour"
    if inpaintor is not None:
        with torch.no_grad():
            out = inpaintor(image.float(), body_mask.float())
        return out.refined.to(image.dtype), "DeepFillv2 inpainting"
    return telea_inpaint(image, body_mask), "OpenCV Telea inpainting (DeepFillv2 weights not found)"
