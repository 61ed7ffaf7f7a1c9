"""HMR: the official body-mesh-recovery network (ResNet-50 v2 + iterative θ regressor).

The module tree mirrors the official `hmr_tf2pt.pth` state dict key for key (see
`weights/official_state_dicts.json`, section `hmr`): `resnet.*` (a TF-slim pre-activation
ResNet-50 v2 converted to PyTorch), `smpl.*` (six SMPL arrays stored as buffers; the network
does not use them, but a strict load requires them) and `regressor.*` (the 3-step iterative
regressor). The network only predicts θ (B x 85); `smpl_arrays_from_hmr` hands the stored SMPL
arrays to whoever runs the SMPL forward.

θ layout: [0:3] weak-perspective camera (s, tx, ty), [3:75] SMPL pose (24 joints x axis-angle,
joint 0 = global rotation), [75:85] shape β.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from impersonator_cli.errors import WeightsError
from impersonator_cli.body.arrays import (
    NUM_BETAS, NUM_COCOPLUS, NUM_JOINTS, NUM_POSE_BASIS, NUM_VERTICES, SMPLArrays,
)

IMAGE_SIZE = 224
FEATURE_DIM = 2048
THETA_DIM = 85
NUM_ITERATIONS = 3
STAGE_DEPTHS = (3, 4, 6, 3)
STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (2, 2, 2, 1)  # carried by the LAST block of each stage (TF-slim v2)
BN_EPS = 1e-5


# --------------------------------------------------------------------------------------------
# Backbone


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (expansion 4); the stride sits on the 3x3 conv.

    out = conv3(relu(bn3(conv2(relu(bn2(conv1(pre))))))) + shortcut,
    pre = relu(bn1(x)); shortcut = shortcut.0(pre) if the block has a 1x1 projection, otherwise x
    sub-sampled by a 1x1 max-pool with the block stride (identity for stride 1).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=True)
        self.shortcut: nn.Sequential | None = None
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x C_in x H x W -> B x 4*planes x H/stride x W/stride."""
        pre = F.relu(self.bn1(x))
        if self.shortcut is not None:
            skip = self.shortcut(pre)
        elif self.stride > 1:
            skip = F.max_pool2d(x, kernel_size=1, stride=self.stride)
        else:
            skip = x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + skip


def _make_stage(in_channels: int, planes: int, depth: int, stride: int) -> nn.Sequential:
    """`depth` bottlenecks; only the last one carries `stride`."""
    blocks = []
    for i in range(depth):
        blocks.append(PreActBottleneck(in_channels, planes, stride if i == depth - 1 else 1))
        in_channels = planes * PreActBottleneck.expansion
    return nn.Sequential(*blocks)


