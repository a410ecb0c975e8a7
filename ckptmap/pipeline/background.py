"""The one shape both pipeline helper threads share (read_ahead, write_behind): a daemon thread running `_loop`,
woken through the condition `_cv`, stopped by `close()` (which sets `_closed`, wakes it and waits for it)."""

from __future__ import annotations

import threading


class BackgroundThread:
    def __init__(self, name: str):
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _start(self) -> None:
        """Start the thread (last in the subclass's __init__, once its state is set)."""
        self._thread.start()

    def _loop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
