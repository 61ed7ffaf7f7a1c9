"""Load everything stage 1 and stage 2 need about the body, once: SMPL, faces, maps and (lazily) HMR.

The same loader reads the official release files and the mannequin's files (written in the official
formats by `mannequin.write_mannequin_assets`), so tests and the demo exercise the real path.
SMPL arrays come from the HMR checkpoint's buffers when it is present (what the official code
computes with), otherwise from `smpl_model.pkl`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from impersonator_cli.weights import registry
from impersonator_cli.weights import store as weights
from impersonator_cli.errors import WeightsError
from impersonator_cli.render.maps import MeshMaps, load_mesh_assets
from impersonator_cli.render.rasterize import rasterize
from impersonator_cli.body.hmr import HMR, load_hmr, smpl_arrays_from_hmr
from impersonator_cli.body.smpl import SMPL
from impersonator_cli.body.smpl_pickle import load_smpl_file

ASSET_NAMES = ("smpl_faces", "uv_mapper", "part_info", "front_facial", "head")


@dataclass
class BodyModel:
    """SMPL + mesh maps on one device; HMR is loaded only when a body must be recovered from pixels."""

    smpl: SMPL
    maps: MeshMaps
    device: torch.device
    weights_dir: Path | None = None
    rasterizer: Callable = rasterize
    _hmr: HMR | None = field(default=None, repr=False)

    @property
    def faces(self) -> torch.Tensor:
        return self.smpl.faces

    def hmr(self) -> HMR:
        """The HMR network (loads `hmr` from the weights folder on first use)."""
        if self._hmr is None:
            self._hmr = load_hmr(weights.resolve("hmr", self.weights_dir), device=self.device)
        return self._hmr


def _asset_folder(weights_dir: Path | None) -> Path:
    """The folder holding the mesh assets (all five must sit together, as in the release)."""
    missing = [registry.get(name).local_name for name in ASSET_NAMES if weights.find(name, weights_dir) is None]
    if len(missing) > 1:
        raise WeightsError(
            f"The mesh assets {', '.join(missing)} (from pretrains.zip) were not found (looked in {_where(weights_dir)})",
            hint=weights.route(weights_dir))
    paths = [weights.resolve(name, weights_dir) for name in ASSET_NAMES]
    folders = {p.parent for p in paths}
    if len(folders) != 1:
        raise WeightsError(
            "The mesh assets (smpl_faces.npy, mapper.txt, smpl_part_info.json, front_facial.json, head.json) "
            f"were found in different folders: {', '.join(sorted(map(str, folders)))}",
            hint="Keep them together in one weights folder (`impersonate weights import pretrains.zip`).")
    return folders.pop()


def _where(weights_dir: Path | None) -> str:
    return ", ".join(str(p) for p in weights.search_dirs(weights_dir)) or "no folder"


def _smpl_arrays(weights_dir: Path | None, faces: np.ndarray):
    hmr_path = weights.find("hmr", weights_dir)
    if hmr_path is not None:
        from impersonator_cli.weights.checkpoints import load_converted

        return smpl_arrays_from_hmr(load_converted(hmr_path), faces)
    pkl = weights.find("smpl_model", weights_dir)
    if pkl is None:
        raise WeightsError(
            "No SMPL model data: neither the HMR weights (hmr.safetensors) nor smpl_model.pkl were found",
            hint=weights.route(weights_dir))
    arrays = load_smpl_file(pkl)
    if arrays.faces.shape != faces.shape or not np.array_equal(arrays.faces, faces):
        raise WeightsError("smpl_model.pkl and smpl_faces.npy disagree on the triangle list", path=pkl,
                           hint="Use the files of one release together.")
    return arrays


def _read_faces(path: Path, expected_shape: tuple[int, ...]) -> np.ndarray:
    try:
        faces = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise WeightsError("Cannot read the triangle list", path=path,
                           hint="Import the official release again: `impersonate weights import pretrains.zip`.") from exc
    if faces.shape != tuple(expected_shape) or not np.issubdtype(faces.dtype, np.integer):
        raise WeightsError(f"The triangle list has shape {faces.shape}; mapper.txt has {expected_shape[0]} faces",
                           path=path, hint="Use smpl_faces.npy and mapper.txt of the same release.")
    return faces.astype(np.int64)


def load_body_model(weights_dir: str | Path | None = None, device: torch.device | str = "cpu",
                    renderer: str = "torch") -> BodyModel:
    """SMPL (from the HMR buffers or smpl_model.pkl) + maps from the mesh assets, in eval mode on `device`;
    renderer: auto | torch | nmr (render/backends.py)."""
    from impersonator_cli.render.backends import select_rasterizer

    wd = Path(weights_dir) if weights_dir is not None else None
    folder = _asset_folder(wd)
    assets = load_mesh_assets(folder)
    arrays = _smpl_arrays(wd, _read_faces(folder / "smpl_faces.npy", assets.faces_v.shape))
    device = torch.device(device)
    smpl = SMPL(arrays).to(device).eval()
    maps = MeshMaps.from_assets(assets).to(device)
    return BodyModel(smpl=smpl, maps=maps, device=device, weights_dir=wd,
                     rasterizer=select_rasterizer(renderer, device))
