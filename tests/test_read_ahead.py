"""The read-ahead thread (ckptmap.pipeline.read_ahead): reads in the order asked, never more than its window ahead
of what the workers consumed, skips what a worker already read, and stops on close."""

from __future__ import annotations

import threading
import time

from ckptmap.pipeline.read_ahead import ReadAhead


def _wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.005)


def test_reads_in_order_within_the_window_and_resumes_as_the_workers_consume():
    read: list[str] = []
    lock = threading.Lock()

    def prefetch(name: str) -> int:
        with lock:
            read.append(name)
        return 100

    ra = ReadAhead(prefetch, window=250)  # room for three reads of 100 bytes (it stops once 250 is reached)
    try:
        ra.want(["a", "b", "c", "d", "e"])
        _wait_for(lambda: len(read) == 3)
        time.sleep(0.05)
        assert read == ["a", "b", "c"] and ra.ahead == 300  # the window holds it there
        ra.consumed("a")
        _wait_for(lambda: len(read) == 4)
        time.sleep(0.05)
        assert read == ["a", "b", "c", "d"] and ra.ahead == 300
        ra.consumed("e")  # a worker read "e" itself: it is not read again
        for n in ("b", "c", "d"):
            ra.consumed(n)
        time.sleep(0.05)
        assert read == ["a", "b", "c", "d"] and ra.ahead == 0
        ra.want(["a", "f"])  # already read: not queued again
        _wait_for(lambda: len(read) == 5)
        assert read[-1] == "f"
    finally:
        ra.close()


def test_a_failing_prefetch_is_skipped_and_close_returns():
    calls = []

    def prefetch(name: str) -> int:
        calls.append(name)
        raise OSError("gone")

    ra = ReadAhead(prefetch, window=10)
    ra.want(["x", "y"])
    _wait_for(lambda: len(calls) == 2)
    assert ra.ahead == 0
    ra.close()  # joins the thread
