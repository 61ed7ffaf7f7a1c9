"""The mannequin's rig: skinning weights, joint and COCO-plus regressors, shape and pose blend shapes.

Everything is derived from the rest surface and the designed skeleton, which the caller
(`mannequin`) passes in: joints (24 x 3, SMPL order) and the far ends of the leaf bones.
This module imports nothing from `mannequin`, so there is no import cycle.
"""

from __future__ import annotations

import numpy as np

from impersonator_cli.body.arrays import SMPL_PARENTS, SMPLArrays

# ----------------------------------------------------------------------------- joints and bones
_BONE_RADIUS = np.array([0.13, 0.08, 0.08, 0.15, 0.05, 0.05, 0.15, 0.05, 0.05, 0.15, 0.05, 0.05,
                         0.05, 0.06, 0.06, 0.09, 0.05, 0.05, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04])
LEFT_JOINTS = np.array([1, 4, 7, 10, 13, 16, 18, 20, 22])
RIGHT_JOINTS = LEFT_JOINTS + 1


def _bone_segments(joints: np.ndarray, leaf_ends: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segments whose region each joint's transform moves. joints: 24 x 3, leaf_ends: {joint: 3}
    -> (starts S x 3, ends S x 3, radii at both ends S x 2, owning joint S)."""
    a, b, radii, owner = [], [], [], []
    for child, parent in enumerate(SMPL_PARENTS):
        if parent >= 0:
            a.append(joints[parent]), b.append(joints[child]), owner.append(parent)
            radii.append((_BONE_RADIUS[parent], _BONE_RADIUS[child]))
    for i, end in leaf_ends.items():
        a.append(joints[i]), b.append(end), owner.append(i)
        radii.append((_BONE_RADIUS[i], _BONE_RADIUS[i]))
    return np.array(a), np.array(b), np.array(radii), np.array(owner)


def closest_on_bones(v: np.ndarray, joints: np.ndarray, leaf_ends: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex and joint, the nearest point of that joint's bones and the distance to it
    relative to the local (tapered) bone radius. v: V x 3 -> (V x 24 x 3, V x 24)."""
    a, b, radii, owner = _bone_segments(joints, leaf_ends)
    ab = b - a
    t = np.clip(((v[:, None] - a[None]) * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    q = a[None] + t[..., None] * ab[None]
    d = np.linalg.norm(v[:, None] - q, axis=-1) / (radii[:, 0] + t * (radii[:, 1] - radii[:, 0]))
    best_q = np.zeros((len(v), 24, 3))
    best_d = np.full((len(v), 24), np.inf)
    for s, j in enumerate(owner):
        closer = d[:, s] < best_d[:, j]
        best_d[closer, j] = d[closer, s]
        best_q[closer, j] = q[closer, s]
    return best_q, best_d


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    s = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return s * s * (3 - 2 * s)


def skinning_weights(v: np.ndarray, dist: np.ndarray, tau: float = 0.12, keep: int = 4) -> np.ndarray:
    """Soft nearest-bone weights, at most `keep` joints per vertex.
    v: V x 3, dist: V x 24 bone distances in bone radii -> V x 24."""
    s = dist
    w = np.exp(-(s - s.min(1, keepdims=True)) / tau)
    w[:, LEFT_JOINTS] *= _smoothstep(v[:, :1], -0.02, 0.02)
    w[:, RIGHT_JOINTS] *= _smoothstep(-v[:, :1], -0.02, 0.02)
    w /= w.sum(1, keepdims=True)
    kth = -np.sort(-w, axis=1)[:, keep - 1 : keep]
    w[(w < kth) | (w < 0.01)] = 0.0
    return w / w.sum(1, keepdims=True)


# ----------------------------------------------------------------------------- regressors
def _tilted_weights(x: np.ndarray, p: np.ndarray, prior: np.ndarray) -> np.ndarray | None:
    """Max-entropy weights w ~ prior * exp(lambda . x) with sum w = 1 and w @ x = p, or None if
    p is not inside the hull of x. x: K x 3, p: 3, prior: K -> K."""
    d = x - p
    lam = np.zeros(3)

    def objective(l: np.ndarray) -> float:
        logits = np.log(prior) + d @ l
        return float(logits.max() + np.log(np.exp(logits - logits.max()).sum()))

    for _ in range(100):
        logits = np.log(prior) + d @ lam
        w = np.exp(logits - logits.max())
        w /= w.sum()
        grad = w @ d
        if np.linalg.norm(grad) < 1e-12:
            return w
        hess = (d * w[:, None]).T @ d - np.outer(grad, grad)
        step = np.linalg.solve(hess + 1e-12 * np.eye(3), grad)
        f0, t = objective(lam), 1.0
        while objective(lam - t * step) > f0 - 1e-4 * t * grad @ step and t > 1e-8:
            t *= 0.5
        lam = lam - t * step
    return None


def _ring_weights(v: np.ndarray, p: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Weights on vertices of a slab around p (normal `axis`) whose mean is exactly p. -> V"""
    along = np.abs((v - p) @ axis)
    dist = np.linalg.norm(v - p, axis=1)
    for slab, radius in [(0.015, 0.12), (0.03, 0.15), (0.05, 0.25), (0.1, 0.4), (1.0, 1.0)]:
        idx = np.nonzero((along < slab) & (dist < radius))[0]
        if len(idx) < 8:
            continue
        w = _tilted_weights(v[idx], p, np.exp(-0.5 * (dist[idx] / (0.5 * radius)) ** 2))
        if w is not None:
            out = np.zeros(len(v))
            out[idx] = w
            return out
    raise RuntimeError(f"cannot regress a mannequin joint at {p}")


def joint_regressor(v: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """24 x V: each row rings its joint, so J_regressor @ v == joints (24 x 3)."""
    rows = []
    for j, parent in enumerate(SMPL_PARENTS):
        axis = joints[j] - joints[parent] if parent >= 0 else np.array([0.0, 1.0, 0.0])
        rows.append(_ring_weights(v, joints[j], axis / np.linalg.norm(axis)))
    return np.stack(rows)


def _surface_landmark(v: np.ndarray, target: np.ndarray, k: int = 6) -> np.ndarray:
    """Weights on the k vertices nearest to a surface point (Gaussian, 1 cm). -> V"""
    dist = np.linalg.norm(v - target, axis=1)
    idx = np.argsort(dist)[:k]
    w = np.exp(-0.5 * (dist[idx] / 0.01) ** 2)
    out = np.zeros(len(v))
    out[idx] = w / w.sum()
    return out


# COCO-plus rows 0..12 reuse SMPL joint rows; 13..18 are head landmarks.
_COCO_FROM_SMPL = [8, 5, 2, 1, 4, 7, 21, 19, 17, 16, 18, 20, 12]


def cocoplus_regressor(v: np.ndarray, j_reg: np.ndarray, marks: list) -> np.ndarray:
    """19 x V in COCO-plus order (R-ankle ... neck, head-top, nose, L/R eye, L/R ear);
    marks: the six head landmark positions (head top, nose, L/R eye, L/R ear), each 3."""
    return np.concatenate([j_reg[_COCO_FROM_SMPL], np.stack([_surface_landmark(v, m) for m in marks])])


# ----------------------------------------------------------------------------- blend shapes
def shape_directions(v: np.ndarray, q: np.ndarray, w: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Ten smooth shape directions, scaled for beta ~ N(0, 1). v: V x 3, q: V x 24 x 3 nearest
    bone points, w: V x 24 skinning weights, joints: 24 x 3 -> V x 3 x 10 (metres per unit beta)."""
    x, y, z = v.T
    sign = np.tanh(x / 0.02)
    out = np.zeros((len(v), 3, 10))
    out[:, :, 0] = 0.04 * (v - joints[0])  # overall size (height and width)
    out[:, :, 1] = 0.12 * (w[..., None] * (v[:, None] - q)).sum(1)  # girth
    hip_y = joints[1, 1]
    out[:, 1, 2] = -0.04 * np.clip((hip_y - y) / (hip_y - v[:, 1].min()), 0.0, 1.0)  # leg length
    out[:, 0, 3] = 0.04 * sign * np.clip((np.abs(x) - 0.18) / (np.abs(x).max() - 0.18), 0, 1)  # arms
    out[:, 0, 4] = 0.015 * sign * _smoothstep(np.abs(x), 0.03, 0.17) * _smoothstep(y, 0.0, 0.15)
    out[:, 1, 5] = 0.03 * np.clip((y - joints[0, 1]) / (joints[12, 1] - joints[0, 1]), 0.0, 1.0)
    belly = np.exp(-(((y + 0.05) / 0.12) ** 2) - (x / 0.12) ** 2)
    out[:, 2, 6] = 0.03 * belly * np.clip(z / 0.1, 0.0, 1.0)  # belly
    out[:, 0, 7] = 0.015 * np.tanh(x / 0.05) * np.exp(-(((y + 0.33) / 0.15) ** 2))  # hip width
    head = _smoothstep(y, 0.29, 0.34)[:, None]
    out[:, :, 8] = 0.08 * head * (v - [0.0, 0.43, 0.0])  # head size
    limbs = np.r_[LEFT_JOINTS[1:], RIGHT_JOINTS[1:]]
    limbs = limbs[(limbs != 13) & (limbs != 14)]
    out[:, :, 9] = 0.15 * (w[:, limbs, None] * (v[:, None] - q[:, limbs])).sum(1)  # limb girth
    return out


def pose_directions(v: np.ndarray, q: np.ndarray, w: np.ndarray, joints: np.ndarray, seed: int) -> np.ndarray:
    """Small corrective bulges around each joint, one per rotation-matrix entry (deterministic
    for `seed`). -> V x 3 x 207; each unit of (R - I) moves vertices by at most ~4 mm."""
    coef = np.random.default_rng(seed).normal(size=(23, 9))
    out = np.zeros((len(v), 3, 207))
    for j in range(1, 24):
        near = np.exp(-0.5 * (np.linalg.norm(v - joints[j], axis=1) / 0.08) ** 2)
        loc = near * (w[:, j] + w[:, SMPL_PARENTS[j]])
        base = 0.004 * loc[:, None] * (v - q[:, j]) / _BONE_RADIUS[j]
        out[:, :, 9 * (j - 1) : 9 * j] = base[..., None] * coef[j - 1]
    return out


def rig_arrays(v: np.ndarray, faces: np.ndarray, joints: np.ndarray, leaf_ends: dict, marks: list,
               seed: int) -> SMPLArrays:
    """The full SMPL array set for a rest surface v: V x 3 (faces: F x 3) and its designed skeleton."""
    q, dist = closest_on_bones(v, joints, leaf_ends)
    weights = skinning_weights(v, dist)
    smooth = skinning_weights(v, dist, tau=0.3, keep=24)  # wider blend for the blend shapes
    j_reg = joint_regressor(v, joints)
    return SMPLArrays(
        v_template=v, shapedirs=shape_directions(v, q, smooth, joints),
        posedirs=pose_directions(v, q, smooth, joints, seed), J_regressor=j_reg, weights=weights,
        parents=SMPL_PARENTS.copy(), faces=faces, cocoplus_regressor=cocoplus_regressor(v, j_reg, marks))
