"""Read SMPL model files (official pickles and .npz) into `SMPLArrays`, safely.

Official SMPL pickles are Python-2 pickles (latin1, protocol 2) that hold chumpy `Ch` objects and
scipy sparse matrices. Neither chumpy nor scipy is needed here: a restricted unpickler resolves only
an allow-list of globals — numpy array reconstruction, chumpy and scipy-sparse classes (replaced by
inert stand-ins that merely keep their pickled state) and a few harmless builtins. Any other global
(`os.system`, `builtins.eval`, `subprocess.Popen`, ...) is refused before it is called, so a pickle
that tries to run code raises `WeightsError` and runs nothing.

COCO-plus regressor policy: the HMR/Impersonator `smpl_model.pkl` carries a `cocoplus_regressor`
(19 x 6890). A standard SMPL file (e.g. SMPL_NEUTRAL.pkl / .npz) lacks it; such a file is accepted
only when the caller passes a separate regressor (`cocoplus=`, e.g. the transposed
`smpl.joint_regressor` buffer of `hmr_tf2pt.pth`); otherwise a `WeightsError` says what to do.
We never return a model without it, because the pipeline needs the 19 joints (face crop, j2d).
"""

from __future__ import annotations

import builtins
import codecs
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from impersonator_cli.errors import WeightsError
from impersonator_cli.body.arrays import (
    NUM_BETAS, NUM_COCOPLUS, NUM_FACES, NUM_JOINTS, NUM_POSE_BASIS, NUM_VERTICES,
)
from impersonator_cli.body.arrays import SMPLArrays

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer

_HINT = (
    "Use the official smpl_model.pkl from the Impersonator pretrains.zip, or a standard SMPL neutral "
    "model (.pkl or .npz) together with a COCO-plus regressor."
)

# ------------------------------------------------------------------------------------------------
# Stand-ins: classes the unpickler hands out instead of chumpy / scipy classes. They run no code
# from the file; they only keep the state that BUILD passes to __setstate__.


class _Captured:
    """Base of the inert stand-ins: accepts any constructor arguments, keeps the pickled state."""

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Captured":
        obj = object.__new__(cls)
        obj.__dict__["state"] = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        self.__dict__["state"] = state if isinstance(state, dict) else {"_raw": state}


class ChumpyStandIn(_Captured):
    """A pickled chumpy object; `value()` gives the numpy array it stores."""

    def value(self) -> Any:
        s = self.state
        name = self.qualified_name.rsplit(".", 1)[-1]
        if "x" in s:
            return s["x"]
        if name == "reshape" and "a" in s and "newshape" in s:
            return np.reshape(_plain(s["a"]), s["newshape"])
        if name == "transpose" and "a" in s:
            return np.transpose(_plain(s["a"]), s.get("axes"))
        raise ValueError(f"computed chumpy expression {self.qualified_name} is not supported")


class SparseStandIn(_Captured):
    """A pickled scipy.sparse csc/csr matrix; `value()` densifies it with numpy."""

    major_axis = 1  # csc: compressed columns; csr overrides with 0

    def value(self) -> np.ndarray:
        s = self.state
        shape = tuple(int(n) for n in s.get("_shape", s.get("shape", ())))
        data, indices, indptr = (np.asarray(_plain(s[k])) for k in ("data", "indices", "indptr"))
        if len(shape) != 2 or len(indptr) != shape[self.major_axis] + 1:
            raise ValueError(f"inconsistent sparse matrix (shape {shape}, {len(indptr)} pointers)")
        if len(data) != len(indices) or int(indptr[-1]) != len(data):
            raise ValueError("inconsistent sparse matrix (data / indices / pointers disagree)")
        major = np.repeat(np.arange(shape[self.major_axis]), np.diff(indptr))
        minor_len = shape[1 - self.major_axis]
        if indices.size and (indices.min() < 0 or indices.max() >= minor_len):
            raise ValueError("sparse matrix index out of range")
        dense = np.zeros(shape, dtype=np.result_type(data.dtype, np.float64))
        where = (indices, major) if self.major_axis == 1 else (major, indices)
        np.add.at(dense, where, data)
        return dense


class _CscStandIn(SparseStandIn):
    major_axis = 1


class _CsrStandIn(SparseStandIn):
    major_axis = 0


