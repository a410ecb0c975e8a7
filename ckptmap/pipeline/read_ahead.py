"""One thread that pulls a conversion's inputs into the page cache ahead of the workers, streaming.

The inputs are queued in the order the workers will read them (`want`), and the thread reads them one after
another (`prefetch(name) -> bytes read`, fileio.prefetch: large sequential reads), staying at most `window` bytes
ahead of what the workers have read (`consumed`). Reading runs on while the workers wait for their writes, so the
disk reads and writes side by side as `cp` does, instead of in turns; the bytes ahead sit in the page cache, not
in this process. An input a worker read before the thread got to it is skipped.
"""

from __future__ import annotations

import collections
from typing import Callable, Iterable

from ckptmap.pipeline.background import BackgroundThread

READ_AHEAD_WINDOW = 2 << 30  # bytes read ahead of the workers at most (page cache, not RSS)


class ReadAhead(BackgroundThread):
    """`want(names)` queues inputs; `consumed(name)` says a worker has read one; `close()` stops the thread."""

    def __init__(self, prefetch: Callable[[str], int | None], window: int = READ_AHEAD_WINDOW):
        super().__init__("ckptmap-read-ahead")
        self._prefetch = prefetch
        self._window = int(window)
        self._queue: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()
        self._fetched: dict[str, int] = {}  # name -> bytes read ahead and not yet consumed
        self._consumed: set[str] = set()
        self._ahead = 0
        self._start()

    def want(self, names: Iterable[str]) -> None:
        with self._cv:
            for name in names:
                if name not in self._queued and name not in self._consumed:
                    self._queued.add(name)
                    self._queue.append(name)
            self._cv.notify_all()

    def consumed(self, name: str) -> None:
        with self._cv:
            self._consumed.add(name)
            self._ahead -= self._fetched.pop(name, 0)
            self._cv.notify_all()

    @property
    def ahead(self) -> int:
        """Bytes read ahead that no worker has read yet."""
        with self._cv:
            return self._ahead

    def _next(self) -> str | None:
        with self._cv:
            while True:
                if self._closed:
                    return None
                while self._queue and self._queue[0] in self._consumed:
                    self._queue.popleft()  # a worker got there first
                if self._queue and self._ahead < self._window:
                    return self._queue.popleft()
                self._cv.wait()

    def _loop(self) -> None:
        while (name := self._next()) is not None:
            try:
                got = int(self._prefetch(name) or 0)
            except Exception:  # noqa: BLE001 - best effort: the worker reads it itself
                got = 0
            with self._cv:
                if name not in self._consumed:
                    self._fetched[name] = got
                    self._ahead += got
