"""Temporal smoothing of poses (on rotations) and cameras.

References here work on rotation matrices (numpy Rodrigues / SVD projection), independently of the
quaternion code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from impersonator_cli.body.smoothing import (
    axis_angle_to_quaternion, quaternion_to_axis_angle, smooth_cameras, smooth_poses, smooth_thetas,
)
from impersonator_cli.errors import UsageError


def rodrigues(aa: np.ndarray) -> np.ndarray:
    """... x 3 axis-angle -> ... x 3 x 3 rotation matrices."""
    angle = np.linalg.norm(aa, axis=-1)[..., None, None]
    axis = aa / np.maximum(np.linalg.norm(aa, axis=-1, keepdims=True), 1e-12)
    k = np.zeros(aa.shape[:-1] + (3, 3))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -axis[..., 2], axis[..., 1], -axis[..., 0]
    k = k - np.swapaxes(k, -1, -2)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def log_map(r: np.ndarray) -> np.ndarray:
    """... x 3 x 3 rotations -> ... x 3 axis-angle (angle in [0, π]); robust near π via eigvectors."""
    out = np.zeros(r.shape[:-2] + (3,))
    for idx in np.ndindex(r.shape[:-2]):
        m = r[idx]
        angle = math.acos(np.clip((np.trace(m) - 1) / 2, -1, 1))
        w, v = np.linalg.eig(m)
        axis = np.real(v[:, np.argmin(np.abs(w - 1))])
        if geodesic(rodrigues(axis * angle), m) > geodesic(rodrigues(-axis * angle), m):
            axis = -axis
        out[idx] = axis * angle
    return out


def geodesic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (rad) between rotation matrices ... x 3 x 3."""
    cos = (np.einsum("...ij,...ij->...", a, b) - 1) / 2
    return np.arccos(np.clip(cos, -1, 1))


def project_so3(m: np.ndarray) -> np.ndarray:
    """Nearest rotation (Frobenius) to each ... x 3 x 3 matrix."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, 2] *= d[..., None]
    return u @ vt


def reference_smooth(rot: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted rotation-matrix average, mirrored ends, projected to SO(3): T x J x 3 x 3."""
    length, radius = rot.shape[0], max(1, math.ceil(4 * sigma))
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weights /= weights.sum()
    out = np.zeros_like(rot)
    for t in range(length):
        for k, w in zip(range(-radius, radius + 1), weights):
            j = t + k
            while not 0 <= j < length:
                j = -j - 1 if j < 0 else 2 * length - 1 - j
            out[t] += w * rot[j]
    return project_so3(out)


