"""Temp paths beside an output, and the commit that never replaces an existing output without --force (renameat2
RENAME_NOREPLACE), with fsync; stale temps of dead processes are found and removed."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import tempfile


from ckptmap.mapping import default_mode


TEMP_PREFIX = ".tmp-"


def _temp_owner() -> str:
    """`host.pid` of this process, in every temp name, so that a later run can tell a dead run's leftovers."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
    return f"{host}.{os.getpid()}"


def _temp_prefix(path: str) -> str:
    return f"{TEMP_PREFIX}{os.path.basename(os.path.abspath(path))}-"


def _temp_beside(path: str, *, directory: bool = False) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    prefix = f"{_temp_prefix(path)}{_temp_owner()}-"
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
        default_mode(tmp, directory=True)
        return tmp
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=parent)
    os.close(fd)
    default_mode(tmp)
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(path: str) -> list[str]:
    """Temp files and directories that a killed writer of `path` left beside it: named for `path`, made on this
    host by a process that no longer runs. A live writer's temps (another conversion running now) are never
    listed."""
    parent = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    host = _temp_owner().split(".")[0]
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    out = []
    for name in entries:
        if not name.startswith(prefix):
            continue
        m = re.match(r"([A-Za-z0-9_]+)\.(\d+)-", name[len(prefix):])
        if m and m.group(1) == host and not _pid_alive(int(m.group(2))):
            out.append(os.path.join(parent, name))
    return sorted(out)


def remove_stale_temps(path: str) -> list[str]:
    """Remove `stale_temps(path)`; returns what was removed."""
    removed = []
    for tmp in stale_temps(path):
        _remove(tmp)
        if not os.path.lexists(tmp):
            removed.append(tmp)
    return removed


def _replace_path(tmp: str, path: str) -> None:
    """Move tmp onto path; an existing directory at path is swapped out first and then removed."""
    if os.path.isdir(path) and not os.path.islink(path):
        old = _temp_beside(path, directory=True)
        os.rmdir(old)
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


def _rename_noreplace(tmp: str, path: str) -> None:
    """Move tmp onto path only if path does not exist (FileExistsError otherwise), atomically: Linux's
    renameat2(RENAME_NOREPLACE); where the call or the filesystem lacks it, link() for a file (fails on an
    existing path) and rename() for a directory (fails onto a non-empty one)."""
    fn = _renameat2()
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), path)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
            raise OSError(err, os.strerror(err), path)
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        try:
            os.rename(tmp, path)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path) from None
            raise
    else:
        os.link(tmp, path)
        os.unlink(tmp)


def _fsync_path(path: str, data_only: bool = False) -> bool:
    """Flush a file (or directory) to disk (`data_only`: its bytes, fdatasync); best effort: False where it could
    not be opened or flushed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    _fsync_path(path)


def _fsync_tree(path: str) -> None:
    """Flush a finished temp file (or every file of a temp directory) to disk before it is renamed into place,
    so that the rename never publishes a file whose bytes are still only in the page cache."""
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for f in files:
                _fsync_path(os.path.join(root, f))
            _fsync_dir(root)
    else:
        _fsync_path(path)


def _remove(path: str | None) -> None:
    """Remove a temp file or directory; never raises."""
    try:
        if path and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif path and os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass
