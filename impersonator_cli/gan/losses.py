"""Losses of training and personalization (spec §4.9, §5.2, §6.3) and the loss-network loaders.

Plain functions take tensors and return scalars (means over every element):

* LSGAN with labels real = 1, fake = -1 and generator target 0 (spec §6.3);
* total variation of the attention map, mean |dA/dx| + mean |dA/dy|;
* the attention-mask loss, BCE (``--mask_bce``, the scripts' choice) or MSE.

The loss networks live in `vgg` (VGG-19 perceptual loss) and `sphereface` (face identity loss);
their public names are re-exported here, with one loader each taking a registry name or a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from impersonator_cli.weights import store
from impersonator_cli.weights.checkpoints import load_converted, load_official_state_dict
from impersonator_cli.gan.sphereface import FaceLoss, Sphere20a, crop_heads, head_boxes
from impersonator_cli.gan.vgg import PerceptualLoss, VGG19Features, features_state_dict

Tensor = torch.Tensor

__all__ = [
    "FaceLoss", "PerceptualLoss", "Sphere20a", "VGG19Features", "crop_heads", "head_boxes",
    "l1", "load_sphereface", "load_vgg19", "lsgan_d_loss", "lsgan_g_loss", "mask_loss", "tv_loss",
]

REAL_LABEL, FAKE_LABEL, GEN_TARGET = 1.0, -1.0, 0.0


def l1(x: Tensor, y: Tensor) -> Tensor:
    """mean |x - y| (the official L1 criterion)."""
    return F.l1_loss(x, y)


def lsgan_d_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Discriminator: mean((D(real) - 1)^2) + mean((D(fake) + 1)^2). Scores: any shape."""
    return ((real_scores - REAL_LABEL) ** 2).mean() + ((fake_scores - FAKE_LABEL) ** 2).mean()


def lsgan_g_loss(fake_scores: Tensor) -> Tensor:
    """Generator: mean((D(fake) - 0)^2)."""
    return ((fake_scores - GEN_TARGET) ** 2).mean()


def tv_loss(A: Tensor) -> Tensor:
    """A: B x C x H x W -> mean |A[..., :, 1:] - A[..., :, :-1]| + mean |A[..., 1:, :] - A[..., :-1, :]|."""
    dx = (A[..., :, 1:] - A[..., :, :-1]).abs().mean()
    dy = (A[..., 1:, :] - A[..., :-1, :]).abs().mean()
    return dx + dy


def mask_loss(A: Tensor, target: Tensor, bce: bool = True) -> Tensor:
    """Attention A in (0, 1) vs 0/1 target (1 = background), same shape: BCE or MSE, mean."""
    if bce:
        return F.binary_cross_entropy(A, target)
    return F.mse_loss(A, target)


# ----------------------------------------------------------------------------------- loaders


def _state_dict(name: str, section: str, path: str | os.PathLike | None,
                weights_dir: str | os.PathLike | None) -> dict[str, Tensor]:
    """An official ``.pth`` (checked against `section`) or a converted file / registry name."""
    if path is not None and Path(path).suffix in (".pth", ".pt"):
        return load_official_state_dict(path, section)
    return load_converted(store.resolve(name, weights_dir) if path is None else path)


def load_vgg19(path: str | os.PathLike | None = None,
               weights_dir: str | os.PathLike | None = None,
               device: str | torch.device = "cpu") -> VGG19Features:
    """Frozen VGG-19 features in eval mode from ``vgg19-dcbb9e9d.pth``, a converted file or (path
    None) the registry entry ``vgg19`` (WeightsError with how to get it when absent)."""
    sd = features_state_dict(_state_dict("vgg19", "vgg19", path, weights_dir))
    net = VGG19Features()
    net.load_state_dict(sd, strict=True)
    return net.to(device).eval()


def load_sphereface(path: str | os.PathLike | None = None,
                    weights_dir: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu") -> Sphere20a:
    """Frozen SphereFace-20a in eval mode from ``sphere20a_20171020.pth`` (``fc6.*`` dropped), a
    converted file or (path None) the registry entry ``sphereface``."""
    sd = _state_dict("sphereface", "face_sphere20a", path, weights_dir)
    net = Sphere20a()
    net.load_state_dict(sd, strict=True)
    return net.requires_grad_(False).to(device).eval()
