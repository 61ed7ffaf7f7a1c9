"""Paired image metrics of the iPER self-imitation protocol (spec §8.3), in torch.

* SSIM as scikit-image's `structural_similarity(multichannel=True)` defaults compute it (the
  official evaluator's call): a 7 x 7 uniform window (no Gaussian), K1 = 0.01, K2 = 0.03, sample
  covariance (N / (N - 1), N = 49), the SSIM map averaged over the windows that lie fully inside
  the image (skimage crops the 3-pixel border), channels averaged. Images in [-1, 1] have
  data range 2 (skimage's float range, which the official call relies on).
* PSNR = 10 log10(range^2 / MSE) over all pixels and channels, range 2; identical images give
  +inf (skimage does the same, with a divide warning).
* LPIPS: only when a callable is given (`load_lpips` returns one when the `lpips` package and its
  weights are installed; nothing is downloaded here).

Math runs in float64. All functions take B x C x H x W tensors and return B values.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

DATA_RANGE = 2.0
WIN_SIZE = 7
K1, K2 = 0.01, 0.03

LpipsFn = Callable[[Tensor, Tensor], Tensor]  # B x 3 x H x W in [-1, 1] twice -> B distances


def _check(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two B x C x H x W tensors of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")


def ssim_map(x: Tensor, y: Tensor, data_range: float = DATA_RANGE,
             win_size: int = WIN_SIZE) -> Tensor:
    """Per-window SSIM, B x C x (H - w + 1) x (W - w + 1), float64 (uniform w x w windows)."""
    _check(x, y)
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images must be at least {win_size} x {win_size}")
    x, y = x.double(), y.double()
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    n = win_size * win_size
    cov_norm = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(x: Tensor, y: Tensor, data_range: float = DATA_RANGE, win_size: int = WIN_SIZE) -> Tensor:
    """Mean SSIM per image (channels averaged): B x C x H x W twice -> B float64."""
    return ssim_map(x, y, data_range, win_size).mean(dim=(1, 2, 3))


def psnr(x: Tensor, y: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """PSNR per image in dB: B x C x H x W twice -> B float64 (+inf where x == y)."""
    _check(x, y)
    mse = ((x.double() - y.double()) ** 2).mean(dim=(1, 2, 3))
    with torch.no_grad():
        return 10.0 * torch.log10(data_range ** 2 / mse)  # mse 0 -> inf


def quantize_saved(x: Tensor) -> Tensor:
    """What the official evaluator measures: predictions saved as uint8 ((x + 1) / 2 * 255,
    truncated) and read back, mapped to [-1, 1]. Values within 1e-4 below an integer count as
    that integer, so float round-off of an image that came from 8 bits does not shift it."""
    u8 = ((x.double().clamp(-1, 1) + 1.0) / 2.0 * 255.0 + 1e-4).floor().clamp(0, 255)
    return u8 / 255.0 * 2.0 - 1.0


def json_number(v: Optional[float]) -> float | str | None:
    """A metric for JSON: finite floats as they are, +-inf as the strings "inf" / "-inf", NaN and
    None as null (JSON has no infinities)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def load_lpips(net: str = "alex", device: torch.device | str = "cpu") -> Optional[LpipsFn]:
    """LPIPS distance (lower is better) from the `lpips` package, or None when the package or its
    backbone weights are not available locally (nothing is downloaded)."""
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        model = lpips.LPIPS(net=net, verbose=False, pretrained=True).to(device).eval()
    except Exception:  # weights not cached and no network: report LPIPS as not computed
        return None

    def fn(x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return model(x.float().to(device), y.float().to(device)).reshape(-1).double().cpu()

    return fn
