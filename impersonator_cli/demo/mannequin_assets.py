"""The mannequin's assets: UV layout, body parts, face regions, texture, and the official files.

`write_mannequin_assets` writes the same files, in the same formats, as the official release's
`assets/pretrains/` (smpl_model.pkl, smpl_faces.npy, mapper.txt, smpl_part_info.json,
front_facial.json, head.json), so the mannequin goes through the same loaders as real SMPL data.
"""

from __future__ import annotations

import functools
import json
import pickle
from pathlib import Path

import cv2
import numpy as np

from impersonator_cli.demo import mannequin as mq
from impersonator_cli.body.arrays import SMPL_PARENTS

PART_NAMES = ("00_head", "01_torso", "02_left_leg", "03_right_leg", "04_left_arm", "05_right_arm",
              "06_left_foot", "07_right_foot", "08_left_hand", "09_right_hand")
# Part of each SMPL joint's region (neck goes with the head, collars with the torso).
JOINT_PART = np.array([1, 2, 3, 1, 2, 3, 1, 6, 7, 1, 6, 7, 0, 1, 1, 0, 4, 5, 4, 5, 8, 9, 8, 9])
PART_COLOURS = np.array([(238, 200, 160), (40, 110, 200), (50, 60, 150), (150, 60, 50),
                         (60, 170, 80), (200, 170, 40), (90, 90, 90), (140, 140, 140),
                         (230, 120, 170), (120, 210, 220)], np.uint8)  # RGB per part
KINTREE_ROOT = 4294967295  # how SMPL pickles store the root's parent (uint32 -1)


@functools.lru_cache(maxsize=1)
def face_part_ids() -> np.ndarray:
    """Part index (into PART_NAMES) of every face: the part of its dominant joint. -> F"""
    arrays = mq.mannequin_arrays()
    dominant = arrays.weights[arrays.faces].sum(1).argmax(1)
    return JOINT_PART[dominant]


def mannequin_parts() -> dict[str, np.ndarray]:
    """{part name: face ids}, the 10 parts of smpl_part_info.json, covering every face once."""
    ids = face_part_ids()
    return {name: np.nonzero(ids == k)[0] for k, name in enumerate(PART_NAMES)}


def head_faces() -> np.ndarray:
    """Faces of the whole head (part 00_head, neck included)."""
    return np.nonzero(face_part_ids() == 0)[0]


def front_facial_faces() -> np.ndarray:
    """Faces of the front of the face: forward-facing head faces between chin and hairline."""
    mesh = mq.mannequin_mesh()
    tri = mesh.verts[mesh.faces]
    centre = tri.mean(1)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    facing = normal[:, 2] > 0.5 * np.linalg.norm(normal, axis=1)
    region = (centre[:, 1] > 0.34) & (centre[:, 1] < 0.51) & (np.abs(centre[:, 0]) < 0.07)
    return np.nonzero((face_part_ids() == 0) & (mesh.face_sheet > 0) & facing & region)[0]


def _uv_frame() -> tuple[float, float]:
    """(scale, y_mid) of the chart map u = 0.25 +- x * scale, v = 0.5 + (y - y_mid) * scale."""
    xy = mq.mannequin_mesh().xy
    return 0.24 / np.abs(xy[:, 0]).max(), 0.5 * (xy[:, 1].min() + xy[:, 1].max())


def _chart(x, y, back: bool) -> np.ndarray:
    """Body-plane (x, y) to UV on the front chart or the (mirrored) back chart. -> ... x 2"""
    scale, y_mid = _uv_frame()
    u = 0.75 - np.asarray(x) * scale if back else 0.25 + np.asarray(x) * scale
    return np.stack(np.broadcast_arrays(u, 0.5 + (np.asarray(y) - y_mid) * scale), -1)


@functools.lru_cache(maxsize=1)
def _uv() -> tuple[np.ndarray, np.ndarray]:
    mesh = mq.mannequin_mesh()
    n_disk = int(mesh.disk_index.max()) + 1
    disk_xy = np.zeros((n_disk, 2))
    disk_xy[mesh.disk_index] = mesh.xy
    vt = np.concatenate([_chart(disk_xy[:, 0], disk_xy[:, 1], False),
                         _chart(disk_xy[:, 0], disk_xy[:, 1], True)])
    face_vt = mesh.disk_index[mesh.faces] + np.where(mesh.face_sheet > 0, 0, n_disk)[:, None]
    return vt, face_vt


def mannequin_uv() -> tuple[np.ndarray, np.ndarray]:
    """UV layout: front sheet in the left half of [0,1]^2, back sheet (mirrored) in the right
    half; outline vertices appear in both charts. -> (vt: M x 2 (u, v up), face_vt: F x 3)"""
    vt, face_vt = _uv()
    return vt.copy(), face_vt.copy()


def _uv_pixels(uv: np.ndarray, size: int) -> np.ndarray:
    """UV (v up) to image pixel coordinates (x right, row down)."""
    return np.stack([uv[..., 0] * size, (1.0 - uv[..., 1]) * size], -1)