def noisy_sequence(length=60, joints=4, noise=0.08, seed=0):
    """(clean, noisy) rotations T x J x 3 x 3 and the noisy poses T x 3J as axis-angle in [0, π].

    Joint 0 is a global rotation near π about x (HMR's upright body), swaying ±0.15 rad, so its
    axis-angle vector jumps between ≈ +π·x and ≈ -π·x from frame to frame.
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length)[:, None]
    base = np.stack([np.concatenate([np.pi * np.ones_like(t), 0.15 * np.sin(6 * t), 0.1 * t], 1)]
                    + [np.concatenate([0.8 * np.sin(3 * t + j), 0.5 * t, 0.3 * np.cos(2 * t)], 1)
                       for j in range(1, joints)], axis=1)
    clean = rodrigues(base)
    noisy = clean @ rodrigues(rng.normal(0, noise, base.shape))
    return clean, noisy, log_map(noisy).reshape(length, -1)


def as_rotations(poses) -> np.ndarray:
    return rodrigues(np.asarray(poses, dtype=np.float64).reshape(len(poses), -1, 3))


def test_sigma_zero_returns_input_exactly():
    poses = torch.randn(10, 72, dtype=torch.float32) * 2
    assert torch.equal(smooth_poses(poses, 0), poses)
    cams = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_array_equal(smooth_cameras(cams, 0.0), cams)
    theta = torch.randn(5, 85)
    assert torch.equal(smooth_thetas(theta, 0), theta)


def test_constant_sequence_is_unchanged():
    rng = np.random.default_rng(1)
    axes = rng.normal(size=(24, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0, 3.1, size=(24, 1))
    angles[0] = 3.1  # global rotation near π
    pose = (axes * angles).reshape(72)
    poses = torch.tensor(np.tile(pose, (12, 1)))
    out = smooth_poses(poses, 2.0)
    np.testing.assert_allclose(out.numpy(), poses.numpy(), atol=1e-9)
    cams = np.tile([0.9, 0.1, -0.2], (12, 1))
    np.testing.assert_allclose(smooth_cameras(cams, 3.0), cams, atol=1e-12)


def test_noisy_poses_get_less_jitter_without_shifting_the_mean():
    clean, noisy, poses = noisy_sequence()
    jumps = np.abs(np.diff(poses.reshape(len(poses), -1, 3)[:, 0, 0]))
    assert jumps.max() > 5  # the input really crosses the axis-angle π boundary
    out = as_rotations(smooth_poses(torch.tensor(poses), 2.0))

    jitter_in = geodesic(noisy[1:], noisy[:-1]).mean()
    jitter_out = geodesic(out[1:], out[:-1]).mean()
    assert jitter_out < 0.3 * jitter_in
    assert geodesic(out, clean).mean() < 0.6 * geodesic(noisy, clean).mean()
    mean_in, mean_out = project_so3(noisy.mean(0)), project_so3(out.mean(0))
    assert geodesic(mean_in, mean_out).max() < 5e-3


def test_matches_rotation_matrix_smoothing_across_the_pi_boundary():
    # Global rotation sweeping about x from 2.9 to 3.4 rad (crossing π) plus noise.
    rng = np.random.default_rng(2)
    sweep = np.linspace(2.9, 3.4, 40)
    aa = np.stack([sweep, np.zeros(40), np.zeros(40)], 1)
    rot = rodrigues(aa) @ rodrigues(rng.normal(0, 0.05, (40, 3)))
    poses = log_map(rot[:, None]).reshape(40, 3)
    assert np.sign(poses[0, 0]) != np.sign(poses[-1, 0])  # representation flips mid-way
    for sigma in (1.0, 3.0):
        ours = as_rotations(smooth_poses(poses, sigma))[:, 0]
        reference = reference_smooth(rot[:, None], sigma)[:, 0]
        assert geodesic(ours, reference).max() < 2e-3
        naive = rodrigues(np.asarray(smooth_cameras(poses, sigma)))  # averaging axis-angle vectors
        assert geodesic(naive, reference).max() > 0.5  # ...which is what this guards against


def test_cameras_smoothed_linearly_with_mirrored_ends():
    rng = np.random.default_rng(3)
    t = np.arange(50, dtype=np.float64)
    cams = np.stack([0.9 + 0.001 * t, 0.01 * t, -0.02 * t], 1)
    noisy = cams + rng.normal(0, 0.02, cams.shape)
    out = smooth_cameras(noisy, 2.0)
    np.testing.assert_allclose(out.mean(0), noisy.mean(0), atol=1e-12)  # mean not shifted
    np.testing.assert_allclose(smooth_cameras(cams, 2.0)[10:-10], cams[10:-10], atol=1e-12)  # lines kept
    assert np.abs(np.diff(out, axis=0)).mean() < 0.4 * np.abs(np.diff(noisy, axis=0)).mean()
    assert np.abs(out[[0, -1]] - cams[[0, -1]]).max() < 0.05  # ends not pulled towards zero
    short = smooth_cameras(noisy[:3], 5.0)  # kernel longer than the sequence
    np.testing.assert_allclose(short.mean(0), noisy[:3].mean(0), atol=1e-12)


def test_theta_parts_and_types_are_kept():
    _, _, poses = noisy_sequence(length=20, joints=24)
    cams = np.random.default_rng(4).normal(size=(20, 3))
    shapes = np.random.default_rng(5).normal(size=(20, 10))
    theta = torch.tensor(np.concatenate([cams, poses, shapes], 1), dtype=torch.float32)
    out = smooth_thetas(theta, 1.5)
    assert out.dtype == torch.float32 and out.shape == (20, 85)
    np.testing.assert_allclose(out[:, :3].numpy(), smooth_cameras(cams, 1.5), atol=1e-6)
    np.testing.assert_allclose(out[:, 75:].numpy(), smooth_cameras(shapes, 1.5), atol=1e-6)
    np.testing.assert_allclose(as_rotations(out[:, 3:75].numpy()),
                               as_rotations(smooth_poses(poses, 1.5)), atol=1e-5)


def test_quaternion_round_trip_keeps_rotations():
    rng = np.random.default_rng(6)
    aa = rng.normal(size=(200, 3))
    aa *= rng.uniform(0, 2 * np.pi, (200, 1)) / np.linalg.norm(aa, axis=1, keepdims=True)
    aa[:3] = [[1e-9, 0, 0], [0, 0, 0], [np.pi, 0, 0]]
    back = quaternion_to_axis_angle(axis_angle_to_quaternion(torch.tensor(aa))).numpy()
    assert geodesic(rodrigues(back), rodrigues(aa)).max() < 1e-6
    assert np.linalg.norm(back, axis=1).max() <= np.pi + 1e-9


@pytest.mark.parametrize("sigma", [-1.0, float("nan")])
def test_invalid_sigma_is_a_usage_error(sigma):
    with pytest.raises(UsageError):
        smooth_poses(np.zeros((4, 72)), sigma)