_CHUMPY_MODULES = ("chumpy.ch", "chumpy.reordering", "chumpy.ch_ops")
_SPARSE_MODULES = ("scipy.sparse", "scipy.sparse.csc", "scipy.sparse.csr", "scipy.sparse._csc",
                   "scipy.sparse._csr")
_SPARSE_CLASSES = {"csc_matrix": _CscStandIn, "csc_array": _CscStandIn,
                   "csr_matrix": _CsrStandIn, "csr_array": _CsrStandIn}
_chumpy_classes: dict[str, type] = {}


def _chumpy_class(module: str, name: str) -> type:
    """One stand-in subclass per chumpy class name (so conversion knows the operation)."""
    qualified = f"{module}.{name}"
    if qualified not in _chumpy_classes:
        _chumpy_classes[qualified] = type(name, (ChumpyStandIn,), {"qualified_name": qualified})
    return _chumpy_classes[qualified]


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """Protocol-0/1 object rebuild (copyreg._reconstructor), only for our stand-ins."""
    if base is object and isinstance(cls, type) and issubclass(cls, _Captured):
        return cls.__new__(cls)
    raise pickle.UnpicklingError(f"unexpected object reconstruction of {cls!r}")


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at protocol 2
    **{(m, "_reconstructor"): _reconstructor for m in ("copy_reg", "copyreg")},
    **{(m, n): getattr(builtins, n)
       for m in ("__builtin__", "builtins") for n in ("object", "set", "frozenset")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals; anything else is a `WeightsError`."""

    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module in _CHUMPY_MODULES and name.isidentifier():
            return _chumpy_class(module, name)
        if module in _SPARSE_MODULES and name in _SPARSE_CLASSES:
            return _SPARSE_CLASSES[name]
        raise WeightsError(
            f"Refusing to load the SMPL pickle: it asks for the Python object '{module}.{name}', "
            "which a model file never needs (the file may try to run code)",
            path=self._path,
            hint="Nothing from it was executed. Use the official SMPL file from a trusted source.",
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in an SMPL pickle")


# ------------------------------------------------------------------------------------------------
# Conversion of the loaded mapping into validated arrays.


def _plain(value: Any) -> Any:
    """Replace stand-ins by the arrays they hold (recursively); other values pass through."""
    for _ in range(64):  # bounded: a crafted pickle may make a stand-in refer to itself
        if not isinstance(value, (ChumpyStandIn, SparseStandIn)):
            return value
        value = value.value()
    raise ValueError("chumpy objects nested too deeply")


def _array(data: Mapping[str, Any], key: str, path: str) -> np.ndarray:
    if key not in data:
        raise WeightsError(f"The SMPL file has no '{key}' array", path=path, hint=_HINT)
    try:
        arr = np.asarray(_plain(data[key]))
    except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
        raise WeightsError(f"Cannot read '{key}' from the SMPL file: {exc}", path=path,
                           hint=_HINT) from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)):
        raise WeightsError(f"The SMPL file's '{key}' is not a numeric array", path=path, hint=_HINT)
    return arr


def _check_shape(arr: np.ndarray, key: str, expected: tuple, path: str) -> None:
    """`expected` may hold None for a free dimension."""
    ok = arr.ndim == len(expected) and all(e is None or e == n for e, n in zip(expected, arr.shape))
    if not ok:
        want = "x".join("*" if e is None else str(e) for e in expected)
        raise WeightsError(
            f"The SMPL file's '{key}' has shape {'x'.join(map(str, arr.shape)) or 'scalar'}, "
            f"expected {want}", path=path, hint=_HINT)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise WeightsError(f"The SMPL file's '{key}' contains NaN or infinite values", path=path,
                           hint=_HINT)


def _parents(kintree: np.ndarray, path: str) -> np.ndarray:
    """Row 0 of kintree_table; the root's parent is stored as -1 or as uint32 4294967295."""
    parents = kintree[0].astype(np.int64)
    parents[0] = -1 if parents[0] in (-1, 2**32 - 1) else parents[0]
    if parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parents[1:], start=1)):
        raise WeightsError("The SMPL file's 'kintree_table' is not a valid kinematic tree",
                           path=path, hint=_HINT)
    return parents


