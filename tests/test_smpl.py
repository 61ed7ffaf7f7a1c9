"""SMPL against an independent float64 numpy implementation of the spec formulas (§1.5), for each of
the three array sources; the restricted SMPL unpickler (chumpy / scipy-free, refuses code)."""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import types
from importlib import resources

import numpy as np
import pytest
import torch

from impersonator_cli.body.arrays import SMPL_PARENTS, SMPLArrays
from impersonator_cli.body.smpl import SMPL, batch_rodrigues
from impersonator_cli.body.smpl_pickle import load_smpl_npz, load_smpl_pickle
from impersonator_cli.errors import WeightsError

V, F, J, C = 6890, 13776, 24, 19
TOL = 1e-5


# ------------------------------------------------------------------------------------------------
# Random SMPL-shaped arrays and the reference implementation.


def _sparse_rows(rng: np.random.Generator, rows: int, keep: float) -> np.ndarray:
    m = rng.random((rows, V)) * (rng.random((rows, V)) < keep)
    m[:, 0] += 1e-3  # no empty row
    return m / m.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def arrays() -> SMPLArrays:
    rng = np.random.default_rng(0)
    w = rng.random((V, J)) ** 6
    return SMPLArrays(
        v_template=rng.normal(size=(V, 3)) * 0.4,
        shapedirs=rng.normal(size=(V, 3, 10)) * 0.02,
        posedirs=rng.normal(size=(V, 3, 207)) * 0.01,
        J_regressor=_sparse_rows(rng, J, 0.01),
        weights=w / w.sum(axis=1, keepdims=True),
        parents=SMPL_PARENTS.copy(),
        faces=rng.integers(0, V, size=(F, 3)).astype(np.int64),
        cocoplus_regressor=_sparse_rows(rng, C, 0.01),
    )


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    pose = rng.normal(size=(3, 72)) * 0.6
    pose[0, :3] = [np.pi, 0.0, 0.0]  # HMR-like global rotation
    pose[1] = 0.0  # rest pose (exercises the 1e-8 rule at r = 0)
    betas = rng.normal(size=(3, 10)) * 1.5
    return pose, betas


def ref_rodrigues(r: np.ndarray) -> np.ndarray:
    """N x 3 -> N x 3 x 3, official rule: angle = |r + 1e-8|, axis = r / angle."""
    out = np.empty((len(r), 3, 3))
    for n, vec in enumerate(r):
        angle = np.sqrt(np.sum((vec + 1e-8) ** 2))
        ax, ay, az = vec / angle
        skew = np.array([[0, -az, ay], [az, 0, -ax], [-ay, ax, 0]])
        a = np.array([ax, ay, az])
        out[n] = np.cos(angle) * np.eye(3) + (1 - np.cos(angle)) * np.outer(a, a) + np.sin(angle) * skew
    return out


def ref_smpl(arr: SMPLArrays, pose: np.ndarray, betas: np.ndarray):
    """One body: pose 72, betas 10 -> (vertices V x 3, joints 24 x 3, cocoplus 19 x 3)."""
    v_shaped = arr.v_template + arr.shapedirs @ betas
    joints = arr.J_regressor @ v_shaped
    rots = ref_rodrigues(pose.reshape(24, 3))
    feature = (rots[1:] - np.eye(3)).reshape(-1)
    v_posed = v_shaped + arr.posedirs @ feature
    chain = []
    for i, p in enumerate(arr.parents):
        local = np.eye(4)
        local[:3, :3] = rots[i]
        local[:3, 3] = joints[i] - (joints[p] if p >= 0 else 0)
        chain.append(local if p < 0 else chain[p] @ local)
    posed_joints = np.stack([g[:3, 3] for g in chain])
    rel = np.stack(chain).copy()
    rel[:, :3, 3] -= np.einsum("jab,jb->ja", rel[:, :3, :3], joints)
    per_vertex = (arr.weights @ rel.reshape(24, 16)).reshape(V, 4, 4)
    verts = np.einsum("vab,vb->va", per_vertex[:, :3, :3], v_posed) + per_vertex[:, :3, 3]
    return verts, posed_joints, arr.cocoplus_regressor @ verts


