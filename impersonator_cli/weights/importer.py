"""Import the official release (`pretrains.zip`, `checkpoints.zip`, or their extracted folders).

Every expected file is found by its tail path at any nesting depth, checked (networks key by key
against the official manifest, assets by format), networks converted to safetensors, and only then
everything is moved into the weights folder together. Any refusal leaves the folder as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np

from impersonator_cli.weights import registry
from impersonator_cli.weights import store as weights
from impersonator_cli.weights.checkpoints import load_official_state_dict, save_safetensors
from impersonator_cli.errors import InputError, OutputError, WeightsError
from impersonator_cli.weights.registry import REGISTRY, Artefact

NUM_FACES, NUM_VERTICES, NUM_PARTS = 13776, 6890, 10


@dataclass(frozen=True)
class Member:
    """A file inside a source: a zip member, a file under a folder, or a loose file."""

    source: Path
    name: str  # posix path inside the zip / folder (a loose file: its name)
    kind: str  # "zip" | "dir" | "file"

    @property
    def label(self) -> str:
        return self.source.name if self.kind == "file" else f"{self.source.name}:{self.name}"


@dataclass(frozen=True)
class ImportedItem:
    name: str
    files: tuple[str, ...]
    source: str
    source_sha256: str


@dataclass(frozen=True)
class ImportReport:
    weights_dir: Path
    imported: tuple[ImportedItem, ...]
    optional_missing: tuple[str, ...]  # not in the sources nor in the folder, and not needed for inference
    required_missing: tuple[str, ...]  # still needed by imitate/swap/novelview

    def to_dict(self) -> dict:
        return {"weights_dir": str(self.weights_dir), "imported": [i.__dict__ for i in self.imported],
                "optional_missing": list(self.optional_missing), "required_missing": list(self.required_missing)}


# ---------------------------------------------------------------- finding members


def _safe_member_name(name: str) -> bool:
    norm = name.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    return not (norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in parts)


def _ignored(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return "__MACOSX" in parts or parts[-1].startswith("._")


def _zip_members(path: Path) -> list[Member]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(f"{path.name} is not a readable zip archive", path=path,
                           hint="Download the release again.", detail=str(exc)) from exc
    for info in infos:
        if not _safe_member_name(info.filename):
            raise WeightsError(
                f"{path.name} contains a member that would escape the target folder: '{info.filename}'",
                path=path, hint="This archive is not the official release; do not use it.")
    return [Member(path, i.filename, "zip") for i in infos if not i.is_dir() and not _ignored(i.filename)]


def _dir_members(path: Path, skip: Path | None) -> list[Member]:
    out = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        inside_target = skip is not None and p.absolute().is_relative_to(skip)
        if p.is_file() and not _ignored(rel) and not inside_target:
            out.append(Member(path, rel, "dir"))
    return out


def scan_source(path: str | os.PathLike, skip: Path | None = None) -> list[Member]:
    """Every usable file of a source (zip, extracted folder or a single file); `skip`: a folder to leave out
    (the weights folder itself, when it lies inside a source folder)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _dir_members(path, skip)
    if not path.is_file():
        raise InputError("The file to import does not exist", path=path,
                         hint="Pass the official pretrains.zip / checkpoints.zip (or their extracted folders).")
    loose = Member(path, path.name, "file")
    if any(_tail_matches(path.name, row.match) for row in REGISTRY):  # e.g. a .pth (itself a zip since torch 1.6)
        return [loose]
    return _zip_members(path) if zipfile.is_zipfile(path) else [loose]


def _tail_matches(name: str, tail: str) -> bool:
    parts, want = PurePosixPath(name).parts, PurePosixPath(tail).parts
    return parts[-len(want):] == want


def match_members(members: Iterable[Member]) -> dict[str, Member]:
    """Registry name -> the one member that is that artefact (two candidates: WeightsError)."""
    members = list(members)
    found: dict[str, Member] = {}
    for row in REGISTRY:
        hits = [m for m in members if _tail_matches(m.name, row.match)]
        if len(hits) > 1:
            raise WeightsError(
                f"{row.match} was found more than once: {hits[0].label} and {hits[1].label}",
                hint="Pass each archive (or extracted folder) only once.")
        if hits:
            found[row.name] = hits[0]
    return found


