"""One thread that pushes a conversion's output to the disk while the conversion runs, instead of at its end.

Linux keeps written pages in the page cache until the dirty bytes pass a threshold (`dirty_background_ratio`,
10% of memory by default: 2.3 GB on a 24 GB machine) or 30 s pass. Until then the disk only reads, and at the
end the last few GB are flushed while nothing else runs. Here, each time another WRITE_BEHIND_BYTES of output
has been written (`wrote`), the thread flushes every file under the output's temp path that changed since it
last flushed it (`fdatasync`, one file after another on this thread; the writers never wait for it). The writers
name no files: this works for any layout (safetensors shards written in place, TensorStore's chunk files, OCDBT
databases). Best effort: a file that cannot be opened or flushed is left to the final fsync.
"""

from __future__ import annotations

import os

from ckptmap.checkpoint_io.commit import _fsync_path
from ckptmap.pipeline.background import BackgroundThread

WRITE_BEHIND_BYTES = 256 << 20  # output bytes between two flushing rounds


def _files(root: str) -> list[str]:
    """Every regular file under `root` (root itself when it is a file)."""
    if os.path.isfile(root):
        return [root]
    return [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]


class WriteBehind(BackgroundThread):
    """`wrote(nbytes)` counts output bytes written under `root` (a path, or several: a process writing some of
    a shared output's directories flushes only its own); `close()` stops the thread (the final fsync still covers
    every file). `rounds` and `flushed` say how much it did."""

    def __init__(self, root: str | list[str], every: int = WRITE_BEHIND_BYTES):
        super().__init__("ckptmap-write-behind")
        self.roots = [root] if isinstance(root, str) else list(root)
        self.every = max(1, int(every))
        self.rounds = 0
        self.flushed = 0  # file flushes done
        self._pending = 0  # bytes written since the last round started
        self._seen: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) when last flushed
        self._start()

    def wrote(self, nbytes: int) -> None:
        with self._cv:
            self._pending += int(nbytes)
            if self._pending >= self.every:
                self._cv.notify_all()

    def _wait_for_round(self) -> bool:
        with self._cv:
            while not self._closed and self._pending < self.every:
                self._cv.wait()
            if self._closed:
                return False
            self._pending = 0
            return True

    def _loop(self) -> None:
        while self._wait_for_round():
            self.rounds += 1
            try:
                paths = [path for root in self.roots for path in _files(root)]
            except OSError:
                continue
            for path in paths:
                if self._closed:
                    return
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                state = (st.st_size, st.st_mtime_ns)
                if self._seen.get(path) == state:
                    continue
                if _fsync_path(path, data_only=True):  # the final fsync's best-effort flush, data only
                    self._seen[path] = state
                    self.flushed += 1