def assert_matches_reference(model: SMPL, arr: SMPLArrays, inputs) -> None:
    pose, betas = inputs
    with torch.no_grad():
        out = model(torch.from_numpy(pose).float(), torch.from_numpy(betas).float())
    for b in range(len(pose)):
        verts, joints, coco = ref_smpl(arr, pose[b], betas[b])
        assert np.abs(out.vertices[b].numpy() - verts).max() <= TOL
        assert np.abs(out.joints[b].numpy() - joints).max() <= TOL
        assert np.abs(out.cocoplus[b].numpy() - coco).max() <= TOL
    assert torch.equal(model.faces, torch.from_numpy(arr.faces))


# ------------------------------------------------------------------------------------------------
# Writing an official-format (Python 2, chumpy + scipy.sparse) pickle without chumpy or scipy.


class FakeCh:
    """Pickles like chumpy.ch.Ch (protocol 2: NEWOBJ + BUILD with its __dict__)."""

    __module__, __qualname__ = "chumpy.ch", "Ch"

    def __init__(self, x):
        self.x = np.asarray(x)
        self._dirty_vars = {"x"}
        self._itr = None
        self._make_dense = False
        self._make_sparse = False
        self._depends_on_deps = {}


class FakeCsc:
    """Pickles like scipy.sparse.csc.csc_matrix (state: _shape, data, indices, indptr, ...)."""

    __module__, __qualname__ = "scipy.sparse.csc", "csc_matrix"

    def __init__(self, dense: np.ndarray):
        cols = [np.nonzero(dense[:, j])[0] for j in range(dense.shape[1])]
        self._shape = dense.shape
        self.indices = np.concatenate(cols).astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int32)
        self.data = np.concatenate([dense[c, j] for j, c in enumerate(cols)])
        self.maxprint = 50
        self.format = "csc"


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python-2 `str` (BINSTRING), as the official pickles hold them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


@pytest.fixture
def fake_modules(monkeypatch):
    """Stand-in modules `chumpy`, `chumpy.ch`, `scipy`, `scipy.sparse`, `scipy.sparse.csc` so the
    pickler records the official global names; monkeypatch removes them afterwards."""
    mods = {name: types.ModuleType(name) for name in
            ("chumpy", "chumpy.ch", "scipy", "scipy.sparse", "scipy.sparse.csc")}
    mods["chumpy.ch"].Ch = FakeCh
    mods["scipy.sparse.csc"].csc_matrix = FakeCsc
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return monkeypatch


def official_dict(arr: SMPLArrays, with_cocoplus: bool = True) -> dict:
    kintree = np.stack([arr.parents, np.arange(24)]).astype(np.int64)
    kintree[0, 0] = 4294967295  # how the official files store the root's parent
    data = {
        "f": arr.faces.astype(np.uint32), "v_template": FakeCh(arr.v_template),
        "shapedirs": FakeCh(arr.shapedirs), "posedirs": arr.posedirs,
        "J_regressor": FakeCsc(arr.J_regressor), "kintree_table": kintree,
        "weights": FakeCh(arr.weights), "bs_style": "lbs", "bs_type": "lrotmin",
        "J": np.zeros((24, 3)), "vert_sym_idxs": np.arange(V),
    }
    if with_cocoplus:
        data["cocoplus_regressor"] = FakeCsc(arr.cocoplus_regressor)
    return data


def write_official_pickle(path, data: dict) -> None:
    buf = open(path, "wb")
    with buf:
        Py2Pickler(buf, protocol=2).dump(data)
    raw = path.read_bytes().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(raw)