def _check_complete(found: dict[str, Member]) -> None:
    """A zip/folder that holds part of a release must hold all of its required files."""
    for release in ("pretrains", "checkpoints"):
        rows = [r for r in REGISTRY if r.release == release]
        present = [found[r.name] for r in rows if r.name in found and found[r.name].kind != "file"]
        lacking = [r for r in rows if r.required and r.name not in found]
        if present and lacking:
            where = ", ".join(sorted({m.source.name for m in present}))
            raise WeightsError(
                f"{where} is incomplete: it lacks "
                + ", ".join(f"{r.match} (expected as */{r.match})" for r in lacking),
                hint=f"Use the complete official {release}.zip (or its whole extracted folder).")


# ---------------------------------------------------------------- asset checks


def _fail(row: Artefact, member: Member, why: str) -> WeightsError:
    return WeightsError(f"{member.label} is not a valid {row.local_name}: {why}",
                        hint=f"Use the {row.official_path} of the official release.")


def _face_ids(ids: object, nfaces: int = NUM_FACES) -> bool:
    return isinstance(ids, list) and all(isinstance(i, int) and 0 <= i < nfaces for i in ids)


def _check_faces(path: Path) -> str | None:
    try:
        faces = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        return f"not a plain .npy array ({exc})"
    if faces.shape != (NUM_FACES, 3) or faces.dtype.kind not in "iu":
        return f"expected a ({NUM_FACES}, 3) integer array, found {faces.shape} {faces.dtype}"
    if faces.min() < 0 or faces.max() >= NUM_VERTICES:
        return f"vertex ids outside 0..{NUM_VERTICES - 1}"
    return None


def _face_corners(tokens: list[str]) -> list[int] | None:
    """`f a/b[/c] a/b[/c] a/b[/c]` -> [v0, vt0, v1, vt1, v2, vt2] (1-based), None if malformed."""
    if len(tokens) != 4:
        return None
    try:
        pairs = [t.split("/") for t in tokens[1:]]
        return [int(p[i]) for p in pairs for i in (0, 1)] if all(len(p) >= 2 for p in pairs) else None
    except ValueError:
        return None


def _check_mapper(path: Path) -> str | None:
    """The official parser accepts only v/vt/vn/f lines; every face needs its three v/vt indices."""
    counts = {"v": 0, "vt": 0, "vn": 0, "f": 0}
    corners: list[list[int]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] not in counts:
            return f"line {number} starts with '{tokens[0]}' (only v, vt, vn and f lines are allowed)"
        counts[tokens[0]] += 1
        if tokens[0] == "f":
            corners.append(_face_corners(tokens))
            if corners[-1] is None:
                return f"line {number} is not an 'f v/vt/vn v/vt/vn v/vt/vn' triangle"
    if counts["f"] != NUM_FACES:
        return f"expected {NUM_FACES} f lines, found {counts['f']}"
    arr = np.asarray(corners)
    v, vt = arr[:, 0::2], arr[:, 1::2]
    if v.min() < 1 or v.max() > counts["v"] or vt.min() < 1 or vt.max() > counts["vt"]:
        return "an f line refers to a v or vt index that does not exist (indices are 1-based)"
    return None


def _check_json(path: Path, row: Artefact) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        return f"not JSON ({exc})"
    if row.name != "part_info":
        ok = isinstance(data, dict) and _face_ids(data.get("face"))
        return None if ok else f"expected an object with a 'face' list of face ids in 0..{NUM_FACES - 1}"
    if not isinstance(data, dict) or len(data) != NUM_PARTS:
        return f"expected an object with {NUM_PARTS} parts"
    for part, value in data.items():
        if not (isinstance(value, dict) and _face_ids(value.get("face"))
                and _face_ids(value.get("vertex"), NUM_VERTICES)):
            return f"part '{part}' needs 'vertex' and 'face' id lists"
    covered = set().union(*(v["face"] for v in data.values()))
    return None if len(covered) == NUM_FACES else f"the parts cover {len(covered)} of {NUM_FACES} faces"


def _ends_like_pickle(path: Path) -> bool:
    if path.stat().st_size < 2:
        return False
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"."


