"""One way to write a file: to a temporary path beside it, then renamed, so no reader ever sees half a file.

`atomic_path(path)` is the context manager every writer uses (it yields the temp path, renames on success and
removes the temp path on any exception); `write_text_atomic` / `write_json_atomic` / `write_bytes_atomic` are the
usual cases. Temp files get the mode a plain open() would give (mkstemp makes them 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator


def default_mode(path: str, *, directory: bool = False) -> None:
    """Give a temp file (0600 from mkstemp) or dir (0700) the mode a plain open() would: 0666 / 0777 less umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temp file path beside `path` (its parent made if needed); rename it onto `path` when the block
    ends normally, remove it when the block raises."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", suffix=suffix, dir=directory)
    os.close(fd)
    default_mode(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_bytes_atomic(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json_atomic(path: str, obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> None:
    """JSON (with a final newline) written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def cache_dir(*parts: str) -> str:
    """ckptmap's cache folder ($CKPTMAP_CACHE_DIR, else ~/.cache/ckptmap), joined with `parts` (not created)."""
    base = os.environ.get("CKPTMAP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ckptmap")
    return os.path.join(base, *parts)
