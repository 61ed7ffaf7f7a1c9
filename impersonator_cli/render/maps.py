"""Per-face maps rendered from a face-index map (spec §2.1, §2.4): assets, lookup tables, rendering.

Every map is a lookup table with F + 1 rows whose LAST row is the background, so indexing with the
rasterizer's face index (-1 = background) selects it directly. Rendering is `table[face_index]`,
permuted to B x C x N x N.

Assets (official names, in the pretrains folder):
  mapper.txt           OBJ-like UV layout: only `v`, `vn`, `vt`, `f` lines; `f` has three 1-based
                       `v/vt[/vn]` triplets (blank lines are tolerated).
  smpl_part_info.json  {part: {"vertex": [...], "face": [...]}}; parts in sorted key order; the face
                       lists must partition all F faces.
  front_facial.json    {"face": [...]}  the front of the face (used by --front_warp)
  head.json            {"face": [...]}  the whole head
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from impersonator_cli.errors import WeightsError

MAPPER_FILE = "mapper.txt"
PART_INFO_FILE = "smpl_part_info.json"
FRONT_FILE = "front_facial.json"
HEAD_FILE = "head.json"
_HINT = "Re-extract the official pretrains.zip (or import the weights again) and retry."


@dataclass(frozen=True)
class MeshAssets:
    """Parsed mesh assets (numpy).

    vt:          T x 2 float64   UV coordinates as stored (v not flipped)
    faces_v:     F x 3 int64     0-based vertex index per face corner
    faces_vt:    F x 3 int64     0-based UV index per face corner
    part_names:  P names, sorted
    face_part:   F int64         part index of every face
    front_faces: 0-based face indices of the front face region
    head_faces:  0-based face indices of the head
    """

    vt: np.ndarray
    faces_v: np.ndarray
    faces_vt: np.ndarray
    part_names: tuple[str, ...]
    face_part: np.ndarray
    front_faces: np.ndarray
    head_faces: np.ndarray


def _bad(path: Path, what: str) -> WeightsError:
    return WeightsError(f"The mesh asset {path.name} is malformed: {what}", path=path, hint=_HINT)


def parse_mapper(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read mapper.txt -> (vt T x 2 float64, faces_v F x 3 int64, faces_vt F x 3 int64), 0-based."""
    path = Path(path)
    text = _read_text(path)
    vt, fv, ft = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0] in ("v", "vn"):
            continue
        if parts[0] == "vt" and len(parts) >= 3:
            vt.append(_floats(parts[1:3], path, lineno))
        elif parts[0] == "f" and len(parts) == 4:
            corners = [_triplet(p, path, lineno) for p in parts[1:]]
            fv.append([c[0] for c in corners])
            ft.append([c[1] for c in corners])
        else:
            raise _bad(path, f"line {lineno} is not a 'v', 'vn', 'vt' or triangle 'f' line: "
                             f"{line.strip()[:60]!r}")
    if not ft:
        raise _bad(path, "it has no 'f' lines")
    vt_arr, ft_arr = np.asarray(vt, dtype=np.float64).reshape(-1, 2), np.asarray(ft, dtype=np.int64)
    if ft_arr.min() < 0 or ft_arr.max() >= len(vt_arr):
        raise _bad(path, f"a face refers to a 'vt' index outside 1..{len(vt_arr)}")
    return vt_arr, np.asarray(fv, dtype=np.int64), ft_arr


def _floats(items: list[str], path: Path, lineno: int) -> list[float]:
    try:
        return [float(x) for x in items]
    except ValueError:
        raise _bad(path, f"line {lineno} has a non-numeric value") from None


def _triplet(item: str, path: Path, lineno: int) -> tuple[int, int]:
    """'v/vt[/vn]' (1-based) -> 0-based (v, vt)."""
    fields = item.split("/")
    try:
        if len(fields) < 2 or len(fields) > 3:
            raise ValueError
        return int(fields[0]) - 1, int(fields[1]) - 1
    except ValueError:
        raise _bad(path, f"line {lineno} has a face corner {item!r}, expected 'v/vt/vn'") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WeightsError(f"The mesh asset {path.name} is missing", path=path,
                           hint=_HINT) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"Cannot read the mesh asset {path.name} ({exc})", path=path,
                           hint=_HINT) from None


def _read_json(path: Path) -> object:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise _bad(path, f"invalid JSON ({exc})") from None


def _face_ids(value: object, path: Path, num_faces: int, where: str) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(x, int) for x in value):
        raise _bad(path, f"{where} must be a list of integer face indices")
    ids = np.asarray(value, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= num_faces):
        raise _bad(path, f"{where} has a face index outside 0..{num_faces - 1}")
    return ids


def read_face_list(path: str | Path, num_faces: int) -> np.ndarray:
    """front_facial.json / head.json: {"face": [...]} -> int64 face indices."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or "face" not in data:
        raise _bad(path, "expected an object with a 'face' list")
    return _face_ids(data["face"], path, num_faces, "'face'")


def read_part_info(path: str | Path, num_faces: int) -> tuple[tuple[str, ...], np.ndarray]:
    """smpl_part_info.json -> (sorted part names, F int64 part index per face)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise _bad(path, "expected an object {part: {'vertex': [...], 'face': [...]}}")
    names = tuple(sorted(data))
    face_part = np.full(num_faces, -1, dtype=np.int64)
    for i, name in enumerate(names):
        entry = data[name]
        if not isinstance(entry, dict) or "face" not in entry:
            raise _bad(path, f"part {name!r} has no 'face' list")
        ids = _face_ids(entry["face"], path, num_faces, f"part {name!r}")
        if (face_part[ids] >= 0).any() or len(np.unique(ids)) != len(ids):
            raise _bad(path, f"part {name!r} repeats faces already assigned to a part")
        face_part[ids] = i
    if (face_part < 0).any():
        raise _bad(path, f"the parts cover {int((face_part >= 0).sum())} of {num_faces} faces; "
                         "every face must belong to one part")
    return names, face_part


