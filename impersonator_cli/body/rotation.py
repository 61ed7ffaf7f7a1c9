"""Rotations of the body stage: axis-angle <-> matrix, Euler angles, the upright-and-turned body.

Conventions: axis-angle vectors r (rotation by |r| about r / |r|, radians), matrices act on column
vectors, right-handed; SMPL's body is y-up, the image y-down, so HMR's upright global rotation is
pi about x. `batch_rodrigues` is the official formula SMPL computes with (torch, batched); the
numpy helpers are exact float64 conversions for building poses.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def batch_rodrigues(rot_vecs: torch.Tensor) -> torch.Tensor:
    """Axis-angle to rotation matrices, official formula (1e-8 added to every component first).

    angle = |r + 1e-8|, a = r / angle, R = cos I + (1 - cos) a a^T + sin [a]x.
    rot_vecs: N x 3  ->  N x 3 x 3
    """
    angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)  # N x 1
    axis = rot_vecs / angle
    cos, sin = torch.cos(angle)[:, :, None], torch.sin(angle)[:, :, None]
    ax, ay, az = axis.unbind(dim=1)
    zero = torch.zeros_like(ax)
    skew = torch.stack([zero, -az, ay, az, zero, -ax, -ay, ax, zero], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)
    outer = axis[:, :, None] * axis[:, None, :]
    return cos * eye + (1 - cos) * outer + sin * skew


def rotvec_to_matrix(r: np.ndarray) -> np.ndarray:
    """Exact Rodrigues (no shift): 3 -> 3 x 3 float64."""
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return np.eye(3)
    k = r / angle
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """3 x 3 -> 3, via a unit quaternion (Shepperd's branch choice): exact also near 180 degrees."""
    tr, d = np.trace(R), np.diag(R)
    if tr >= d.max():
        w = math.sqrt(1 + tr) / 2
        v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (4 * w)
    else:
        i = int(np.argmax(d))
        j, k = (i + 1) % 3, (i + 2) % 3
        v = np.zeros(3)
        v[i] = math.sqrt(1 + d[i] - d[j] - d[k]) / 2
        w = (R[k, j] - R[j, k]) / (4 * v[i])
        v[j], v[k] = (R[j, i] + R[i, j]) / (4 * v[i]), (R[k, i] + R[i, k]) / (4 * v[i])
    if w < 0:
        w, v = -w, -v
    s = float(np.linalg.norm(v))
    return v * (2 * math.atan2(s, w) / s) if s > 1e-12 else 2 * v


def euler_to_matrix(alpha: float, beta: float, gamma: float,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """R = Rz(gamma) Ry(beta) Rx(alpha), right-handed rotations about x, y, z (radians).  -> 3 x 3"""
    ca, sa, cb, sb = math.cos(alpha), math.sin(alpha), math.cos(beta), math.sin(beta)
    cg, sg = math.cos(gamma), math.sin(gamma)
    rx = torch.tensor([[1, 0, 0], [0, ca, -sa], [0, sa, ca]], dtype=torch.float64)
    ry = torch.tensor([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]], dtype=torch.float64)
    rz = torch.tensor([[cg, -sg, 0], [sg, cg, 0], [0, 0, 1]], dtype=torch.float64)
    return (rz @ ry @ rx).to(dtype)


def upright_turned(yaw: float) -> np.ndarray:
    """Axis-angle (3) of R = Rx(pi) Ry(yaw): HMR's upright body turned by `yaw` about its vertical
    axis. Rx(pi) Ry(yaw) is a rotation by pi about the axis (cos(yaw/2), 0, -sin(yaw/2))."""
    return math.pi * np.array([math.cos(yaw / 2), 0.0, -math.sin(yaw / 2)])
