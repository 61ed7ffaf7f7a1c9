"""The procedural mannequin: topology, geometry, rig and the official-format assets."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from smplx.lbs import lbs

from impersonator_cli.demo import mannequin as mq
from impersonator_cli.demo import mannequin_assets as ma
from impersonator_cli.body.arrays import NUM_FACES, NUM_VERTICES, SMPL_PARENTS


@pytest.fixture(scope="module")
def arrays():
    return mq.mannequin_arrays()


@pytest.fixture(scope="module")
def assets(demo_world):
    """The files write_mannequin_assets wrote into the shared demo world (read only)."""
    names = ("smpl_model.pkl", "smpl_faces.npy", "mapper.txt", "smpl_part_info.json", "front_facial.json", "head.json")
    return {name: demo_world.files.weights_dir / name for name in names}


def _edges(faces: np.ndarray) -> np.ndarray:
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def _pose(a, pose: np.ndarray, betas: np.ndarray | None = None) -> np.ndarray:
    betas = np.zeros(10) if betas is None else betas
    verts, _ = lbs(torch.tensor(betas[None]), torch.tensor(pose[None]), torch.tensor(a.v_template),
                   torch.tensor(a.shapedirs), torch.tensor(a.posedirs.reshape(-1, 207).T),
                   torch.tensor(a.J_regressor), torch.tensor(a.parents), torch.tensor(a.weights))
    return verts[0].numpy()


def _inside(points: np.ndarray, v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Ray casting (+x, slightly tilted) parity test against the mesh. points: P x 3 -> P bool."""
    d = np.array([1.0, 0.0123, 0.0071])
    p0, e1, e2 = v[f[:, 0]], v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    h = np.cross(d, e2)
    det = (e1 * h).sum(1)
    out = []
    for p in points:
        s = p - p0
        u = (s * h).sum(1) / det
        q = np.cross(s, e1)
        w = (q @ d) / det
        t = (q * e2).sum(1) / det
        out.append(((u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)).sum() % 2 == 1)
    return np.array(out)


def test_counts_and_closed_oriented_manifold(arrays):
    v, f = arrays.v_template, arrays.faces
    assert v.shape == (NUM_VERTICES, 3) and f.shape == (NUM_FACES, 3) and f.dtype == np.int64
    e = _edges(f)
    key = e[:, 0] * NUM_VERTICES + e[:, 1]
    assert len(np.unique(key)) == len(key)  # no directed edge twice: consistent orientation
    assert np.isin(e[:, 1] * NUM_VERTICES + e[:, 0], key).all()  # each edge has its opposite
    n_edges = len(key) // 2
    assert NUM_VERTICES - n_edges + NUM_FACES == 2  # Euler characteristic of a sphere
    assert len(np.unique(f)) == NUM_VERTICES


def test_connected(arrays):
    parent = np.arange(NUM_VERTICES)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in _edges(arrays.faces):
        parent[root(a)] = root(b)
    assert len({root(i) for i in range(NUM_VERTICES)}) == 1


def test_outward_non_degenerate_and_not_self_intersecting(arrays):
    v, f = arrays.v_template, arrays.faces
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert (np.einsum("ij,ij->i", v[f[:, 0]], cross).sum() / 6) > 0.04  # volume, m^3
    assert np.linalg.norm(cross, axis=1).min() / 2 > 1e-7
    mesh = mq.mannequin_mesh()
    # Both sheets are graphs over one planar disk; positive planar area of every front face
    # means the disk is embedded, so the closed surface cannot cross itself.
    front = mesh.faces[mesh.face_sheet > 0]
    xy = mesh.xy
    e1, e2 = xy[front[:, 1]] - xy[front[:, 0]], xy[front[:, 2]] - xy[front[:, 0]]
    assert (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).min() > 0
    z_front = v[mesh.sheet > 0, 2]
    z_back = v[mesh.sheet < 0, 2]
    assert (z_front > z_back).all()