# ------------------------------------------------------------------------------------------------
# The three sources.


def test_rodrigues_official_formula():
    r = torch.tensor([[0.0, 0.0, 0.0], [1e-7, -2e-7, 0.0], [0.3, -1.2, 2.0], [np.pi, 0, 0]],
                     dtype=torch.float64)
    got = batch_rodrigues(r).numpy()
    assert np.abs(got - ref_rodrigues(r.numpy())).max() < 1e-15
    # proper rotations
    assert np.allclose(got @ got.transpose(0, 2, 1), np.eye(3), atol=1e-7)


def test_source_a_hmr_state_dict(arrays, inputs):
    sd = {f"smpl.{k}": torch.from_numpy(v) for k, v in arrays.hmr_buffers().items()}
    sd["resnet.conv1.weight"] = torch.zeros(1)  # other HMR entries are ignored
    model = SMPL.from_hmr_state_dict(sd, arrays.faces, arrays.parents)
    assert_matches_reference(model, arrays, inputs)


def test_source_b_official_pickle(arrays, inputs, tmp_path, fake_modules):
    path = tmp_path / "smpl_model.pkl"
    write_official_pickle(path, official_dict(arrays))
    fake_modules.undo()  # load with no chumpy / scipy anywhere
    assert "chumpy" not in sys.modules and "scipy.sparse" not in sys.modules
    raw = path.read_bytes()
    assert b"cchumpy.ch\nCh\n" in raw and b"cscipy.sparse.csc\ncsc_matrix\n" in raw
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    loaded = load_smpl_pickle(path)
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "cocoplus_regressor"):
        assert np.array_equal(getattr(loaded, key), getattr(arrays, key)), key
    assert np.array_equal(loaded.parents, SMPL_PARENTS)
    assert_matches_reference(SMPL.from_pickle(path), arrays, inputs)


def test_source_c_npz(arrays, inputs, tmp_path):
    path = tmp_path / "SMPL_NEUTRAL.npz"
    extra = np.random.default_rng(2).normal(size=(V, 3, 6))  # 16 betas stored, 10 used
    np.savez(path, f=arrays.faces.astype(np.int32), v_template=arrays.v_template,
             shapedirs=np.concatenate([arrays.shapedirs, extra], axis=2), posedirs=arrays.posedirs,
             J_regressor=arrays.J_regressor, weights=arrays.weights,
             kintree_table=np.stack([np.where(arrays.parents < 0, -1, arrays.parents), np.arange(24)]),
             cocoplus_regressor=arrays.cocoplus_regressor)
    assert_matches_reference(SMPL.from_npz(path), arrays, inputs)


def test_buffers_match_the_official_checkpoint_layout(arrays):
    """hmr_tf2pt.pth's smpl.* entries load strictly into SMPL; faces/parents are not persisted."""
    spec = json.loads(resources.files("impersonator_cli.weights").joinpath("official_state_dicts.json")
                      .read_text())["hmr"]
    official = {k[len("smpl."):]: tuple(v) for k, v in spec.items() if k.startswith("smpl.")}
    model = SMPL(arrays)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official
    other = SMPL(SMPLArrays.from_hmr_buffers(
        {k: np.zeros_like(v) for k, v in arrays.hmr_buffers().items()}, arrays.faces))
    other.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(other.shapedirs, model.shapedirs)


def test_get_details_projects_cocoplus(arrays, inputs):
    model = SMPL(arrays)
    pose, betas = (torch.from_numpy(a).float() for a in inputs)
    cam = torch.tensor([[0.9, 0.1, -0.2], [1.1, 0.0, 0.3], [0.5, -0.4, 0.0]])
    with torch.no_grad():
        det = model.get_details(torch.cat([cam, pose, betas], dim=1))
    _, _, coco = ref_smpl(arrays, inputs[0][2], inputs[1][2])
    expected = 0.5 * (coco[:, :2] + np.array([-0.4, 0.0]))
    assert np.abs(det.j2d[2].numpy() - expected).max() <= TOL
    assert torch.equal(det.j3d, model(pose, betas).cocoplus)


