"""A byte budget shared by the threads of one conversion: a rule enters when its bytes fit beside those in
flight (or when nothing is in flight, so a rule larger than the budget still runs, alone)."""

from __future__ import annotations

import threading


class MemoryBudget:
    """`acquire(n)` blocks until n bytes fit under `limit` (None: no limit); `release(n)` gives them back."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, stop: threading.Event | None = None) -> bool:
        """False when `stop` was set while waiting (nothing acquired)."""
        with self._cond:
            while self.limit is not None and self.used > 0 and self.used + n > self.limit:
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.1)
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def try_acquire(self, n: int) -> bool:
        """Take n bytes only if they fit now (or nothing is in flight); never waits."""
        with self._cond:
            if self.limit is not None and self.used > 0 and self.used + n > self.limit:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def wait_for_release(self, timeout: float) -> None:
        """Wait until some bytes are released, or `timeout` seconds."""
        with self._cond:
            self._cond.wait(timeout)

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()