def _cocoplus(data: Mapping[str, Any], cocoplus: Any, path: str) -> np.ndarray:
    if "cocoplus_regressor" in data:
        arr = _array(data, "cocoplus_regressor", path)
    elif cocoplus is not None:
        arr = np.asarray(cocoplus)
    else:
        raise WeightsError(
            "The SMPL file has no 'cocoplus_regressor' (it is a standard SMPL model, not the "
            "Impersonator/HMR smpl_model.pkl)", path=path,
            hint="Use smpl_model.pkl from pretrains.zip, or pass the COCO-plus regressor separately "
                 "(the smpl.joint_regressor buffer of hmr_tf2pt.pth, transposed).")
    _check_shape(arr, "cocoplus_regressor", (NUM_COCOPLUS, NUM_VERTICES), path)
    return arr


def arrays_from_mapping(data: Mapping[str, Any], path: str, cocoplus: Any = None) -> SMPLArrays:
    """Validate the SMPL keys of a loaded file (§1.5) and build `SMPLArrays`.

    Shape directions beyond the first 10 (e.g. 300-beta SMPL 1.1 files) are dropped: the official
    model uses 10 betas.
    """
    if not isinstance(data, Mapping):
        raise WeightsError("The SMPL file does not hold a dictionary of arrays", path=path,
                           hint=_HINT)
    expected = {
        "v_template": (NUM_VERTICES, 3),
        "shapedirs": (NUM_VERTICES, 3, None),
        "posedirs": (NUM_VERTICES, 3, NUM_POSE_BASIS),
        "J_regressor": (NUM_JOINTS, NUM_VERTICES),
        "weights": (NUM_VERTICES, NUM_JOINTS),
        "kintree_table": (2, NUM_JOINTS),
        "f": (NUM_FACES, 3),
    }
    arr = {}
    for key, shape in expected.items():
        arr[key] = _array(data, key, path)
        _check_shape(arr[key], key, shape, path)
    if arr["shapedirs"].shape[2] < NUM_BETAS:
        raise WeightsError(f"The SMPL file's 'shapedirs' has fewer than {NUM_BETAS} shape "
                           "directions", path=path, hint=_HINT)
    faces = arr["f"].astype(np.int64)
    if faces.min() < 0 or faces.max() >= NUM_VERTICES:
        raise WeightsError("The SMPL file's 'f' has vertex indices out of range", path=path,
                           hint=_HINT)
    return SMPLArrays(
        v_template=arr["v_template"], shapedirs=arr["shapedirs"][:, :, :NUM_BETAS],
        posedirs=arr["posedirs"], J_regressor=arr["J_regressor"], weights=arr["weights"],
        parents=_parents(arr["kintree_table"], path), faces=faces,
        cocoplus_regressor=_cocoplus(data, cocoplus, path),
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise WeightsError("The SMPL model file does not exist", path=path, hint=_HINT) from exc
    except OSError as exc:
        raise WeightsError(f"Cannot read the SMPL model file ({exc.strerror})", path=path,
                           hint="Check the file's permissions.") from exc


def load_smpl_pickle(path: str | Path, cocoplus: Any = None) -> SMPLArrays:
    """Load an official SMPL pickle without chumpy/scipy and without running pickled code.

    cocoplus: optional 19 x 6890 regressor used when the pickle has no `cocoplus_regressor`.
    """
    path = Path(path)
    raw = _read_bytes(path)
    try:
        data = RestrictedUnpickler(io.BytesIO(raw), str(path)).load()
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise WeightsError(f"The SMPL pickle is corrupt or not a pickle ({exc})", path=path,
                           hint=_HINT) from exc
    return arrays_from_mapping(data, str(path), cocoplus)


def load_smpl_npz(path: str | Path, cocoplus: Any = None) -> SMPLArrays:
    """Load a standard SMPL .npz (same keys as the pickle; object arrays are refused)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError("The SMPL model file does not exist", path=path, hint=_HINT)
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise WeightsError(f"Cannot read the SMPL .npz file ({exc})", path=path,
                           hint=_HINT) from exc
    return arrays_from_mapping(data, str(path), cocoplus)


def load_smpl_file(path: str | Path, cocoplus: Any = None) -> SMPLArrays:
    """Dispatch on the suffix: `.npz` -> `load_smpl_npz`, anything else -> `load_smpl_pickle`."""
    if Path(path).suffix.lower() == ".npz":
        return load_smpl_npz(path, cocoplus)
    return load_smpl_pickle(path, cocoplus)
