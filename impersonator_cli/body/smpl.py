"""The SMPL body model as the official implementation computes it (spec §1.5), on smplx's LBS.

Buffers carry the official names and layout of the `smpl.*` entries of `hmr_tf2pt.pth`
(`v_template` V x 3, `shapedirs` 10 x 3V, `J_regressor` V x 24, `posedirs` 207 x 3V, `weights`
V x 24, `joint_regressor` V x 19), so this module can sit at `HumanModelRecovery.smpl` and the
checkpoint loads strictly. `faces` and `parents` are non-persistent buffers (not in the checkpoint).

Difference from smplx: smplx's `batch_rodrigues` computes R = I + sin K + (1 - cos) K^2, which
equals the official cos I + (1 - cos) a a^T + sin [a]x only when the axis a has unit length; with
the official 1e-8 shift (angle = |r + 1e-8|, a = r / angle) it is not exactly unit, so we use our
own `batch_rodrigues` with the official formula and feed rotation matrices to `smplx.lbs.lbs`
(pose2rot=False). Everything else (blend shapes, joint regression, rigid chain, skinning) is
smplx's and matches the official arithmetic; no root translation or centring is applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from smplx.lbs import lbs, vertices2joints
from torch import nn

from impersonator_cli.errors import WeightsError
from impersonator_cli.body import camera
from impersonator_cli.body.arrays import NUM_BETAS, SMPL_PARENTS, SMPLArrays
from impersonator_cli.body.rotation import batch_rodrigues

HMR_BUFFER_NAMES = ("v_template", "shapedirs", "J_regressor", "posedirs", "weights",
                    "joint_regressor")


@dataclass(frozen=True)
class SMPLOutput:
    """vertices: B x V x 3, joints: B x 24 x 3 (posed SMPL joints), cocoplus: B x 19 x 3."""

    vertices: torch.Tensor
    joints: torch.Tensor
    cocoplus: torch.Tensor


@dataclass(frozen=True)
class SMPLDetails:
    """What the official `get_details(theta)` returns (spec §1.4).

    cam: B x 3, pose: B x 72, shape: B x 10, vertices: B x V x 3, j3d: B x 19 x 3, j2d: B x 19 x 2,
    theta: B x 85.
    """

    cam: torch.Tensor
    pose: torch.Tensor
    shape: torch.Tensor
    vertices: torch.Tensor
    j3d: torch.Tensor
    j2d: torch.Tensor
    theta: torch.Tensor


class SMPL(nn.Module):
    """SMPL with the COCO-plus regressor: forward(pose B x 72, betas B x 10) -> SMPLOutput."""

    def __init__(self, arrays: SMPLArrays) -> None:
        super().__init__()
        for name, value in arrays.hmr_buffers().items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)))
        self.register_buffer("faces", torch.from_numpy(np.asarray(arrays.faces, np.int64)),
                             persistent=False)
        self.register_buffer("parents", torch.from_numpy(np.asarray(arrays.parents, np.int64)),
                             persistent=False)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def forward(self, pose: torch.Tensor, betas: torch.Tensor) -> SMPLOutput:
        """pose: B x 72 axis-angle (joint 0 = global rotation), betas: B x 10  ->  SMPLOutput"""
        dtype = self.v_template.dtype
        pose, betas = pose.to(dtype), betas.to(dtype)
        b, v = pose.shape[0], self.num_vertices
        rot_mats = batch_rodrigues(pose.reshape(-1, 3)).view(b, -1, 3, 3)
        shapedirs = self.shapedirs.T.reshape(v, 3, -1)  # V x 3 x 10
        vertices, joints = lbs(betas, rot_mats, self.v_template, shapedirs, self.posedirs,
                               self.J_regressor.T, self.parents, self.weights, pose2rot=False)
        cocoplus = vertices2joints(self.joint_regressor.T, vertices)
        return SMPLOutput(vertices=vertices, joints=joints, cocoplus=cocoplus)

    @staticmethod
    def project(joints: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        """j2d = s (joints_xy + t).  joints: B x N x 3, cam: B x 3  ->  B x N x 2"""
        return camera.project_2d(joints, cam)

    def get_details(self, theta: torch.Tensor) -> SMPLDetails:
        """theta: B x 85 = (cam 3, pose 72, shape 10)  ->  SMPLDetails (spec §1.4)."""
        cam, pose, shape = theta[:, :3], theta[:, 3:75], theta[:, 75:75 + NUM_BETAS]
        out = self(pose, shape)
        return SMPLDetails(cam=cam, pose=pose, shape=shape, vertices=out.vertices,
                           j3d=out.cocoplus, j2d=self.project(out.cocoplus, cam), theta=theta)

    # --- constructors for the three array sources -------------------------------------------

    @classmethod
    def from_hmr_state_dict(cls, state_dict: Mapping[str, Any], faces: Any,
                            parents: Any = SMPL_PARENTS) -> "SMPL":
        """Source (a): the six `smpl.*` buffers of `hmr_tf2pt.pth` (with or without the `smpl.`
        prefix) plus faces (F x 3) and the kinematic tree (the checkpoint holds neither)."""
        buffers = {}
        for name in HMR_BUFFER_NAMES:
            value = state_dict.get(f"smpl.{name}", state_dict.get(name))
            if value is None:
                raise WeightsError(f"The HMR checkpoint has no 'smpl.{name}' buffer",
                                   hint="Use the official hmr_tf2pt.pth from pretrains.zip.")
            buffers[name] = value.detach().cpu().numpy() if torch.is_tensor(value) else value
        _check_hmr_buffers(buffers)
        return cls(SMPLArrays.from_hmr_buffers(buffers, np.asarray(faces), np.asarray(parents)))

    @classmethod
    def from_pickle(cls, path: str | Path, cocoplus: Any = None) -> "SMPL":
        """Source (b): an official SMPL pickle (chumpy/scipy free, no code run)."""
        from impersonator_cli.body.smpl_pickle import load_smpl_pickle

        return cls(load_smpl_pickle(path, cocoplus))

    @classmethod
    def from_npz(cls, path: str | Path, cocoplus: Any = None) -> "SMPL":
        """Source (c): a standard SMPL .npz."""
        from impersonator_cli.body.smpl_pickle import load_smpl_npz

        return cls(load_smpl_npz(path, cocoplus))


def _check_hmr_buffers(buffers: Mapping[str, np.ndarray]) -> None:
    v = np.shape(buffers["v_template"])[0]
    expected = {"v_template": (v, 3), "shapedirs": (NUM_BETAS, 3 * v), "J_regressor": (v, 24),
                "posedirs": (207, 3 * v), "weights": (v, 24), "joint_regressor": (v, 19)}
    for name, shape in expected.items():
        if tuple(np.shape(buffers[name])) != shape:
            raise WeightsError(
                f"The HMR checkpoint's 'smpl.{name}' has shape {tuple(np.shape(buffers[name]))}, "
                f"expected {shape}", hint="Use the official hmr_tf2pt.pth from pretrains.zip.")