class PreActResNet50(nn.Module):
    """TF-slim ResNet-50 v2 as converted for HMR: B x 3 x 224 x 224 -> B x 2048 feature.

    Spatial sizes for a 224 input: conv1 112, max-pool 56, layer1 28, layer2 14, layer3 7, layer4 7.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=True)
        in_channels = 64
        for index, (planes, depth, stride) in enumerate(zip(STAGE_PLANES, STAGE_DEPTHS, STAGE_STRIDES), 1):
            self.add_module(f"layer{index}", _make_stage(in_channels, planes, depth, stride))
            in_channels = planes * PreActBottleneck.expansion
        self.post_bn = nn.BatchNorm2d(in_channels, eps=BN_EPS)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x 224 x 224 -> B x 2048 x 7 x 7 (after post_bn + ReLU)."""
        x = self.conv1(x)  # no BN / ReLU after the stem conv
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.relu(self.post_bn(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x 224 x 224 -> B x 2048 (7x7 average pool)."""
        return F.avg_pool2d(self.feature_maps(x), kernel_size=7).flatten(1)


# --------------------------------------------------------------------------------------------
# Regressor and the SMPL buffer holder


class ThetaRegressor(nn.Module):
    """θ_{k+1} = θ_k + MLP([feature, θ_k]), θ_0 = mean_theta, 3 steps; returns the final θ."""

    def __init__(self, feature_dim: int = FEATURE_DIM, iterations: int = NUM_ITERATIONS) -> None:
        super().__init__()
        self.iterations = iterations
        self.register_buffer("mean_theta", torch.zeros(THETA_DIM))
        self.fc_blocks = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(feature_dim + THETA_DIM, 1024),
                relu1=nn.ReLU(),
                dropout1=nn.Dropout(0.5),
                fc2=nn.Linear(1024, 1024),
                relu2=nn.ReLU(),
                dropout2=nn.Dropout(0.5),
                fc3=nn.Linear(1024, THETA_DIM),
            )
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """feature: B x 2048 -> θ: B x 85."""
        theta = self.mean_theta.to(feature.dtype).expand(feature.shape[0], -1)
        for _ in range(self.iterations):
            theta = theta + self.fc_blocks(torch.cat([feature, theta], dim=1))
        return theta


SMPL_BUFFER_SHAPES: dict[str, tuple[int, ...]] = {
    "v_template": (NUM_VERTICES, 3),
    "shapedirs": (NUM_BETAS, NUM_VERTICES * 3),
    "J_regressor": (NUM_VERTICES, NUM_JOINTS),
    "posedirs": (NUM_POSE_BASIS, NUM_VERTICES * 3),
    "weights": (NUM_VERTICES, NUM_JOINTS),
    "joint_regressor": (NUM_VERTICES, NUM_COCOPLUS),
}


class SMPLBuffers(nn.Module):
    """Holds the six SMPL arrays stored in `hmr_tf2pt.pth` (checkpoint layout, see `SMPLArrays`).

    Zeros unless `arrays` is given; HMR itself never reads them.
    """

    def __init__(self, arrays: SMPLArrays | None = None) -> None:
        super().__init__()
        values = arrays.hmr_buffers() if arrays is not None else {}
        for name, shape in SMPL_BUFFER_SHAPES.items():
            tensor = torch.as_tensor(values[name]) if name in values else torch.zeros(shape)
            self.register_buffer(name, tensor.float())


class HMR(nn.Module):
    """Human Mesh Recovery: images B x 3 x 224 x 224 in [-1, 1] (RGB) -> θ B x 85."""

    def __init__(self, smpl_arrays: SMPLArrays | None = None) -> None:
        super().__init__()
        # Registration order = the official state-dict order: resnet, smpl, regressor.
        self.resnet = PreActResNet50()
        self.smpl = SMPLBuffers(smpl_arrays)
        self.regressor = ThetaRegressor()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x 3 x 224 x 224, RGB in [-1, 1] -> θ: B x 85."""
        return self.regressor(self.resnet(images))


# --------------------------------------------------------------------------------------------
# θ split and pre-processing


@dataclass(frozen=True)
class HMRTheta:
    """θ split into its parts.

    cam:   B x 3   weak-perspective camera (s, tx, ty)
    pose:  B x 72  SMPL pose, 24 joints x axis-angle (joint 0 = global rotation)
    shape: B x 10  SMPL shape β
    """

    cam: torch.Tensor
    pose: torch.Tensor
    shape: torch.Tensor

    @property
    def theta(self) -> torch.Tensor:
        """B x 85, the packed vector again."""
        return torch.cat([self.cam, self.pose, self.shape], dim=-1)


def split_theta(theta: torch.Tensor) -> HMRTheta:
    """θ: B x 85 -> HMRTheta(cam B x 3, pose B x 72, shape B x 10)."""
    if theta.shape[-1] != THETA_DIM:
        raise ValueError(f"theta must end in {THETA_DIM} values, got shape {tuple(theta.shape)}")
    return HMRTheta(cam=theta[..., 0:3], pose=theta[..., 3:75], shape=theta[..., 75:85])


def resize_linear(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize like `cv2.resize(img, (size, size))` (INTER_LINEAR): B x C x H x W -> B x C x size x size.

    Bilinear, half-pixel centres (align_corners=False), no antialiasing — cv2's INTER_LINEAR does
    not antialias when downsampling either. Non-square inputs are stretched, as the official does.
    cv2 computes uint8 results in fixed point (11-bit weights), so after rounding ~13% of values
    differ from cv2 by 1 grey level, never more (checked in tests/test_hmr.py).
    """
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def preprocess(rgb: np.ndarray | torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """RGB uint8 image(s) H x W x 3 or B x H x W x 3 -> B x 3 x size x size float32 in [-1, 1].

    Official behaviour: the whole image is resized (uint8 result, rounded) and mapped with
    x/255*2-1; no mean/std normalisation, no crop. Feed square person-centred crops to avoid the
    non-uniform stretch.
    """
    images = torch.as_tensor(np.ascontiguousarray(rgb) if isinstance(rgb, np.ndarray) else rgb)
    if images.dtype != torch.uint8:
        raise ValueError(f"preprocess expects uint8 RGB images, got {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"preprocess expects H x W x 3 or B x H x W x 3, got {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).float()
    x = resize_linear(x, size).round().clamp(0, 255)
    return x / 255.0 * 2.0 - 1.0


# --------------------------------------------------------------------------------------------
# Loading


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """Read a torch (.pth/.pt, legacy or zip format) or safetensors file, tensors on CPU."""
    if not path.is_file():
        raise WeightsError(
            "The HMR weight file does not exist", path=path,
            hint="Check the path, or import the official pretrains.zip (it contains hmr_tf2pt.pth).",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any reader failure means an unusable file
        raise WeightsError(
            "Cannot read the HMR weight file", path=path,
            hint="The file is corrupt or not a weights file; download or import hmr_tf2pt.pth again.",
            detail=f"{type(exc).__name__}: {exc}",
        ) from exc


def _check_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Strict key/shape check; returns the state with absent `num_batches_tracked` filled with 0."""
    hint = "Use the official hmr_tf2pt.pth (from pretrains.zip) or its converted safetensors form."
    if not isinstance(state, Mapping):
        raise WeightsError(f"The HMR weight file holds a {type(state).__name__}, not a state dict",
                           path=source, hint=hint)
    for key, value in state.items():
        if key not in expected:
            raise WeightsError(f"The HMR weight file has an unexpected key '{key}'", path=source, hint=hint)
        want, got = tuple(expected[key].shape), tuple(getattr(value, "shape", ()))
        if not isinstance(value, torch.Tensor) or got != want:
            raise WeightsError(
                f"The HMR weight file has the wrong shape for '{key}': "
                f"expected {list(want)}, found {list(got)}",
                path=source, hint=hint,
            )
    filled = dict(state)
    for key, ref in expected.items():
        if key in filled:
            continue
        if not key.endswith("num_batches_tracked"):
            raise WeightsError(f"The HMR weight file is missing the key '{key}'", path=source, hint=hint)
        filled[key] = torch.zeros_like(ref, device="cpu")
    return filled


def load_hmr(
    path_or_state_dict: str | PathLike | Mapping[str, torch.Tensor], device: str | torch.device = "cpu"
) -> HMR:
    """Build HMR from the official `hmr_tf2pt.pth` (or its safetensors form / a state dict), eval mode.

    Loading is strict: any missing, unexpected or mis-shaped key raises `WeightsError` naming the file
    and key. Only `num_batches_tracked` entries may be absent (they do not affect eval).
    """
    if isinstance(path_or_state_dict, Mapping):
        source, state = "<state dict>", path_or_state_dict
    else:
        source = str(path_or_state_dict)
        state = _read_state_dict(Path(path_or_state_dict))
    with torch.device("meta"):
        model = HMR()
    state = _check_state_dict(state, model.state_dict(), source)
    model = model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    return model.eval()


def smpl_arrays_from_hmr(
    state: Mapping[str, torch.Tensor] | HMR, faces: np.ndarray, parents: np.ndarray | None = None
) -> SMPLArrays:
    """The SMPL arrays stored inside an HMR checkpoint (state dict or model), plus faces (F x 3)."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    buffers = {}
    for name in SMPL_BUFFER_SHAPES:
        key = f"smpl.{name}"
        if key not in state:
            raise WeightsError(f"The HMR weights do not contain '{key}'",
                               hint="Use the official hmr_tf2pt.pth, which carries the SMPL arrays.")
        buffers[name] = state[key].detach().cpu().float().numpy()
    if parents is None:
        return SMPLArrays.from_hmr_buffers(buffers, faces)
    return SMPLArrays.from_hmr_buffers(buffers, faces, parents)
