"""Temporal smoothing of a driver's motion (HMR runs per frame, so its poses jitter).

The official release smooths nothing (every frame is independent); `sigma = 0` keeps that
behaviour exactly. With `sigma > 0` (in frames) a symmetric Gaussian filter is applied:

* poses are filtered as ROTATIONS: per joint, axis-angle -> unit quaternion, signs made continuous
  in time (q and -q are the same rotation), Gaussian-weighted sum over neighbouring frames,
  renormalised (the weighted chordal mean of the neighbours), back to axis-angle. Averaging the
  axis-angle vectors themselves would be wrong near 180 degrees, where HMR's global rotation lives
  (≈ π about x): (π-ε)·x and -(π-ε)·x are nearly the same rotation but average to the identity.
* cameras and shapes are filtered linearly with the same kernel.

Why a Gaussian and not a One-Euro filter: the driver motion is known in advance (a video file or a
saved motion file), so a zero-lag symmetric filter is possible; the One-Euro filter is causal and
trades jitter against lag, which shows as the imitated body trailing the driver. A Gaussian has one
intuitive knob (σ frames) and, being symmetric with normalised weights, does not shift a motion's
mean. Sequence ends use mirror (half-sample symmetric) padding, so the ends are averaged with real
nearby frames instead of being pulled towards zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from impersonator_cli.errors import UsageError

TRUNCATE = 4.0  # kernel radius = ceil(TRUNCATE * sigma) frames
_SMALL = 1e-6


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised Gaussian weights, (2r+1,) float64 with r = ceil(4 sigma)."""
    radius = max(1, math.ceil(TRUNCATE * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def mirror_indices(length: int, radius: int) -> torch.Tensor:
    """Frame indices for positions -radius .. length-1+radius with half-sample mirroring.

    Position -1 maps to 0, -2 to 1, length to length-1, ...; repeats if radius > length.
    """
    positions = torch.arange(-radius, length + radius)
    period = positions.remainder(2 * length)
    return torch.where(period >= length, 2 * length - 1 - period, period)


def gaussian_filter_time(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian filter along the first (time) axis with mirror padding: T x ... -> T x ..."""
    kernel = gaussian_kernel(sigma).to(x.device)
    radius = (kernel.numel() - 1) // 2
    padded = x[mirror_indices(x.shape[0], radius).to(x.device)]
    windows = padded.unfold(0, kernel.numel(), 1)  # T x ... x (2r+1)
    return (windows * kernel.to(x.dtype)).sum(-1)


def axis_angle_to_quaternion(aa: torch.Tensor) -> torch.Tensor:
    """Axis-angle ... x 3 -> unit quaternion ... x 4, (w, x, y, z)."""
    angle = aa.norm(dim=-1, keepdim=True)
    half = 0.5 * angle
    small = angle < _SMALL
    safe = torch.where(small, torch.ones_like(angle), angle)
    scale = torch.where(small, 0.5 - angle**2 / 48.0, torch.sin(half) / safe)
    return torch.cat([torch.cos(half), aa * scale], dim=-1)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternion ... x 4 (w, x, y, z) -> axis-angle ... x 3 with angle in [0, π]."""
    q = torch.where(q[..., :1] < 0, -q, q)
    w, v = q[..., :1], q[..., 1:]
    sin_half = v.norm(dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(sin_half, w)
    small = sin_half < _SMALL
    safe = torch.where(small, torch.ones_like(sin_half), sin_half)
    scale = torch.where(small, 2.0 / w.clamp_min(_SMALL), angle / safe)
    return v * scale


def make_continuous(q: torch.Tensor) -> torch.Tensor:
    """Flip quaternion signs so consecutive frames lie in the same hemisphere: T x ... x 4."""
    if q.shape[0] < 2:
        return q
    dots = (q[1:] * q[:-1]).sum(-1, keepdim=True)
    flips = torch.where(dots < 0, -torch.ones_like(dots), torch.ones_like(dots))
    signs = torch.cat([torch.ones_like(flips[:1]), torch.cumprod(flips, dim=0)], dim=0)
    return q * signs


def smooth_quaternions(q: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian chordal-mean smoothing of unit quaternions over time: T x J x 4 -> T x J x 4."""
    q = make_continuous(q)
    mixed = gaussian_filter_time(q, sigma)
    norm = mixed.norm(dim=-1, keepdim=True)
    # A window whose rotations cancel out (a full turn within a few frames) keeps the raw frame.
    return torch.where(norm > _SMALL, mixed / norm.clamp_min(_SMALL), q)


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise UsageError(f"The smoothing strength must be a number of frames >= 0, got {sigma}",
                         hint="Use 0 to turn smoothing off (the official behaviour), or e.g. 1.5.")
    return sigma


Restore = Callable[[torch.Tensor], "np.ndarray | torch.Tensor"]


def _as_float64(x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, Restore]:
    """x as a float64 tensor, plus a function mapping a result back to x's type/dtype/device."""
    if isinstance(x, torch.Tensor):
        return x.double(), lambda y: y.to(dtype=x.dtype)
    arr = np.asarray(x)
    return torch.from_numpy(arr.astype(np.float64)), lambda y: y.numpy().astype(arr.dtype)


def smooth_poses(poses: np.ndarray | torch.Tensor, sigma: float) -> np.ndarray | torch.Tensor:
    """Smooth SMPL poses over time on rotations: T x 72 (24 joints x axis-angle) -> T x 72.

    sigma: Gaussian standard deviation in frames; 0 returns the input values unchanged.
    The result uses angles in [0, π] (the same rotations as the input when nothing is smoothed).
    Works for any T x (3k); same type (numpy/torch) and dtype as the input.
    """
    sigma = _check_sigma(sigma)
    if sigma == 0 or poses.shape[0] < 2:
        return poses.clone() if isinstance(poses, torch.Tensor) else np.array(poses, copy=True)
    if poses.ndim != 2 or poses.shape[1] % 3:
        raise ValueError(f"poses must be T x (3*joints), got {tuple(poses.shape)}")
    x, back = _as_float64(poses)
    q = axis_angle_to_quaternion(x.reshape(x.shape[0], -1, 3))
    out = quaternion_to_axis_angle(smooth_quaternions(q, sigma))
    return back(out.reshape(x.shape))


def smooth_linear(values: np.ndarray | torch.Tensor, sigma: float) -> np.ndarray | torch.Tensor:
    """Gaussian smoothing over time of plain vectors: T x D -> T x D (sigma in frames, 0 = off)."""
    sigma = _check_sigma(sigma)
    if sigma == 0 or values.shape[0] < 2:
        return values.clone() if isinstance(values, torch.Tensor) else np.array(values, copy=True)
    x, back = _as_float64(values)
    return back(gaussian_filter_time(x, sigma))


def smooth_cameras(cams: np.ndarray | torch.Tensor, sigma: float) -> np.ndarray | torch.Tensor:
    """Weak-perspective cameras (s, tx, ty) over time: T x 3 -> T x 3, linear Gaussian."""
    return smooth_linear(cams, sigma)


def smooth_shapes(betas: np.ndarray | torch.Tensor, sigma: float) -> np.ndarray | torch.Tensor:
    """SMPL shapes β over time: T x 10 -> T x 10, linear Gaussian."""
    return smooth_linear(betas, sigma)


def smooth_thetas(thetas: np.ndarray | torch.Tensor, sigma: float) -> np.ndarray | torch.Tensor:
    """HMR θ over time: T x 85 (cam 3, pose 72, shape 10) -> T x 85; poses on rotations."""
    sigma = _check_sigma(sigma)
    if sigma == 0 or thetas.shape[0] < 2:
        return thetas.clone() if isinstance(thetas, torch.Tensor) else np.array(thetas, copy=True)
    parts = [smooth_cameras(thetas[:, 0:3], sigma), smooth_poses(thetas[:, 3:75], sigma),
             smooth_shapes(thetas[:, 75:85], sigma)]
    if isinstance(thetas, torch.Tensor):
        return torch.cat(parts, dim=1)
    return np.concatenate(parts, axis=1)
