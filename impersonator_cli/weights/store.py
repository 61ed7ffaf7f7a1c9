"""Where weight files are found, the manifest of a weights folder, and verification (the registry of
what exists is `registry.py`).

A weights folder holds the converted networks (`<name>.safetensors` + `<name>.json`), the official
assets as they came (`smpl_faces.npy`, `mapper.txt`, ...) and `manifest.json` (sha256, size, source
and time of every file). Files get there by `impersonate weights import` (the official
`pretrains.zip` / `checkpoints.zip`, see `weights/importer.py`) or `impersonate weights download`
(a pinned Hugging Face repo, see `weights/download.py`; the only code that reaches the network).

Lookup order for a file (`search_dirs`): the explicit `weights_dir` argument (CLI `--weights-dir`),
then `$IMPERSONATE_WEIGHTS_DIR`, then `./weights` when it holds a manifest.json (where earlier versions
imported to), then the per-user folder (`defaults.user_weights_dir()`: $XDG_DATA_HOME/impersonate/weights,
else ~/.local/share/impersonate/weights), then the Hugging Face cache (cache lookup only, for the repos
that `weights download` recorded or that `$IMPERSONATE_WEIGHTS_REPO` names). Import and download write
to `install_dir`: the explicit folder, else `$IMPERSONATE_WEIGHTS_DIR`, else the per-user folder, so
that an import run in one folder serves jobs run in any other.

Jobs get weight files by name through `find` (or `resolve`), which first checks the whole local folder
against its manifest, as `weights verify` does (`check_folder`; matches remembered by stat, see
`verify_cache.py`): a damaged, edited or swapped file stops the job with a WeightsError.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from impersonator_cli.defaults import ENV_WEIGHTS_DIR, LEGACY_WEIGHTS_DIR, user_weights_dir
from impersonator_cli.errors import WeightsError
from impersonator_cli.weights import verify_cache
from impersonator_cli.weights.registry import REGISTRY, Artefact, get
from impersonator_cli.weights.route import weights_route

ENV_WEIGHTS_REPO = "IMPERSONATE_WEIGHTS_REPO"  # "owner/name@revision": a download to look up in the HF cache
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "impersonate-weights-manifest/1"
# ---------------------------------------------------------------- where files are looked up


def _env_dir() -> Path | None:
    env = os.environ.get(ENV_WEIGHTS_DIR, "").strip()
    return Path(env).expanduser() if env else None


def _legacy_dir() -> Path | None:  # ./weights, only when it holds a manifest.json (kept for compatibility)
    folder = Path.cwd() / LEGACY_WEIGHTS_DIR
    return folder if (folder / MANIFEST_NAME).is_file() else None


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Local folders in lookup order: explicit argument, $IMPERSONATE_WEIGHTS_DIR, ./weights holding a
    manifest.json, the per-user folder (then, outside this list, the Hugging Face cache)."""
    explicit = Path(weights_dir).expanduser() if weights_dir is not None else None
    out: list[Path] = []
    for d in (explicit, _env_dir(), _legacy_dir(), user_weights_dir()):
        if d is not None and d.absolute() not in out:
            out.append(d.absolute())
    return out


def target_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    """The folder a lookup tries first (what `weights verify` and `weights list` report on)."""
    return search_dirs(weights_dir)[0]


def install_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    """Where import and download write: explicit > $IMPERSONATE_WEIGHTS_DIR > the per-user folder."""
    if weights_dir is not None:
        return Path(weights_dir).expanduser()
    return _env_dir() or user_weights_dir()


def route(weights_dir: str | os.PathLike | None = None) -> str:
    """How to get the official weights (weights/route.py), importing into `install_dir(weights_dir)`."""
    return weights_route(install_dir(weights_dir), weights_dir)


def _hf_cache_dir() -> str | None:
    """The HF hub cache as the environment says *now* (huggingface_hub reads it only at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _recorded_repos(dirs: Iterable[Path]) -> list[tuple[str, str]]:
    """(repo_id, commit) pairs of earlier downloads, plus $IMPERSONATE_WEIGHTS_REPO."""
    repos: list[tuple[str, str]] = []
    env = os.environ.get(ENV_WEIGHTS_REPO, "")
    if "@" in env:
        repo, rev = env.split("@", 1)
        repos.append((repo, rev))
    for d in dirs:
        for rec in _read_manifest_quiet(d).get("downloads", []):
            pair = (rec.get("repo_id", ""), rec.get("commit", ""))
            if all(pair) and pair not in repos:
                repos.append(pair)
    return repos


def _cached(repo_id: str, revision: str, filename: str) -> Path | None:
    """A file of a repo in the HF cache (no network, ever), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, filename, cache_dir=_hf_cache_dir(), revision=revision)
    except Exception:  # noqa: BLE001 - a malformed repo id in the environment must not break lookup
        return None
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def _from_hf_cache(row: Artefact, dirs: list[Path]) -> Path | None:
    for repo_id, revision in _recorded_repos(dirs):
        hits = [_cached(repo_id, revision, f) for f in row.local_files]
        if all(hits):
            return hits[0]
    return None