@functools.lru_cache(maxsize=4)
def _texture(size: int) -> np.ndarray:
    vt, face_vt = _uv()
    img = np.full((size, size, 3), 255, np.uint8)
    tri = np.round(_uv_pixels(vt[face_vt], size) * 16).astype(np.int32)
    colours = PART_COLOURS[face_part_ids()]
    for k in np.argsort(face_part_ids(), kind="stable"):
        cv2.fillPoly(img, [tri[k]], colours[k].tolist(), lineType=cv2.LINE_8, shift=4)
    body = (img != 255).any(-1)
    step = max(size // 32, 2)
    grid = np.zeros_like(body)
    grid[::step], grid[:, ::step] = True, True
    img[grid & body] = (img[grid & body] * 0.55).astype(np.uint8)
    _paint_face(img, size)
    return img


def _paint_face(img: np.ndarray, size: int) -> None:
    """Eyes, nose, mouth on the front chart's head; hair on both charts' crowns."""
    scale = _uv_frame()[0] * size

    def px(x: float, y: float, back: bool = False) -> tuple[int, int]:
        return tuple(int(c) for c in _uv_pixels(_chart(x, y, back), size))

    r = max(int(0.012 * scale), 1)
    for back in (False, True):
        cv2.ellipse(img, px(0.0, 0.47, back), (int(0.09 * scale), int(0.075 * scale)),
                    0, 180, 360, (70, 40, 20), -1)
    for sx in (-1, 1):
        cv2.circle(img, px(0.032 * sx, 0.45), r + 1, (255, 255, 255), -1)
        cv2.circle(img, px(0.032 * sx, 0.45), max(r // 2, 1), (20, 20, 20), -1)
    cv2.line(img, px(0.0, 0.445), px(0.0, 0.415), (150, 90, 70), max(r // 2, 1))
    cv2.ellipse(img, px(0.0, 0.385), (2 * r, max(r // 2, 1)), 0, 0, 360, (200, 30, 40), -1)


def mannequin_texture(size: int = 512) -> np.ndarray:
    """A colourful UV texture (RGB uint8, size x size): one colour per part, a grid, a face on
    the front of the head and hair. Row 0 is v = 1 (image convention)."""
    return _texture(size).copy()


def texture_colors_per_face(size: int = 512) -> np.ndarray:
    """Texture colour at each face's UV centroid. -> F x 3 uint8 (RGB)"""
    vt, face_vt = _uv()
    pix = np.clip(_uv_pixels(vt[face_vt].mean(1), size).astype(int), 0, size - 1)
    return _texture(size)[pix[:, 1], pix[:, 0]].copy()


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals. verts: V x 3, faces: F x 3 -> V x 3"""
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    vn = np.zeros_like(verts)
    for c in range(3):
        np.add.at(vn, faces[:, c], fn)
    return vn / np.linalg.norm(vn, axis=1, keepdims=True)


def smpl_pickle_dict(seed: int = 0) -> dict:
    """The mannequin as the dict stored in the official smpl_model.pkl (plain numpy arrays;
    kintree_table row 0 holds the parents with the root stored as 4294967295, as SMPL does)."""
    a = mq.mannequin_arrays(seed)
    parents = np.where(SMPL_PARENTS < 0, KINTREE_ROOT, SMPL_PARENTS).astype(np.int64)
    return {
        "f": a.faces.astype(np.uint32),
        "v_template": a.v_template,
        "shapedirs": a.shapedirs,
        "J_regressor": a.J_regressor,
        "posedirs": a.posedirs,
        "kintree_table": np.stack([parents, np.arange(24, dtype=np.int64)]),
        "weights": a.weights,
        "cocoplus_regressor": a.cocoplus_regressor,
        "J": a.J_regressor @ a.v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def mapper_text() -> str:
    """mapper.txt: OBJ-like `v`, `vn`, `vt` and `f v/vt/vn` lines (1-based)."""
    a = mq.mannequin_arrays()
    vt, face_vt = _uv()
    vn = vertex_normals(a.v_template, a.faces)
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in a.v_template]
    lines += [f"vn {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vn]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in vt]
    f1, t1 = a.faces + 1, face_vt + 1
    lines += [" ".join(["f"] + [f"{f1[k, c]}/{t1[k, c]}/{f1[k, c]}" for c in range(3)])
              for k in range(len(f1))]
    return "\n".join(lines) + "\n"


def write_mannequin_assets(folder) -> dict[str, Path]:
    """Write the mannequin's assets under the official file names. -> {file name: path}"""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    faces = mq.mannequin_arrays().faces
    paths = {name: folder / name for name in ("smpl_model.pkl", "smpl_faces.npy", "mapper.txt",
                                              "smpl_part_info.json", "front_facial.json", "head.json")}
    with open(paths["smpl_model.pkl"], "wb") as fh:
        pickle.dump(smpl_pickle_dict(), fh, protocol=2)
    np.save(paths["smpl_faces.npy"], faces.astype(np.int32))
    paths["mapper.txt"].write_text(mapper_text())
    info = {name: {"vertex": np.unique(faces[ids]).tolist(), "face": ids.tolist()}
            for name, ids in mannequin_parts().items()}
    paths["smpl_part_info.json"].write_text(json.dumps(info))
    paths["front_facial.json"].write_text(json.dumps({"face": front_facial_faces().tolist()}))
    paths["head.json"].write_text(json.dumps({"face": head_faces().tolist()}))
    return paths
