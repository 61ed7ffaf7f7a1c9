"""The mannequin: a procedurally generated, person-shaped body in SMPL's exact format.

Tests and the no-download demo run on it instead of the licence-gated SMPL model. It has SMPL's
vertex/face counts (6890 / 13776), its 24-joint tree, rest frame (y up, x to the body's left,
z forward, T-pose, soles at y = -1.175, head top at y = 0.54) and all of its arrays.

Construction ("inflated gingerbread man"):
1. The front silhouette is the zero set of a smooth implicit field phi(x, y): a soft union
   (log-sum-exp) of tapered capsules (limbs, neck), a superellipse (torso) and an ellipse (head).
2. Its outline is traced (marching squares, then projected onto phi = 0) and cut at 19 corners
   into pieces; six structured quad blocks (torso, 2 legs, 2 arms, head) are filled in with
   transfinite (Coons) interpolation. Their quads number exactly 3444, so that the front disk,
   doubled to a front and a back sheet glued along the outline, has V = 6890 and F = 13776.
3. Front z = g + A sqrt(phi), back z = g - A sqrt(phi) (A: blended half-depth of the parts,
   g: a forward shear of the feet). Both sheets are graphs over the same planar disk, so the
   closed surface cannot intersect itself.
Steps 1 and 2 (the field and the front disk) live in `mannequin_disk`. The rig (skinning weights,
regressors, blend shapes; see `mannequin_rig`) is derived from designed joint positions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from impersonator_cli.body.arrays import SMPLArrays
from impersonator_cli.demo.mannequin_disk import _front_disk, silhouette_field
from impersonator_cli.demo.mannequin_rig import RIGHT_JOINTS, rig_arrays

# Designed joint positions (SMPL order), close to the SMPL neutral template.
_JOINTS_LEFT = {  # index: (x, y, z) for the left side; the right side mirrors x.
    1: (0.08, -0.31, 0.0), 4: (0.105, -0.69, 0.0), 7: (0.095, -1.09, 0.0),
    10: (0.105, -1.14, 0.10), 13: (0.08, 0.20, 0.0), 16: (0.18, 0.22, 0.0),
    18: (0.43, 0.22, 0.0), 20: (0.68, 0.22, 0.0), 22: (0.77, 0.22, 0.0),
}
_JOINTS_MID = {0: (0.0, -0.22, 0.0), 3: (0.0, -0.11, 0.0), 6: (0.0, 0.03, 0.0),
               9: (0.0, 0.09, 0.0), 12: (0.0, 0.29, 0.0), 15: (0.0, 0.37, 0.0)}


# ----------------------------------------------------------------------------- feet
def _feet_shear(y: np.ndarray) -> np.ndarray:
    """Forward z shift g(y) that makes the feet stick out to the front (0 above the ankles)."""
    s = np.clip((-1.06 - y) / 0.06, 0.0, 1.0)
    return 0.05 * s * s * (3 - 2 * s)


# ----------------------------------------------------------------------------- closed surface
@dataclass(frozen=True)
class MannequinMesh:
    """The closed surface and how it was built.

    verts:      V x 3   rest-pose vertices (boundary first, then front interior, back interior)
    faces:      F x 3   int64, outward (CCW seen from outside); front faces first, then back
    xy:         V x 2   position in the planar front disk (the front-view silhouette)
    sheet:      V       +1 front interior, -1 back interior, 0 on the outline (both sheets)
    face_sheet: F       +1 front face, -1 back face
    disk_index: V       index of the vertex's planar disk point (back interior -> front twin)
    """

    verts: np.ndarray
    faces: np.ndarray
    xy: np.ndarray
    sheet: np.ndarray
    face_sheet: np.ndarray
    disk_index: np.ndarray


@functools.lru_cache(maxsize=1)
def mannequin_mesh() -> MannequinMesh:
    """Build the closed mannequin surface (6890 vertices, 13776 faces, genus 0); read-only arrays."""
    disk = _front_disk()
    n, m = disk.n_boundary, len(disk.xy)
    k = m - n
    disk_index = np.concatenate([np.arange(m), np.arange(n, m)])
    sheet = np.concatenate([np.zeros(n), np.ones(k), -np.ones(k)]).astype(np.int64)
    xy = disk.xy[disk_index]
    phi, depth = silhouette_field(xy)
    z = _feet_shear(xy[:, 1]) + sheet * depth * np.sqrt(np.clip(phi, 0.0, None))
    back = np.where(disk.tri >= n, disk.tri + k, disk.tri)[:, ::-1]
    faces = np.concatenate([disk.tri, back]).astype(np.int64)
    face_sheet = np.concatenate([np.ones(len(disk.tri)), -np.ones(len(back))]).astype(np.int64)
    mesh = MannequinMesh(verts=np.concatenate([xy, z[:, None]], 1), faces=faces, xy=xy,
                         sheet=sheet, face_sheet=face_sheet, disk_index=disk_index)
    for field in mesh.__dataclass_fields__:
        getattr(mesh, field).flags.writeable = False  # cached and shared: read-only
    return mesh


# ----------------------------------------------------------------------------- skeleton (rig: mannequin_rig)
_LEAF_ENDS = {15: (0.0, 0.50, 0.0), 22: (0.835, 0.22, 0.0), 10: (0.10, -1.15, 0.11)}


def _mirror(p) -> np.ndarray:
    return np.asarray(p, float) * [-1.0, 1.0, 1.0]


def mannequin_joints() -> np.ndarray:
    """Designed rest-pose joint positions in SMPL order (J_regressor @ v_template). -> 24 x 3"""
    j = np.zeros((24, 3))
    for i, p in _JOINTS_MID.items():
        j[i] = p
    for i, p in _JOINTS_LEFT.items():
        j[i], j[i + 1] = p, _mirror(p)
    j[:, 2] += _feet_shear(j[:, 1])  # keep ankles and feet inside the forward-shifted feet
    return j


def _leaf_ends() -> dict[int, np.ndarray]:
    """Designed far ends of the leaf bones (head top, hands, toes), feet sheared. -> {joint: 3}"""
    ends = {i: _mirror(p) if i in RIGHT_JOINTS else np.asarray(p, float)
            for i, p in _LEAF_ENDS.items()}
    for i in (10, 22):
        ends[i + 1] = _mirror(ends[i])
    for i in (10, 11):
        ends[i] = ends[i] + [0.0, 0.0, float(_feet_shear(np.array([ends[i][1]]))[0])]
    return ends


def _head_landmarks() -> list[np.ndarray]:
    """Head top, nose, L/R eye, L/R ear on the rest surface (COCO-plus rows 13..18). -> 6 x 3"""
    def front(x: float, y: float) -> np.ndarray:
        phi, depth = silhouette_field(np.array([[x, y]]))
        return np.array([x, y, depth[0] * np.sqrt(max(phi[0], 0.0))])

    marks = [np.array([0.0, 0.54, 0.0]), front(0.0, 0.415), front(0.032, 0.45),
             front(-0.032, 0.45), np.array([0.087, 0.43, 0.0]), np.array([-0.087, 0.43, 0.0])]
    return marks


@functools.lru_cache(maxsize=4)
def _cached_arrays(seed: int) -> SMPLArrays:
    mesh = mannequin_mesh()
    return rig_arrays(mesh.verts, mesh.faces, mannequin_joints(), _leaf_ends(), _head_landmarks(), seed)


def mannequin_arrays(seed: int = 0) -> SMPLArrays:
    """The mannequin in SMPL's layout (float64; a fresh copy, safe to modify)."""
    cached = _cached_arrays(seed)
    return SMPLArrays(**{k: np.array(getattr(cached, k)) for k in cached.__dataclass_fields__})