def _locate(name: str, weights_dir: str | os.PathLike | None = None) -> tuple[Path | None, bool]:
    """(where the file of `name` is, or None; whether that is a local weights folder), unverified."""
    row = get(name)
    dirs = search_dirs(weights_dir)
    for d in dirs:
        if all((d / f).is_file() for f in row.local_files):
            return d / row.local_name, True
    return _from_hf_cache(row, dirs), False


def find(name: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """Where the file of `name` is (see the module docstring for the order), or None.

    A network counts only with its JSON config beside it. This is the one gate between a job and
    its weight files: a file in a local weights folder is handed out only once every file that
    folder's manifest records still matches it (`check_folder`; WeightsError otherwise)."""
    path, local = _locate(name, weights_dir)
    if path is not None and local:
        check_folder(path.parent)
    return path


def resolve(name: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """The path of the file of `name`; WeightsError saying where it looked and how to get it."""
    path = find(name, weights_dir)
    if path is not None:
        return path
    row = get(name)
    looked = ", ".join(str(d) for d in search_dirs(weights_dir)) + ", the Hugging Face cache"
    origin = "torchvision" if row.release == "torchvision" else f"{row.match} in {row.release}.zip"
    raise WeightsError(
        f"The {name} weights ({row.local_name}, from {origin}) were not found; looked in {looked}",
        hint=row.how_to_get() if row.release == "torchvision" else route(weights_dir),
    )


# ---------------------------------------------------------------- manifest


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_manifest_quiet(weights_dir: Path) -> dict:
    try:
        return read_manifest(weights_dir)
    except WeightsError:
        return {}


def read_manifest(weights_dir: str | os.PathLike) -> dict:
    """manifest.json of a weights folder ({"files": {}} when there is none)."""
    path = Path(weights_dir) / MANIFEST_NAME
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "files": {}, "downloads": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(data.get("files"), dict)
    except (ValueError, AssertionError, AttributeError, OSError) as exc:
        raise WeightsError(
            "The weights manifest is unreadable", path=path,
            hint="Delete it and import the weights again (`impersonate weights import ...`).", detail=str(exc),
        ) from exc
    data.setdefault("downloads", [])
    return data


def write_manifest(weights_dir: str | os.PathLike, manifest: dict) -> Path:
    """Write manifest.json atomically (temp file + rename in the same folder)."""
    path = Path(weights_dir) / MANIFEST_NAME
    manifest = {"format": MANIFEST_FORMAT, **manifest}
    from impersonator_cli.io.images import reserve_partial_path

    tmp = reserve_partial_path(path)
    try:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def manifest_entry(path: Path, name: str, source: str, **extra: Any) -> dict:
    return {"name": name, "sha256": sha256_file(path), "size": path.stat().st_size,
            "source": source, "imported_at": _now(), **extra}


def install_files(weights_dir: Path, staged: dict[str, Path], entries: dict[str, dict],
                  download: dict | None = None) -> None:
    """Move staged files into `weights_dir` and record them; on any failure put the old files back.

    staged:  local file name -> staged path (same file system, inside weights_dir)
    entries: local file name -> manifest entry
    """
    manifest = read_manifest(weights_dir)
    backup = Path(tempfile.mkdtemp(prefix=".backup-", dir=weights_dir))
    done: list[str] = []
    try:
        for fname, src in staged.items():
            if (weights_dir / fname).exists():
                os.replace(weights_dir / fname, backup / fname)
            done.append(fname)
            os.replace(src, weights_dir / fname)
        manifest["files"].update(entries)
        if download:
            manifest["downloads"] = [d for d in manifest["downloads"] if d.get("repo_id") != download["repo_id"]]
            manifest["downloads"].append(download)
        write_manifest(weights_dir, manifest)
    except BaseException:
        for fname in reversed(done):
            (weights_dir / fname).unlink(missing_ok=True)
            if (backup / fname).exists():
                os.replace(backup / fname, weights_dir / fname)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


@dataclass(frozen=True)
class VerifiedFile:
    file: str
    status: str  # "ok" | "mismatch" | "missing"
    expected_sha256: str
    actual_sha256: str | None


@dataclass(frozen=True)
class VerifyReport:
    weights_dir: Path
    files: tuple[VerifiedFile, ...]
    unrecorded: tuple[str, ...]  # files in the folder the manifest does not know

    @property
    def ok(self) -> bool:
        return all(f.status == "ok" for f in self.files)

    def to_dict(self) -> dict:
        return {"weights_dir": str(self.weights_dir), "ok": self.ok, "unrecorded": list(self.unrecorded),
                "files": [f.__dict__ for f in self.files]}


def _file_status(folder: Path, fname: str, expected: str, records: verify_cache.Records,
                 use_cache: bool) -> VerifiedFile:
    """One recorded file against its manifest sha256; a match hashed now is remembered in `records`."""
    path = folder / fname
    before = verify_cache.stamp(path)
    if before is None:
        records.pop(fname, None)
        return VerifiedFile(fname, "missing", expected, None)
    if use_cache and verify_cache.trusted(records, fname, before, expected):
        return VerifiedFile(fname, "ok", expected, expected)
    actual = sha256_file(path)
    if actual == expected:
        verify_cache.remember(records, fname, before, verify_cache.stamp(path), actual)
    else:
        records.pop(fname, None)
    return VerifiedFile(fname, "ok" if actual == expected else "mismatch", expected, actual)


def _verify_folder(folder: Path, use_cache: bool) -> VerifyReport:
    """Every file the manifest of `folder` records: ok / mismatch / missing (cached matches when asked)."""
    recorded = read_manifest(folder)["files"]
    records = verify_cache.load(folder)
    known = {k: v for k, v in records.items() if k in recorded}
    rows = tuple(_file_status(folder, fname, str(entry.get("sha256", "")), known, use_cache)
                 for fname, entry in sorted(recorded.items()))
    if known != records:
        verify_cache.save(folder, known)
    extra = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name not in recorded
                   and p.name not in (MANIFEST_NAME, "README.md"))
    return VerifyReport(folder, rows, tuple(extra))


def verify(weights_dir: str | os.PathLike | None = None) -> VerifyReport:
    """Recompute the sha256 of every file manifest.json lists: ok / mismatch / missing (no cache
    trusted; the matches found refresh the record that jobs use, see `check_folder`)."""
    folder = target_dir(weights_dir)
    if not (folder / MANIFEST_NAME).is_file():
        raise WeightsError(
            f"No {MANIFEST_NAME} in {folder}: nothing to verify",
            hint="Import the official release first: `impersonate weights import pretrains.zip checkpoints.zip`.",
        )
    return _verify_folder(folder, use_cache=False)


def verify_error(report: VerifyReport) -> WeightsError:
    """The one-paragraph error for a folder whose files differ from its manifest (names every such file)."""
    bad = [f for f in report.files if f.status != "ok"]
    what = {"mismatch": "changed since it was recorded (damaged, edited or swapped with another file)",
            "missing": "recorded but missing"}
    listed = "; ".join(f"{report.weights_dir / f.file} is {what[f.status]}" for f in bad[:4])
    listed += f"; and {len(bad) - 4} more" if len(bad) > 4 else ""
    return WeightsError(
        f"The weights in {report.weights_dir} do not match their {MANIFEST_NAME}: {listed}",
        hint=f"Run `impersonate weights verify --weights-dir {report.weights_dir}` to "
             "see every file, then import or download the weights again (`impersonate weights import "
             "pretrains.zip checkpoints.zip`, or `impersonate weights download --repo ID --revision REV`).",
    )


def check_folder(folder: str | os.PathLike) -> None:
    """Before a job uses a file of `folder`: every file its manifest records must match its sha256
    (what `weights verify` checks), else WeightsError. A folder without a manifest is not checked.

    Matches are remembered by stat (`weights/verify_cache.py`), so only new or changed files are
    hashed again."""
    folder = Path(folder)
    if not (folder / MANIFEST_NAME).is_file():
        return
    report = _verify_folder(folder, use_cache=True)
    if not report.ok:
        raise verify_error(report)


# ---------------------------------------------------------------- status (list / doctor)


@dataclass(frozen=True)
class ArtefactStatus:
    name: str
    role: str
    required_for: tuple[str, ...]
    state: str  # "verified" | "present" | "modified" | "missing"
    path: Path | None
    how_to_get: str

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "required_for": list(self.required_for),
                "state": self.state, "path": None if self.path is None else str(self.path),
                "how_to_get": self.how_to_get}