# ------------------------------------------------------------------------------------------------
# The restricted unpickler.


def test_chumpy_style_pickle_protocols(arrays, tmp_path, fake_modules):
    """Protocol 0 (copy_reg._reconstructor) and 2 (NEWOBJ) chumpy/scipy pickles both load."""
    paths = []
    for proto in (0, 2):
        path = tmp_path / f"p{proto}.pkl"
        with open(path, "wb") as fh:
            pickle.dump(official_dict(arrays, with_cocoplus=True), fh, protocol=proto)
        paths.append(path)
    fake_modules.undo()
    assert b"copy_reg\n_reconstructor" in paths[0].read_bytes()
    for path in paths:
        loaded = load_smpl_pickle(path)
        assert np.array_equal(loaded.weights, arrays.weights)
        assert np.array_equal(loaded.J_regressor, arrays.J_regressor)


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("func", [os.system, eval, getattr(__import__("subprocess"), "getoutput")],
                         ids=["os.system", "builtins.eval", "subprocess"])
def test_malicious_pickle_is_refused_without_running(tmp_path, func):
    marker = tmp_path / "MARKER"
    cmd = f"touch {marker}"
    arg = f"__import__('os').system({cmd!r})" if func is eval else cmd
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Evil(func, arg)}, protocol=2))
    with pytest.raises(WeightsError) as err:
        load_smpl_pickle(path)
    assert not marker.exists()
    assert str(path) in str(err.value)
    assert func.__name__ in str(err.value)


def test_wrong_shapes_and_missing_keys(arrays, tmp_path):
    def save(name, **override):
        data = dict(f=arrays.faces, v_template=arrays.v_template, shapedirs=arrays.shapedirs,
                    posedirs=arrays.posedirs, J_regressor=arrays.J_regressor, weights=arrays.weights,
                    kintree_table=np.stack([arrays.parents, np.arange(24)]))
        data.update(override)
        path = tmp_path / name
        np.savez(path, **{k: v for k, v in data.items() if v is not None})
        return path

    with pytest.raises(WeightsError, match="'posedirs'") as err:
        load_smpl_npz(save("a.npz", posedirs=arrays.posedirs[:, :, :200]))
    assert "a.npz" in str(err.value)
    with pytest.raises(WeightsError, match="'J_regressor'"):
        load_smpl_npz(save("b.npz", J_regressor=arrays.J_regressor.T))
    with pytest.raises(WeightsError, match="'weights'"):
        load_smpl_npz(save("c.npz", weights=None))
    # a standard SMPL file without the COCO-plus regressor: refused, or accepted when one is given
    with pytest.raises(WeightsError, match="cocoplus_regressor"):
        load_smpl_npz(save("d.npz"))
    loaded = load_smpl_npz(save("e.npz"), cocoplus=arrays.cocoplus_regressor)
    assert np.array_equal(loaded.cocoplus_regressor, arrays.cocoplus_regressor)
    with pytest.raises(WeightsError, match="'cocoplus_regressor'"):
        load_smpl_npz(save("f.npz"), cocoplus=arrays.cocoplus_regressor[:18])
    with pytest.raises(WeightsError, match="smpl.weights"):
        bufs = arrays.hmr_buffers()
        bufs["weights"] = bufs["weights"][:, :23]
        SMPL.from_hmr_state_dict(bufs, arrays.faces)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(WeightsError, match="corrupt"):
        load_smpl_pickle(bad)
    with pytest.raises(WeightsError, match="does not exist"):
        load_smpl_pickle(tmp_path / "missing.pkl")
    listing = tmp_path / "list.pkl"
    listing.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(WeightsError, match="dictionary"):
        load_smpl_pickle(listing)
