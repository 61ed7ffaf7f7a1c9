"""`impersonate weights download`: the only code in the package that reaches the network.

Files come from a Hugging Face repo laid out like a weights folder (`hmr.safetensors`, `hmr.json`,
`smpl_faces.npy`, ..., optionally `manifest.json` with sha256 values), pinned to a commit hash or a
tag, through the Hugging Face cache; then they are hard-linked (or copied) into the weights folder
and recorded in its manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from impersonator_cli.weights.checkpoints import check_converted_header
from impersonator_cli.errors import UsageError, WeightsError
from impersonator_cli.weights.registry import REGISTRY, Artefact, get
from impersonator_cli.weights.store import (
    MANIFEST_NAME, _hf_cache_dir, _now, install_dir, install_files, manifest_entry,
)

_MOVING_REFS = {"main", "master", "head", "dev", "develop", "latest"}


def _check_revision(revision: str) -> None:
    rev = (revision or "").strip()
    short_hash = 7 <= len(rev) < 40 and all(c in "0123456789abcdef" for c in rev.lower())
    if not rev or rev.lower() in _MOVING_REFS or rev.startswith(("refs/heads/", "refs/pr/")) or short_hash:
        raise UsageError(
            f"--revision '{revision}' is not a pinned revision",
            hint="Pass the full 40-character commit hash or a release tag of the repo; branch names move "
                 "and abbreviated hashes are refused.",
        )


def _hf_errors() -> tuple[tuple[type, ...], type]:
    """(errors meaning "not in the local cache and no network", error meaning "the repo has no such file")."""
    try:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # huggingface_hub < 0.24
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled
    return (LocalEntryNotFoundError, OfflineModeIsEnabled), EntryNotFoundError


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _fetch(repo_id: str, filename: str, revision: str) -> Path | None:
    """One file of the repo through the HF cache; None if the repo does not have it."""
    from huggingface_hub import hf_hub_download

    not_cached, not_in_repo = _hf_errors()
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=_hf_cache_dir(),
                                    local_files_only=_offline(), library_name="impersonate"))
    except not_cached as exc:
        raise WeightsError(
            f"{filename} of {repo_id}@{revision} is not cached and the Hugging Face hub is offline "
            "(HF_HUB_OFFLINE=1 or no connection)",
            hint="Run the download once with network access (unset HF_HUB_OFFLINE), or import the official "
                 "zips: `impersonate weights import pretrains.zip checkpoints.zip`.", detail=str(exc),
        ) from exc
    except not_in_repo:
        return None
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one actionable message
        raise WeightsError(
            f"Could not download {filename} from {repo_id}@{revision}: {type(exc).__name__}",
            hint="Check the repo id, that the revision exists, your network and (for a private repo) "
                 "`hf auth login`.", detail=str(exc),
        ) from exc


@dataclass(frozen=True)
class DownloadReport:
    weights_dir: Path
    repo_id: str
    commit: str
    downloaded: tuple[str, ...]
    not_in_repo: tuple[str, ...]

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def _remote_manifest(repo_id: str, revision: str) -> dict:
    try:
        path = _fetch(repo_id, MANIFEST_NAME, revision)
    except WeightsError:  # offline and not cached: the files themselves will say so
        return {}
    if path is None:
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"The {MANIFEST_NAME} of {repo_id}@{revision} is unreadable", path=path,
                           hint="The repo is not an impersonate weights repo, or is damaged.") from exc


def _link_or_copy(src: Path, dst: Path) -> Path:
    try:
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def _fetch_row(repo_id: str, revision: str, row: Artefact, remote: dict, staging: Path) -> dict[str, dict] | None:
    """Stage the files of one artefact; local file name -> manifest entry (None: not in the repo)."""
    paths = {f: _fetch(repo_id, f, revision) for f in row.local_files}
    if any(p is None for p in paths.values()):
        return None
    if row.is_network:
        check_converted_header(paths[row.local_name], row.section)
    entries = {}
    for fname, src in paths.items():
        commit = src.parent.name  # the cache's snapshots/<commit>/ folder
        entries[fname] = manifest_entry(_link_or_copy(src, staging / fname), row.name,
                                        f"hf://{repo_id}@{commit}/{fname}", commit=commit)
        expected = remote.get(fname, {}).get("sha256")
        if expected and entries[fname]["sha256"] != expected:
            raise WeightsError(f"{repo_id}/{fname} does not match the sha256 in the repo's manifest",
                               hint="The download is corrupt or the repo changed: download again.")
    return entries


def download(repo_id: str, revision: str, weights_dir: str | os.PathLike | None = None,
             names: Iterable[str] | None = None) -> DownloadReport:
    """Fetch converted weights from a Hugging Face repo pinned to `revision` into the weights folder.

    The repo holds files named like a weights folder (`hmr.safetensors`, `hmr.json`, ...) and, if it
    ships one, a `manifest.json` whose sha256 values are checked. `revision` must be a full commit hash
    or a tag. The licence-gated SMPL pickle is fetched only when named explicitly.
    """
    _check_revision(revision)
    rows = [get(n) for n in names] if names else [r for r in REGISTRY if not r.licence_gated]
    folder = install_dir(weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    remote = _remote_manifest(repo_id, revision)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    entries, missing = {}, []
    try:
        for row in rows:
            got = _fetch_row(repo_id, revision, row, remote, staging)
            missing += [row.name] if got is None else []
            entries.update(got or {})
        required_gone = [n for n in missing if get(n).required]
        if required_gone:
            raise WeightsError(f"{repo_id}@{revision} lacks {', '.join(required_gone)}",
                               hint="Check the repo id and revision, or import the official zips instead.")
        commit = next((e["commit"] for e in entries.values()), revision)
        install_files(folder, {f: staging / f for f in entries}, entries,
                      {"repo_id": repo_id, "revision": revision, "commit": commit, "at": _now()})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DownloadReport(folder, repo_id, commit, tuple(sorted(entries)), tuple(missing))
