"""Remembered verifications: the files of a weights folder that were hashed and matched their manifest.

Before a job uses a weights folder, every file its manifest records is checked (`store.check_folder`).
Hashing a real release (about 1 GB) on every job would cost seconds, so a file that matched is
remembered with its stat (size, mtime_ns, ctime_ns, inode) and the sha256 it matched. Next time, a
file whose stat is exactly the same and whose manifest still expects that sha256 is not read again;
any difference in the stat means: hash it again. A file modified less than `RACY_NS` before it was
hashed is not remembered (a second write within the file system's timestamp step could keep its
mtime), so it is hashed again next time.

Where: `.impersonate-verified.json` inside the weights folder (hidden: `weights verify` does not
list it; written atomically). When the folder cannot be written (read-only), the record goes to
`<cache root>/weights-verified/<digest of the folder path>.json` (cache root: `$IMPERSONATE_CACHE_DIR`,
else ~/.cache/impersonate). When neither can be written, nothing is remembered and every job hashes
again. Both places are read; each record is still checked against the file's stat, so a stale one
is harmless. This guards against accidents (a damaged, edited or swapped file), not against someone
who can rewrite the weights folder and its records on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from impersonator_cli.defaults import cache_root

CACHE_NAME = ".impersonate-verified.json"
CACHE_FORMAT = "impersonate-verified/1"
RACY_NS = 2_000_000_000  # coarser than any file system's timestamp step (FAT: 2 s)

Records = dict[str, dict]  # file name -> {"sha256", "size", "mtime_ns", "ctime_ns", "ino"}


@dataclass(frozen=True)
class Stamp:
    """What a file's stat says about its content: any change here means the content may have changed."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int


def stamp(path: Path) -> Stamp | None:
    """The stat of a regular file (links followed); None when there is no such file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return Stamp(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def trusted(records: Records, fname: str, now: Stamp, sha256: str) -> bool:
    """True when `fname` was hashed to `sha256` while its stat was exactly `now`."""
    rec = records.get(fname)
    return bool(sha256) and isinstance(rec, dict) and rec.get("sha256") == sha256 and \
        {k: rec.get(k) for k in asdict(now)} == asdict(now)


def remember(records: Records, fname: str, before: Stamp, after: Stamp | None, sha256: str) -> None:
    """Record a match of `fname` hashed between stats `before` and `after` (forgotten when unsafe)."""
    records.pop(fname, None)
    if after != before or before.mtime_ns > time.time_ns() - RACY_NS:
        return  # changed while being hashed, or too fresh to tell a later write apart by its stat
    records[fname] = {"sha256": sha256, **asdict(before)}


def _places(folder: Path) -> tuple[Path, Path]:
    """(the record inside the folder, the per-user record for the folder)."""
    digest = hashlib.sha256(str(folder.absolute()).encode("utf-8")).hexdigest()[:32]
    return folder / CACHE_NAME, cache_root() / "weights-verified" / f"{digest}.json"


def _read(path: Path) -> Records:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else None
    return {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def load(folder: Path) -> Records:
    """The remembered verifications of `folder` (both places; the folder's own wins on a clash)."""
    inside, per_user = _places(folder)
    return {**_read(per_user), **_read(inside)}


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(folder: Path, records: Records) -> Path | None:
    """Write the records of `folder`: inside it, else per user, else nowhere (None)."""
    text = json.dumps({"format": CACHE_FORMAT, "files": records}, indent=1, sort_keys=True)
    for place in _places(folder):
        try:
            _write_atomic(place, text)
            return place
        except OSError:
            continue
    return None
