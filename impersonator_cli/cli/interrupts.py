"""Ctrl-C, SIGTERM (timeout, Slurm, docker stop) and SIGHUP (a closed terminal) all stop a job the same way.

While the CLI's `main()` runs, each of these signals raises `JobInterrupted` (a KeyboardInterrupt) in
the main thread, so the cleanup that Ctrl-C has always run runs for all three: writers delete their
temp files, ffmpeg children are killed, the process exits with 128 + the signal's number after one
line on stderr. The library never installs handlers: only `main()` does, and it restores the previous
ones when it returns. A signal that is ignored when main starts (`nohup` ignores SIGHUP) stays ignored.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SIGNAL_NAMES = ("SIGINT", "SIGTERM", "SIGHUP")
_GRACE_S = 2.0  # a repeated signal within this time of the last one lets the cleanup finish


class JobInterrupted(KeyboardInterrupt):
    """Raised in the main thread by a SIGINT, SIGTERM or SIGHUP while the CLI runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """The signals received while installed: `received` lists their numbers, first first."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.closing = False  # set while the previous handlers are put back: record, never raise
        self._raised_at = float("-inf")

    def handle(self, signum: int, frame) -> None:
        self.received.append(signum)
        now = time.monotonic()
        if self.closing or now - self._raised_at < _GRACE_S:
            return  # one is being handled: let the cleanup (delete temp files, kill ffmpeg) finish
        self._raised_at = now
        raise JobInterrupted(signum)

    @property
    def signum(self) -> int | None:
        return self.received[0] if self.received else None


@contextlib.contextmanager
def interrupt_handlers(state: Interrupts) -> Iterator[Interrupts]:
    """Install `state.handle` for SIGINT, SIGTERM and SIGHUP (where they exist and are not ignored);
    restore the previous handlers on leaving."""
    previous = {}
    for name in SIGNAL_NAMES:
        signum = getattr(signal, name, None)
        if signum is None or signal.getsignal(signum) in (signal.SIG_IGN, None):  # None: a C handler
            continue
        try:
            previous[signum] = signal.signal(signum, state.handle)
        except ValueError:  # not the main thread: leave signals to whoever owns it
            break
    try:
        yield state
    finally:
        state.closing = True
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_code(signum: int) -> int:
    """The shell's convention for a process stopped by a signal: 128 + its number (130 for Ctrl-C)."""
    return 128 + signum


def interrupted_line(signum: int, written: Sequence[Path] = ()) -> str:
    """The one line printed when a job stops on a signal."""
    name = signal.Signals(signum).name
    how = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else name
    if written:
        return f"Interrupted by {how}: the job stopped after writing {', '.join(map(str, written))}; no partial output was left."
    return f"Interrupted by {how}: the job stopped and no output was written."