def load_mesh_assets(folder: str | Path) -> MeshAssets:
    """Read the four official mesh assets from a folder (see module docstring)."""
    folder = Path(folder)
    vt, faces_v, faces_vt = parse_mapper(folder / MAPPER_FILE)
    num_faces = faces_vt.shape[0]
    names, face_part = read_part_info(folder / PART_INFO_FILE, num_faces)
    return MeshAssets(vt=vt, faces_v=faces_v, faces_vt=faces_vt, part_names=names,
                      face_part=face_part,
                      front_faces=read_face_list(folder / FRONT_FILE, num_faces),
                      head_faces=read_face_list(folder / HEAD_FILE, num_faces))


def face_uv_midpoints(vt: np.ndarray, faces_vt: np.ndarray) -> np.ndarray:
    """Per-face cond colour (spec §2.4): (uv0 + uv1) / 2 with v -> 1 - v.  -> F x 2 float64.

    Evaluated as the official "barycentre" expression uv2 + 0.5 (uv0 - uv2) + 0.5 (uv1 - uv2).
    """
    uv = vt[faces_vt].copy()
    uv[..., 1] = 1.0 - uv[..., 1]
    return uv[:, 2] + 0.5 * (uv[:, 0] - uv[:, 2]) + 0.5 * (uv[:, 1] - uv[:, 2])


class MeshMaps(nn.Module):
    """Lookup tables (F + 1 rows, background last) and their rendering from a face-index map.

    cond_table   (F+1) x 3       (u_mid, v_mid, 0); background (0, 0, 1)
    front_table  (F+1) x 1       1 on front_facial faces; background 0
    back_table   (F+1) x 1       1 on head faces that are not front faces; background 0
    part_table   (F+1) x (P+1)   one-hot part, last channel = background
    face_part    F               part index per face (int64)
    """

    def __init__(self, cond_table: Tensor, front_table: Tensor, back_table: Tensor,
                 part_table: Tensor, face_part: Tensor, part_names: tuple[str, ...]) -> None:
        super().__init__()
        self.register_buffer("cond_table", cond_table)
        self.register_buffer("front_table", front_table)
        self.register_buffer("back_table", back_table)
        self.register_buffer("part_table", part_table)
        self.register_buffer("face_part", face_part)
        self.part_names = tuple(part_names)

    @property
    def num_faces(self) -> int:
        return int(self.face_part.shape[0])

    @classmethod
    def from_assets(cls, assets: MeshAssets) -> "MeshMaps":
        return cls.from_tables(
            face_uv=torch.from_numpy(face_uv_midpoints(assets.vt, assets.faces_vt)),
            face_part=torch.from_numpy(assets.face_part), part_names=assets.part_names,
            front_faces=torch.from_numpy(assets.front_faces),
            head_faces=torch.from_numpy(assets.head_faces))

    @classmethod
    def from_tables(cls, face_uv: Tensor, face_part: Tensor, part_names, front_faces: Tensor,
                    head_faces: Tensor) -> "MeshMaps":
        """face_uv F x 2 (already v-flipped midpoints), face_part F, face index lists."""
        F, P = face_uv.shape[0], len(part_names)
        cond = torch.zeros(F + 1, 3, dtype=torch.float32)
        cond[:F, :2] = face_uv.to(torch.float32)
        cond[F, 2] = 1.0
        front = torch.zeros(F + 1, 1)
        front[front_faces.long(), 0] = 1.0
        back = torch.zeros(F + 1, 1)
        back[head_faces.long(), 0] = 1.0
        back[front_faces.long(), 0] = 0.0
        part = torch.zeros(F + 1, P + 1)
        part[torch.arange(F), face_part.long()] = 1.0
        part[F, P] = 1.0
        return cls(cond, front, back, part, face_part.long().clone(), tuple(part_names))

    @staticmethod
    def _render(table: Tensor, face_index: Tensor) -> Tensor:
        """Lookup: face_index B x N x N (-1 = bg) -> B x C x N x N."""
        rows = torch.where(face_index < 0, table.shape[0] - 1, face_index)
        out = table.index_select(0, rows.reshape(-1)).view(*face_index.shape, table.shape[1])
        return out.permute(0, 3, 1, 2)

    def render_cond(self, face_index: Tensor) -> Tensor:
        """Generator condition map (uv_seg), B x 3 x N x N; channel 2 = background indicator."""
        return self._render(self.cond_table, face_index)

    def render_front(self, face_index: Tensor) -> Tensor:
        """Front-face map, B x 1 x N x N."""
        return self._render(self.front_table, face_index)

    def render_back(self, face_index: Tensor) -> Tensor:
        """Back/sides-of-head map, B x 1 x N x N."""
        return self._render(self.back_table, face_index)

    def render_parts(self, face_index: Tensor) -> Tensor:
        """Part map, B x (P+1) x N x N, one-hot; last channel = background."""
        return self._render(self.part_table, face_index)

    def render(self, face_index: Tensor, name: str) -> Tensor:
        """Render a map by name: 'cond', 'front', 'back' or 'parts'."""
        fns = {"cond": self.render_cond, "front": self.render_front, "back": self.render_back,
               "parts": self.render_parts}
        if name not in fns:
            raise ValueError(f"unknown map {name!r}; valid: {', '.join(fns)}")
        return fns[name](face_index)
