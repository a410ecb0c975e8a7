"""The few file operations the streaming writers and readers use, each one small function, so that another
storage layer (a remote file system) can stand in for local files in one place."""

from __future__ import annotations

import os

_MAX_WRITE = 1 << 30  # Linux writes at most ~2 GiB per call; larger buffers go in pieces


def create_sized(path: str, size: int) -> int:
    """Create `path` (a new temp file) with room for `size` bytes reserved up front, so that a full disk fails
    here, before a byte is converted; returns a descriptor for `write_at`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        if size > 0:
            try:
                os.posix_fallocate(fd, 0, size)
            except (AttributeError, OSError) as e:
                if isinstance(e, OSError) and e.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: no reservation here
                    raise
                os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_at(fd: int, data, offset: int) -> None:
    """Write all of `data` (bytes or a buffer) at `offset`; the GIL is free during the system calls, so
    threads write side by side."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:done + _MAX_WRITE], offset + done)
        if n <= 0:
            raise OSError(28, f"short write: {done} of {len(view)} bytes")
        done += n


def flush_and_close(fd: int) -> None:
    """Flush a written file to disk and close it."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prefetch(path: str, offset: int, length: int) -> None:
    """Ask the kernel to start reading a byte range now (read-ahead for a rule that has not started yet);
    nothing is resident in this process until the range is used. Best effort: never raises."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None or length <= 0:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        advise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
