"""Moving a finished output into place: the last step of every writer (video, image, motion file).

A writer fills a hidden temp file beside the output (`images.reserve_partial_path`) and calls
`publish(tmp, final, overwrite)` once the file is complete:

- overwrite: `os.replace`, atomic; whatever was at `final` is replaced.
- otherwise the final step never replaces a file, even one that appeared while the job ran (two
  jobs writing one name at once): `os.link(tmp, final)` fails if `final` exists, then the temp name
  is removed. On a file system without hard links the name is claimed with O_CREAT|O_EXCL and the
  temp file renamed over that claim. The losing job gets OutputError and keeps no temp file.

Paths published recently are remembered (`published_since`), so that the CLI can tell, when a job is
interrupted, whether an output had already been written.
"""

from __future__ import annotations

import collections
import errno
import itertools
import os
from pathlib import Path

from impersonator_cli.errors import OutputError

__all__ = ["publish", "publish_mark", "published_since"]

_RECENT: collections.deque = collections.deque(maxlen=64)  # (serial, path) of the latest publishes
_SERIAL = itertools.count(1)
# link() errors that mean "this file system has no hard links", not "the name is taken".
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


def publish(tmp: Path, final: Path, overwrite: bool) -> Path:
    """Move the complete file `tmp` to `final` (same folder); returns `final`.

    Without `overwrite`, OutputError when `final` exists (it appeared after the job checked): the
    existing file is left as it is and `tmp` is deleted. Any other failure also deletes `tmp`.
    """
    tmp, final = Path(tmp), Path(final)
    try:
        if overwrite:
            os.replace(tmp, final)
            _remember(final)
        else:
            _move_no_replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise _appeared(final) from exc
        if isinstance(exc, OSError):
            raise OutputError("Cannot move the finished output into place", path=final,
                              hint="Check free space and permissions of the folder.", detail=str(exc)) from exc
        raise
    return final


def _move_no_replace(tmp: Path, final: Path) -> None:
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _claim_then_replace(tmp, final)
        return
    _remember(final)
    tmp.unlink()


def _claim_then_replace(tmp: Path, final: Path) -> None:
    """For file systems without hard links: take the name atomically, then rename over our own claim."""
    fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # FileExistsError: the name is taken
    try:
        os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        final.unlink(missing_ok=True)  # our empty claim, never someone else's file
        raise
    _remember(final)


def _remember(final: Path) -> None:
    _RECENT.append((next(_SERIAL), final))


def _appeared(final: Path) -> OutputError:
    return OutputError("The output appeared while this job ran (another job or program wrote it), so this "
                       "job's result was discarded and the existing file left as it is", path=final,
                       hint="Pass --overwrite to replace it, or give each job its own output name.")


def publish_mark() -> int:
    """A mark for `published_since`: the serial of the latest publish so far (0 before any)."""
    return _RECENT[-1][0] if _RECENT else 0


def published_since(mark: int) -> list[Path]:
    """Outputs published after `mark` that still exist (the latest 64 publishes at most)."""
    return [path for serial, path in list(_RECENT) if serial > mark and path.exists()]