def test_person_shape_in_smpl_rest_frame(arrays):
    v, j = arrays.v_template, mq.mannequin_joints()
    assert 1.6 < v[:, 1].max() - v[:, 1].min() < 1.8
    assert np.abs(j[0]).max() < 0.3  # pelvis near the origin
    assert j[15, 1] > j[12, 1] > j[16, 1] > j[0, 1] > j[4, 1] > j[7, 1]  # head > neck > ... ankle
    assert j[16, 0] > 0 > j[17, 0] and j[22, 0] > 0.7  # T-pose, left arm towards +x
    assert np.allclose(j[[16, 18, 20, 22], 1], j[16, 1], atol=0.01)  # arms horizontal
    assert _inside(j, v, arrays.faces).all()


def test_regressors(arrays):
    v = arrays.v_template
    for reg in (arrays.J_regressor, arrays.cocoplus_regressor):
        assert reg.min() >= 0 and np.allclose(reg.sum(1), 1.0)
    assert np.abs(arrays.J_regressor @ v - mq.mannequin_joints()).max() < 1e-6
    coco = arrays.cocoplus_regressor @ v
    joints = mq.mannequin_joints()
    assert np.allclose(coco[[0, 5, 6, 11, 12]], joints[[8, 7, 21, 20, 12]])
    assert (coco[13:, 1] > joints[12, 1]).all()  # head landmarks above the neck
    assert coco[13, 1] > coco[15, 1] > coco[14, 1]  # head top > eyes > nose
    assert (coco[14:17, 2] > 0.06).all()  # nose and eyes on the front of the head
    assert coco[15, 0] > 0 > coco[16, 0] and coco[17, 0] > 0 > coco[18, 0]  # L is +x


def test_skinning_weights(arrays):
    w = arrays.weights
    assert w.min() >= 0 and np.allclose(w.sum(1), 1.0) and (w > 0).sum(1).max() <= 4
    v = arrays.v_template
    assert (w[v[:, 0] > 0.8].argmax(1) == 22).all() and (w[v[:, 0] < -0.8].argmax(1) == 23).all()
    assert np.array_equal(arrays.parents, SMPL_PARENTS)


def test_posing_with_smplx_lbs(arrays):
    v = arrays.v_template
    assert np.abs(_pose(arrays, np.zeros(72)) - v).max() < 1e-10
    pose = np.zeros(72)
    pose[18 * 3 + 1] = np.pi / 2  # left elbow, 90 degrees about y
    posed = _pose(arrays, pose)
    moved = np.linalg.norm(posed - v, axis=1)
    assert moved[v[:, 0] > 0.6].min() > 0.1  # forearm and hand swing
    assert moved[v[:, 1] < -0.4].max() < 1e-9 and moved[v[:, 0] < 0].max() < 1e-9
    elbow = mq.mannequin_joints()[18]
    tip = np.argmax(v[:, 0])
    rot = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    assert np.linalg.norm(posed[tip] - (elbow + rot @ (v[tip] - elbow))) < 0.01


def test_shape_directions(arrays):
    taller = _pose(arrays, np.zeros(72), np.eye(10)[0])
    height = lambda x: x[:, 1].max() - x[:, 1].min()  # noqa: E731
    assert height(taller) > height(arrays.v_template) + 0.04
    f = arrays.faces
    for k in range(10):
        for sign in (-3, 3):
            x = arrays.v_template + sign * arrays.shapedirs[:, :, k]
            area = np.linalg.norm(np.cross(x[f[:, 1]] - x[f[:, 0]], x[f[:, 2]] - x[f[:, 0]]), axis=1)
            assert area.min() > 0
        assert np.abs(arrays.shapedirs[:, :, k]).max() > 0.005
    assert 0 < np.abs(arrays.posedirs).max() < 0.02


def test_determinism():
    a, b, c = mq.mannequin_arrays(0), mq.mannequin_arrays(0), mq.mannequin_arrays(1)
    assert np.array_equal(a.posedirs, b.posedirs) and np.array_equal(a.v_template, c.v_template)
    assert not np.array_equal(a.posedirs, c.posedirs)
    a.v_template[0] = 99.0  # callers get copies
    assert mq.mannequin_arrays(0).v_template[0, 0] != 99.0


