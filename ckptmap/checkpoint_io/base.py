"""The reader and writer interfaces, the error, and the dtype tables every checkpoint format shares."""

from __future__ import annotations

import errno
import os
from abc import ABC, abstractmethod

import ml_dtypes
import numpy as np

from ckptmap.errors import CkptmapError
from ckptmap.checkpoint_io.commit import _fsync_dir, _fsync_tree, _rename_noreplace, _replace_path


NPZ_DTYPES_MEMBER = "__ckptmap_dtypes__"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
FORMATS = ("npz", "safetensors", "sharded", "orbax")

_ST_TO_NP = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu), "C64": np.dtype(np.complex64),
}
_NP_TO_ST = {v: k for k, v in _ST_TO_NP.items()}
_EXTENSION_DTYPES = {str(np.dtype(t)): np.dtype(t) for t in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
                                                              ml_dtypes.float8_e5m2)}


class CheckpointIOError(CkptmapError):
    """A checkpoint could not be read or written (names the file and, where there is one, the tensor)."""


# ----------------------------------------------------------------------------------------------------- readers

class CheckpointReader(ABC):
    """name -> array, lazily. `names()` in file order; `read` raises CheckpointIOError for an unknown name."""

    path: str

    @abstractmethod
    def names(self) -> list[str]: ...

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]: ...

    @abstractmethod
    def dtype(self, name: str) -> np.dtype: ...

    @abstractmethod
    def read(self, name: str) -> np.ndarray: ...

    def __contains__(self, name: str) -> bool:
        return name in set(self.names())

    def nbytes(self, name: str) -> int:
        return int(np.prod(self.shape(name), dtype=np.int64)) * self.dtype(name).itemsize

    def close(self) -> None:
        pass

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _missing(self, name: str) -> CheckpointIOError:
        return CheckpointIOError(f"no such tensor in the checkpoint ({len(self.names())} tensors)",
                                 file=self.path, key=name)


def _unreadable(e: BaseException) -> str:
    """One line for an exception a third-party parser raised on damaged bytes."""
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__



_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def write_failure(e: OSError, *, file: str, key: str | None = None) -> "CheckpointIOError":
    """An OSError while writing the output -> one line; a full disk (or a file-size limit) is said so."""
    what = e.strerror or str(e)
    short_write = e.errno is None and "requested and" in what  # numpy's tofile: "N requested and M written"
    if e.errno in _FULL_ERRNOS or short_write:
        return CheckpointIOError(f"cannot write the output, the disk is full or a file-size limit was reached "
                                 f"({what}); nothing was written", file=file, key=key)
    return CheckpointIOError(f"cannot write the output ({what}); nothing was written", file=file, key=key)


class CheckpointWriter(ABC):
    """Tensors in, one at a time; nothing appears at `path` until `commit()`. As a context manager it commits on
    success and removes its temp files on an exception. A failed write or commit removes them too and raises
    CheckpointIOError. `overwrite=False` commits only onto a path that does not exist (atomically: of two
    writers racing to one path, one wins and the other fails, never an interleaved output)."""

    path: str

    def __init__(self, path: str, *, overwrite: bool = True):
        self.path = path
        self.overwrite = overwrite
        self._names: set[str] = set()
        self.bytes_written = 0

    @property
    def tensors_written(self) -> int:
        return len(self._names)

    def write(self, name: str, array: np.ndarray) -> None:
        if name in self._names:
            raise CheckpointIOError("tensor written twice", file=self.path, key=name)
        self._names.add(name)
        array = np.asarray(array)
        try:
            self._write(name, array)
        except OSError as e:
            self.abort()
            raise write_failure(e, file=self.path, key=name) from None
        self.bytes_written += array.nbytes

    def commit(self) -> None:
        try:
            self._commit()
        except FileExistsError:
            self.abort()
            raise CheckpointIOError("the output appeared while this conversion ran (another conversion to the "
                                    "same path?); it was left as it is and nothing was written",
                                    file=self.path) from None
        except OSError as e:
            self.abort()
            raise write_failure(e, file=self.path) from None
        except BaseException:
            self.abort()
            raise

    def _install(self, tmp: str) -> None:
        """Move the finished temp file or directory onto `path` (see `overwrite`)."""
        _fsync_tree(tmp)
        if self.overwrite:
            _replace_path(tmp, self.path)
        else:
            _rename_noreplace(tmp, self.path)
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    @abstractmethod
    def _write(self, name: str, array: np.ndarray) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None:
        """Remove every temp file; never raises."""

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _c_order(array: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)."""
    return array if array.flags.c_contiguous else array.copy(order="C")
