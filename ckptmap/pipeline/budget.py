"""A byte budget shared by the threads of one conversion: a rule enters when its bytes fit beside those in
flight (or when nothing is in flight, so a rule larger than the budget still runs, alone)."""

from __future__ import annotations

import threading


class MemoryBudget:
    """`try_acquire(n)` takes n bytes if they fit under `limit` now (None: no limit), `wait_for_release` waits for
    bytes to come back (the executor's admission loop, execute.Executor._admit_next), `release(n)` gives them
    back."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

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