def test_parts_and_face_regions(arrays):
    parts = ma.mannequin_parts()
    assert sorted(parts) == list(ma.PART_NAMES)
    all_faces = np.sort(np.concatenate(list(parts.values())))
    assert np.array_equal(all_faces, np.arange(NUM_FACES))
    centre = arrays.v_template[arrays.faces].mean(1)
    j = mq.mannequin_joints()
    assert (centre[parts["00_head"], 1] > j[16, 1]).all()
    assert (centre[parts["04_left_arm"], 0] > 0.15).all() and (centre[parts["05_right_arm"], 0] < -0.15).all()
    assert (centre[parts["06_left_foot"], 1] < j[4, 1]).all()
    head, front = set(ma.head_faces().tolist()), ma.front_facial_faces()
    assert len(front) > 50 and set(front.tolist()) <= head
    tri = arrays.v_template[arrays.faces[front]]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert (normal[:, 2] > 0).all() and (centre[front, 2] > 0.02).all()  # on the front


def test_uv_layout(arrays):
    vt, face_vt = ma.mannequin_uv()
    assert vt.min() >= 0 and vt.max() <= 1 and face_vt.max() < len(vt) > NUM_VERTICES
    mesh = mq.mannequin_mesh()
    u = vt[face_vt][..., 0].mean(1)
    assert (u[mesh.face_sheet > 0] < 0.5).all() and (u[mesh.face_sheet < 0] > 0.5).all()
    # Inside a chart every vertex has one UV: neighbouring faces agree on shared corners.
    for sheet in (1, -1):
        fv, ft = arrays.faces[mesh.face_sheet == sheet].ravel(), face_vt[mesh.face_sheet == sheet].ravel()
        pairs = np.unique(np.stack([fv, ft], 1), axis=0)
        assert len(pairs) == len(np.unique(fv))
    # The condition-map value (midpoint of the first two UV corners) varies smoothly.
    mid = vt[face_vt[:, :2]].mean(1)
    assert np.abs(mid - vt[face_vt].mean(1)).max() < 0.02


def test_texture(arrays):
    tex = ma.mannequin_texture(256)
    assert tex.shape == (256, 256, 3) and tex.dtype == np.uint8
    colours = ma.texture_colors_per_face(256)
    ids = ma.face_part_ids()
    for k in range(10):
        match = np.all(colours[ids == k] == ma.PART_COLOURS[k], axis=1).mean()
        assert match > 0.5 or k == 0  # the head also carries hair and facial features


def test_written_assets_round_trip(arrays, assets):
    with open(assets["smpl_model.pkl"], "rb") as fh:
        data = pickle.load(fh, encoding="latin1")
    shapes = {"f": (13776, 3), "v_template": (6890, 3), "shapedirs": (6890, 3, 10),
              "J_regressor": (24, 6890), "posedirs": (6890, 3, 207), "kintree_table": (2, 24),
              "weights": (6890, 24), "cocoplus_regressor": (19, 6890)}
    for key, shape in shapes.items():
        assert data[key].shape == shape, key
    assert np.array_equal(data["kintree_table"][0].astype(np.int32), SMPL_PARENTS)
    assert np.array_equal(data["f"].astype(np.int64), arrays.faces)
    assert np.allclose(data["J_regressor"], arrays.J_regressor)
    assert np.array_equal(np.load(assets["smpl_faces.npy"]), arrays.faces)
    info = json.loads(assets["smpl_part_info.json"].read_text())
    assert sorted(info) == list(ma.PART_NAMES)
    assert sorted(sum((p["face"] for p in info.values()), [])) == list(range(NUM_FACES))
    front = json.loads(assets["front_facial.json"].read_text())["face"]
    head = json.loads(assets["head.json"].read_text())["face"]
    assert set(front) <= set(head)


def test_mapper_txt(assets):
    counts = {"v": 0, "vn": 0, "vt": 0, "f": 0}
    refs = []
    for line in assets["mapper.txt"].read_text().splitlines():
        tag, *rest = line.split()
        counts[tag] += 1
        if tag == "f":
            refs.append([list(map(int, r.split("/"))) for r in rest])
    assert counts["v"] == 6890 and counts["f"] == 13776 and counts["vn"] == 6890
    refs = np.array(refs)
    assert refs.min() >= 1 and refs[..., 0].max() <= 6890 and refs[..., 2].max() <= 6890
    assert refs[..., 1].max() <= counts["vt"]
    vt, face_vt = ma.mannequin_uv()
    assert np.array_equal(refs[..., 1] - 1, face_vt)