def check_asset(row: Artefact, path: Path, member: Member) -> None:
    """Format sanity checks; the SMPL pickle is never unpickled here (only its framing is checked)."""
    if row.name == "smpl_faces":
        why = _check_faces(path)
    elif row.name == "uv_mapper":
        why = _check_mapper(path)
    elif row.name == "smpl_model":
        why = None if _ends_like_pickle(path) else "not a pickle file (every pickle ends with the STOP opcode '.')"
    else:
        why = _check_json(path, row)
    if why:
        raise _fail(row, member, why)


# ---------------------------------------------------------------- staging and converting


def _materialize(member: Member, dest: Path) -> tuple[Path, str]:
    """The member as a file (zip members are copied to `dest`), with the sha256 of its bytes."""
    h = hashlib.sha256()
    if member.kind != "zip":
        path = member.source if member.kind == "file" else member.source / member.name
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
        return path, h.hexdigest()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(member.source) as zf, zf.open(member.name) as src, open(dest, "wb") as out:
            while block := src.read(1 << 22):
                h.update(block)
                out.write(block)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise WeightsError(
            f"{member.label} cannot be extracted (corrupt archive or unsupported compression)", path=member.source,
            hint="Download the archive again, or extract it with your zip tool and pass the folder instead.",
            detail=str(exc)) from exc
    return dest, h.hexdigest()


def _stage(row: Artefact, member: Member, staging: Path) -> tuple[dict[str, Path], ImportedItem]:
    raw, digest = _materialize(member, staging / "raw" / row.name / PurePosixPath(member.name).name)
    out = staging / "out" / row.local_name
    out.parent.mkdir(parents=True, exist_ok=True)
    if row.is_network:
        prefix = row.config.get("sha256_prefix")
        if prefix and not digest.startswith(prefix):
            raise WeightsError(
                f"{member.label} is not the torchvision file: its sha256 does not start with {prefix}",
                hint=f"Fetch it again from {registry.VGG_URL}.")
        sd = load_official_state_dict(raw, row.section)
        config = {**row.config, "name": row.name, "section": row.section,
                  "source": row.official_path, "source_sha256": digest}
        save_safetensors(sd, out, config)
        del sd
    else:
        check_asset(row, raw, member)
        shutil.copyfile(raw, out)
    if member.kind == "zip":
        raw.unlink()
    files = {f: staging / "out" / f for f in row.local_files}
    return files, ImportedItem(row.name, row.local_files, member.label, digest)


def _cost(row: Artefact) -> int:
    """Cheap checks first, so a refusal comes before the big files are converted."""
    if not row.is_network:
        return 0
    from impersonator_cli.weights.checkpoints import expected_shapes

    return sum(int(np.prod(s)) for s in expected_shapes(row.section).values())


def _report(folder: Path, imported: list[ImportedItem]) -> ImportReport:
    present = {r.name for r in REGISTRY if (folder / r.local_name).is_file()}
    gone = [r for r in REGISTRY if r.name not in present]
    return ImportReport(folder, tuple(imported), tuple(r.name for r in gone if not r.required),
                        tuple(r.name for r in gone if r.required))


def import_release(sources: Iterable[str | os.PathLike],
                   weights_dir: str | os.PathLike | None = None) -> ImportReport:
    """Check and import the official release files found in `sources` (zips, folders, single files).

    All or nothing: on any refusal the weights folder is left exactly as it was.
    """
    folder = weights.install_dir(weights_dir)
    members = [m for src in sources for m in scan_source(src, skip=folder.absolute())]
    found = match_members(members)
    if not found:
        raise WeightsError("None of the given files is part of the official release",
                           hint="Pass pretrains.zip and checkpoints.zip (or their extracted folders).")
    _check_complete(found)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=folder))
    try:
        staged, entries, imported = {}, {}, []
        for row in sorted((registry.get(n) for n in found), key=_cost):
            files, item = _stage(row, found[row.name], staging)
            staged.update(files)
            imported.append(item)
            for fname, path in files.items():
                entries[fname] = weights.manifest_entry(path, row.name, item.source,
                                                        source_sha256=item.source_sha256)
        weights.install_files(folder, staged, entries)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError("The import failed while reading a source or writing the weights folder; "
                              "nothing was changed", path=folder, hint="Check free disk space and permissions.",
                              detail=str(exc)) from exc
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return _report(folder, imported)
