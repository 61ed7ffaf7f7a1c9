"""Overlap decode / compute / encode: a bounded background writer and a prefetching reader.

Both run one worker thread with a small queue, so memory stays flat with video length, and both
re-raise the worker's exception in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class BackgroundWriter:
    """Calls `write(item)` in a worker thread; `put` blocks when `maxsize` items are waiting."""

    def __init__(self, write: Callable[[object], None], maxsize: int = 4) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="impersonate-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = exc

    def put(self, item: object) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        """Wait for every queued item to be written; re-raise a writer error."""
        self._queue.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._error = self._error or exc
            self._queue.put(_DONE)
            self._thread.join()


def prefetch(items: Iterable[T], maxsize: int = 8) -> Iterator[T]:
    """Iterate `items` in a worker thread, `maxsize` ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=maxsize)
    stop = threading.Event()
    error: list[BaseException] = []

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001
            error.append(exc)
        finally:
            q.put(_DONE)

    thread = threading.Thread(target=run, name="impersonate-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            yield item
        if error:
            raise error[0]
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
