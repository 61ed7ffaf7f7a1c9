"""Test helper: random checkpoints and assets in the official release's formats, and release-like zips.

Checkpoints follow impersonator_cli/weights/official_state_dicts.json key by key (full size, small
random values); assets have the official shapes (13776 faces, OBJ-like mapper, part/face JSONs).
Nothing here is real data.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from impersonator_cli.weights.checkpoints import expected_shapes

NUM_FACES, NUM_VERTICES, NUM_VT = 13776, 6890, 7576
SPHEREFACE_FC6 = {"fc6.weight": (16, 512)}  # the classifier head shipped in the file (dropped on load)


def random_state_dict(section: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every official key of `section` with its exact shape; floats uniform in [-0.05, 0.05)."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.empty(1 << 20).uniform_(-0.05, 0.05, generator=gen)  # tiled: fast for 100M-value files
    out = {}
    for key, shape in expected_shapes(section).items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(int(torch.randint(1, 10_000, (), generator=gen)), dtype=torch.int64)
            continue
        out[key] = _tiled(pool, int(np.prod(shape)), int(torch.randint(0, pool.numel(), (), generator=gen)))
        out[key] = out[key].reshape(shape)
    return out


def _tiled(pool: torch.Tensor, n: int, start: int) -> torch.Tensor:
    """n values read cyclically from `pool` starting at `start` (a fresh tensor)."""
    flat, done, m = torch.empty(n), 0, pool.numel()
    while done < n:
        take = min(n - done, m - start)
        flat[done:done + take] = pool[start:start + take]
        done, start = done + take, 0
    return flat


def write_checkpoint(path: Path, section: str, *, seed: int = 0, module_prefix: bool = False,
                     legacy: bool = False, drop_num_batches: bool = False, wrong_shape: str | None = None,
                     wrapped: bool = False) -> dict[str, torch.Tensor]:
    """Write an official-format checkpoint; return what a correct loader must produce from it.

    module_prefix: keys saved as `module.<key>` (DataParallel); legacy: torch's pre-1.6 file format
    (what torch 1.2 wrote); drop_num_batches: BatchNorm counters left out (loader fills 0);
    wrong_shape: this key gets one extra row; wrapped: saved as {'state_dict': ...}.
    """
    ref = random_state_dict(section, seed)
    saved = dict(ref)
    if drop_num_batches:
        saved = {k: v for k, v in saved.items() if not k.endswith("num_batches_tracked")}
        ref = {k: (torch.zeros((), dtype=torch.int64) if k.endswith("num_batches_tracked") else v)
               for k, v in ref.items()}
    if wrong_shape is not None:
        v = saved[wrong_shape]
        saved[wrong_shape] = torch.zeros((v.shape[0] + 1, *v.shape[1:]))
    if section == "face_sphere20a":
        saved.update({k: torch.ones(s) for k, s in SPHEREFACE_FC6.items()})
    if module_prefix:
        saved = {f"module.{k}": v for k, v in saved.items()}
    obj = {"state_dict": saved} if wrapped else saved
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return ref


def write_assets(folder: Path, seed: int = 0) -> dict[str, Path]:
    """smpl_faces.npy, mapper.txt, part/face JSONs and a (fake, plain) smpl_model.pkl."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    faces = rng.integers(0, NUM_VERTICES, size=(NUM_FACES, 3)).astype(np.int32)
    np.save(folder / "smpl_faces.npy", faces)
    (folder / "mapper.txt").write_text(_mapper_text(faces, rng))
    bounds = np.linspace(0, NUM_FACES, 11).astype(int)
    parts = {f"{i:02d}_part": {"vertex": list(range(i * 10, i * 10 + 10)),
                               "face": list(range(int(bounds[i]), int(bounds[i + 1])))} for i in range(10)}
    (folder / "smpl_part_info.json").write_text(json.dumps(parts))
    (folder / "front_facial.json").write_text(json.dumps({"face": list(range(0, 1324))}))
    (folder / "head.json").write_text(json.dumps({"face": list(range(0, 2620))}))
    (folder / "front_face_1.json").write_text(json.dumps({"face": list(range(0, 900))}))
    kintree = np.stack([np.array([-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]),
                        np.arange(24)])
    with open(folder / "smpl_model.pkl", "wb") as fh:
        pickle.dump({"f": faces.astype(np.uint32), "kintree_table": kintree}, fh, protocol=2)
    return {p.name: p for p in folder.iterdir()}


def _mapper_text(faces: np.ndarray, rng: np.random.Generator) -> str:
    v = "\n".join(f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in rng.random((NUM_VERTICES, 3)))
    vt = "\n".join(f"vt {a:.6f} {b:.6f}" for a, b in rng.random((NUM_VT, 2)))
    uv = rng.integers(1, NUM_VT + 1, size=faces.shape)
    f = "\n".join("f " + " ".join(f"{fv + 1}/{t}/{fv + 1}" for fv, t in zip(row, trow))
                  for row, trow in zip(faces, uv))
    return f"{v}\n{vt}\n{f}\n"


def build_zip(zip_path: Path, members: dict[str, Path | bytes]) -> Path:
    """A stored (uncompressed) zip: arcname -> file or raw bytes; arcnames are written verbatim."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as zf:
        for arcname, content in members.items():
            if isinstance(content, bytes):
                zf.writestr(zipfile.ZipInfo(arcname), content)
            else:
                zf.write(content, arcname)
    return zip_path


def pretrains_members(assets: dict[str, Path], hmr: Path, sphereface: Path | None = None,
                      top: str = "pretrains") -> dict[str, Path]:
    members = {f"{top}/{name}": path for name, path in assets.items()}
    members[f"{top}/hmr_tf2pt.pth"] = hmr
    if sphereface is not None:
        members[f"{top}/sphere20a_20171020.pth"] = sphereface
    return members


def checkpoints_members(generators: dict[str, Path], deepfill: Path, top: str = "checkpoints") -> dict[str, Path]:
    """generators: official folder name (lwb_imper, lwb_imper_place, lwb_imper_fashion_place) -> file."""
    members = {f"{top}/{folder}/net_epoch_30_id_G.pth": path for folder, path in generators.items()}
    members[f"{top}/deepfillv2/net_epoch_50_id_G.pth"] = deepfill
    return members


@contextlib.contextmanager
def scratch_dir(fallback: Path, need_bytes: int = 4 << 30) -> Iterator[Path]:
    """A folder for ~GB of test files: RAM-backed /dev/shm when it has room (disk writes on small CI
    machines are several times slower), else `fallback`. Removed afterwards either way."""
    shm = Path("/dev/shm")
    use_shm = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > need_bytes
    folder = Path(tempfile.mkdtemp(prefix="impersonate-test-", dir=shm if use_shm else fallback))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
