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


PREFETCH_BLOCK = 16 << 20  # bytes per read when pulling a range into the page cache: large sequential requests


def prefetch(path: str, offset: int, length: int) -> int:
    """Pull a byte range into the page cache now, in PREFETCH_BLOCK reads (read-ahead for the cells a worker runs
    next; the kernel's own read-ahead on a worker's page faults goes 128 KB at a time, which, against the
    conversion's writes, made the disk seek between small reads and writeback). The bytes go to /dev/null by
    `sendfile`, so the kernel reads them into the cache without copying them into this process (a pread into a
    buffer cost about 1 CPU-second per 4 GB more, on a 2-core machine that is CPU-bound); where sendfile is not
    supported, `pread`. Nothing stays resident in this process; best effort: never raises. Returns the bytes
    read."""
    if length <= 0:
        return 0
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0
    try:
        advise = getattr(os, "posix_fadvise", None)
        if advise is not None:
            advise(fd, offset, length, os.POSIX_FADV_SEQUENTIAL)
        done = _send_to_null(fd, offset, length)
        if done < length:
            done += _read_into_buffer(fd, offset + done, length - done)
        return done
    except OSError:
        return 0
    finally:
        os.close(fd)


def _send_to_null(fd: int, offset: int, length: int) -> int:
    """sendfile the range to /dev/null; the bytes done (fewer when the file is shorter or sendfile is refused)."""
    sendfile = getattr(os, "sendfile", None)
    if sendfile is None:
        return 0
    done = 0
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        while done < length:
            n = sendfile(null, fd, offset + done, min(PREFETCH_BLOCK, length - done))
            if n <= 0:
                break
            done += n
    except OSError:  # EINVAL/ENOSYS: a file system without splice; pread does the rest
        pass
    finally:
        os.close(null)
    return done


def _read_into_buffer(fd: int, offset: int, length: int) -> int:
    """pread the range into a scratch buffer; the bytes read."""
    done = 0
    buf = bytearray(min(PREFETCH_BLOCK, length))
    view = memoryview(buf)
    try:
        while done < length:
            n = os.preadv(fd, [view[:min(len(buf), length - done)]], offset + done)
            if n <= 0:
                break
            done += n
    except OSError:
        pass
    return done