def _state(path: Path | None, check: bool) -> str:
    if path is None:
        return "missing"
    if not check:
        return "present"
    entry = _read_manifest_quiet(path.parent).get("files", {}).get(path.name)
    if entry is None:
        return "present"
    return "verified" if sha256_file(path) == entry.get("sha256") else "modified"


def status(weights_dir: str | os.PathLike | None = None, check: bool = False) -> list[ArtefactStatus]:
    """One row per registry artefact; `check` recomputes sha256 against the manifest (slow)."""
    out = []
    for row in REGISTRY:
        path = _locate(row.name, weights_dir)[0]  # reports, never refuses: `_state` says "modified"
        out.append(ArtefactStatus(row.name, row.role, row.required_for, _state(path, check), path,
                                  "" if path else row.how_to_get()))
    return out


def status_rows(weights_dir: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Rows for `impersonate doctor`: {item, status (ok|warn|missing), value, hint}."""
    rows = []
    for st, row in zip(status(weights_dir), REGISTRY):
        if st.path is not None:
            rows.append({"item": st.name, "status": "ok", "value": str(st.path), "hint": ""})
        else:
            need = f"needed for {', '.join(row.required_for)}" if row.required else \
                f"optional, used by {', '.join(row.used_by) or 'nothing by default'}"
            rows.append({"item": st.name, "status": "missing" if row.required else "warn",
                         "value": f"not found ({need})", "hint": st.how_to_get})
    return rows
